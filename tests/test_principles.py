"""Tests for si_toolkit.principles and the shipped principle sets in principles/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from si_toolkit.errors import SIError
from si_toolkit.principles import MAX_FACTORIAL_PRINCIPLES, MAX_TEXT_CHARS, load_principle_set, load_principle_sets

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "principles"
SHIPPED = sorted(SHIPPED_DIR.glob("*.yaml"))

# name -> (mode, design, K): the shape each shipped set is documented to have
EXPECTED_SHAPES = {
    "helpful-vs-harmless": ("alternatives", None, 2),
    "concise-vs-comprehensive": ("alternatives", None, 2),
    "editorial-standards": ("antithesis", "one-flip", 5),
    "safety-policy": ("antithesis", "one-flip", 5),
    "tone-by-audience": ("antithesis", "factorial", 4),
    "null-control": ("alternatives", None, 2),
    "strong-control": ("alternatives", None, 2),
}


def _write(tmp_path: Path, text: str, name: str = "set.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _antithesis_yaml(m: int, design: str) -> str:
    lines = [f"mode: antithesis\ndesign: {design}\nprinciples:"]
    for k in range(m):
        lines.append(f"  - id: p{k}\n    text: Do thing {k}.\n    antithesis: Avoid thing {k}.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- shipped sets


def test_every_documented_set_is_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= set(EXPECTED_SHAPES)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_set_loads_with_a_one_line_description(path: Path) -> None:
    s = load_principle_set(path)
    assert s.name == path.stem  # set names are the file stems
    assert s.description and "\n" not in s.description
    assert s.K >= 2 and len({v.label for v in s.variants}) == s.K
    if s.name != "null-control":
        assert len({v.text for v in s.variants}) == s.K  # every other set really varies
    # short texts: the embedded 135M model is easily confused by long system prompts
    assert all(len(v.text) <= 900 for v in s.variants), [len(v.text) for v in s.variants]


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES))
def test_shipped_set_shape(name: str) -> None:
    s = load_principle_set(SHIPPED_DIR / f"{name}.yaml")
    assert (s.mode, s.design, s.K) == EXPECTED_SHAPES[name]
    m = len(s.principles)
    if s.design == "one-flip":
        assert s.K == m + 1
    elif s.design == "factorial":
        assert s.K == 2**m
    else:
        assert s.K == m


def test_shipped_sets_have_unique_names() -> None:
    assert len(load_principle_sets(SHIPPED)) == len(SHIPPED)


def test_null_control_variants_are_identical() -> None:
    s = load_principle_set(SHIPPED_DIR / "null-control.yaml")
    assert s.K >= 2
    assert len({v.text for v in s.variants}) == 1
    assert len({v.label for v in s.variants}) == s.K


def test_strong_control_variants_differ_sharply() -> None:
    s = load_principle_set(SHIPPED_DIR / "strong-control.yaml")
    a, b = (v.text for v in s.variants)
    words_a, words_b = (set(re.findall(r"[a-z]+", t.lower())) for t in (a, b))
    # the two instructions share almost no vocabulary, so their traces cannot be confused
    assert len(words_a & words_b) <= 0.3 * min(len(words_a), len(words_b))
    assert len(a) < 200 and len(b) < 200


def test_shipped_controls_carry_their_role() -> None:
    roles = {s.name: s.role for s in load_principle_sets(SHIPPED)}
    assert roles.pop("null-control") == "null-control"
    assert roles.pop("strong-control") == "positive-control"
    assert set(roles.values()) == {None}  # every other shipped set is an ordinary set


def test_readme_documents_every_shipped_set() -> None:
    readme = (SHIPPED_DIR / "README.md").read_text(encoding="utf-8")
    for path in SHIPPED:
        assert f"{path.stem}" in readme, path.stem
    for word in ("mode: alternatives", "mode: antithesis", "design: factorial", "design: one-flip", "preamble",
                 "role: null-control", "role: positive-control"):
        assert word in readme


# ---------------------------------------------------------------- designs and principle_pairs


def test_one_flip_variants_flip_exactly_one_principle(tmp_path: Path) -> None:
    s = load_principle_set(_write(tmp_path, _antithesis_yaml(4, "one-flip")))
    assert s.K == 4 + 1
    assert [v.flipped for v in s.variants] == [(), (0,), (1,), (2,), (3,)]
    assert s.variants[0].text == "1. Do thing 0.\n2. Do thing 1.\n3. Do thing 2.\n4. Do thing 3."
    assert s.variants[3].text == "1. Do thing 0.\n2. Do thing 1.\n3. Avoid thing 2.\n4. Do thing 3."
    assert [v.label for v in s.variants] == ["all-positive", "flip:p0", "flip:p1", "flip:p2", "flip:p3"]


def test_one_flip_is_the_default_design(tmp_path: Path) -> None:
    text = _antithesis_yaml(3, "one-flip").replace("design: one-flip\n", "")
    s = load_principle_set(_write(tmp_path, text))
    assert (s.design, s.K) == ("one-flip", 4)


@pytest.mark.parametrize("m", [1, 2, 3, MAX_FACTORIAL_PRINCIPLES])
def test_factorial_gives_every_combination(tmp_path: Path, m: int) -> None:
    s = load_principle_set(_write(tmp_path, _antithesis_yaml(m, "factorial")))
    assert s.K == 2**m
    assert len({v.flipped for v in s.variants}) == 2**m
    assert len({v.text for v in s.variants}) == 2**m


def test_factorial_refuses_more_than_six_principles(tmp_path: Path) -> None:
    path = _write(tmp_path, _antithesis_yaml(MAX_FACTORIAL_PRINCIPLES + 1, "factorial"))
    with pytest.raises(SIError, match=r"2\^7 variants.*limit is 6.*one-flip") as err:
        load_principle_set(path)
    assert str(path) in str(err.value)


def test_principle_pairs_point_at_the_single_flips(tmp_path: Path) -> None:
    for design in ("one-flip", "factorial"):
        s = load_principle_set(_write(tmp_path, _antithesis_yaml(3, design)))
        pairs = s.principle_pairs()
        assert [pid for pid, _, _ in pairs] == ["p0", "p1", "p2"]
        for k, (_, pos, flip) in enumerate(pairs):
            assert s.variants[pos].flipped == ()
            assert s.variants[flip].flipped == (k,)


def test_shipped_principle_pairs() -> None:
    s = load_principle_set(SHIPPED_DIR / "editorial-standards.yaml")
    assert s.principle_pairs() == [
        ("accuracy", 0, 1), ("impartiality", 0, 2), ("plain-language", 0, 3), ("corrections", 0, 4)
    ]
    assert load_principle_set(SHIPPED_DIR / "helpful-vs-harmless.yaml").principle_pairs() == []


def test_preamble_leads_every_variant(tmp_path: Path) -> None:
    text = "preamble: Follow these rules.\n" + _antithesis_yaml(2, "one-flip")
    s = load_principle_set(_write(tmp_path, text))
    assert all(v.text.startswith("Follow these rules.\n\n1. ") for v in s.variants)


# ---------------------------------------------------------------- loader errors


def _refused(path: Path, *parts: str) -> str:
    with pytest.raises(SIError) as err:
        load_principle_set(path)
    message = str(err.value)
    for part in (str(path), *parts):
        assert part in message, message
    return message


_ALT = "mode: alternatives\nprinciples:\n  - id: a\n    text: Be brief.\n  - id: b\n    text: Be thorough.\n"


def test_valid_alternatives_baseline(tmp_path: Path) -> None:
    s = load_principle_set(_write(tmp_path, _ALT))
    assert [v.text for v in s.variants] == ["Be brief.", "Be thorough."]


def test_missing_file(tmp_path: Path) -> None:
    _refused(tmp_path / "nope.yaml", "not found")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "mode: alternatives\nprinciples:\n  - id: a\n    text: [unclosed\n  - id: b\n")
    message = _refused(path, "malformed YAML")
    assert re.search(r"line [4-6]", message), message


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "set.yaml"
    path.write_bytes(_ALT.encode("utf-8").replace(b"Be brief.", b"Be br\xe8f."))
    _refused(path, "not valid UTF-8")


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    bomb = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, 9):  # 9^9 strings if expanded
        prev = chr(ord("a") + k - 1)
        cur = chr(ord("a") + k)
        bomb.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    _refused(_write(tmp_path, "\n".join(bomb) + "\n"), "line 2", "aliases")


def test_not_a_mapping(tmp_path: Path) -> None:
    _refused(_write(tmp_path, "- just\n- a list\n"), "expected a YAML mapping")


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        (_ALT + "temperature: 0.7\n", ["unknown key(s) ['temperature']"]),
        (
            _ALT.replace("text: Be brief.", "text: Be brief.\n    weight: 2"),
            ["principles[0]", "unknown key(s) ['weight']"],
        ),
    ],
    ids=["top-level", "principle"],
)
def test_unknown_keys(tmp_path: Path, text: str, parts: list[str]) -> None:
    _refused(_write(tmp_path, text), *parts)


@pytest.mark.parametrize(
    "replacement", ["text: ''", "text: '   '", "text:", "label: Be brief."], ids=["empty", "blank", "null", "missing"]
)
def test_missing_text(tmp_path: Path, replacement: str) -> None:
    text = _ALT.replace("text: Be brief.", replacement)
    _refused(_write(tmp_path, text), "principles[0]", "missing or empty 'text'")


def test_duplicate_ids(tmp_path: Path) -> None:
    _refused(_write(tmp_path, _ALT.replace("id: b", "id: a")), "principles[1]", "duplicate id 'a'")


def test_k_below_two(tmp_path: Path) -> None:
    _refused(
        _write(tmp_path, "mode: alternatives\nprinciples:\n  - id: a\n    text: Be brief.\n"),
        "K >= 2",
        "got 1",
    )


def test_empty_principles(tmp_path: Path) -> None:
    _refused(_write(tmp_path, "mode: alternatives\nprinciples: []\n"), "'principles' must be a non-empty list")


def test_unknown_mode(tmp_path: Path) -> None:
    path = _write(tmp_path, _ALT.replace("mode: alternatives", "mode: contrast"))
    _refused(path, "'mode'", "'contrast'", "antithesis")


@pytest.mark.parametrize("role", ["null-control", "positive-control"])
def test_role_is_read(tmp_path: Path, role: str) -> None:
    assert load_principle_set(_write(tmp_path, _ALT + f"role: {role}\n")).role == role
    assert load_principle_set(_write(tmp_path, _ALT, "plain.yaml")).role is None


@pytest.mark.parametrize("value", ["negative-control", "control", "1", "[null-control]"])
def test_unknown_role(tmp_path: Path, value: str) -> None:
    _refused(_write(tmp_path, _ALT + f"role: {value}\n"), "'role'", "null-control", "positive-control")


def test_unknown_design(tmp_path: Path) -> None:
    _refused(_write(tmp_path, _antithesis_yaml(2, "latin-square")), "'design'", "'latin-square'", "factorial")


def test_design_without_antithesis_mode(tmp_path: Path) -> None:
    _refused(_write(tmp_path, _ALT + "design: factorial\n"), "only applies to mode: antithesis")


def test_antithesis_mode_needs_antitheses(tmp_path: Path) -> None:
    text = _antithesis_yaml(2, "one-flip").replace("    antithesis: Avoid thing 1.\n", "")
    _refused(_write(tmp_path, text), "principles[1]", "needs an 'antithesis'")


def test_antithesis_in_alternatives_mode(tmp_path: Path) -> None:
    text = _ALT.replace("text: Be brief.", "text: Be brief.\n    antithesis: Ramble.")
    _refused(_write(tmp_path, text), "principles[0]", "only used with mode: antithesis")


def test_one_megabyte_principle_text_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _ALT.replace("Be brief.", "x" * 1_000_000))
    _refused(path, "over 1 MB")


def test_text_over_the_character_limit_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _ALT.replace("Be brief.", "y" * (MAX_TEXT_CHARS + 1)))
    _refused(path, "principles[0].text", f"limit is {MAX_TEXT_CHARS:,}")


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "has space", ".hidden", "x" * 65])
def test_unsafe_set_name_is_refused(tmp_path: Path, name: str) -> None:
    _refused(_write(tmp_path, f"name: '{name}'\n" + _ALT), "field 'name'", "not a safe set name")


def test_duplicate_set_names_across_files(tmp_path: Path) -> None:
    a = _write(tmp_path, "name: same\n" + _ALT, "a.yaml")
    b = _write(tmp_path, "name: same\n" + _ALT, "b.yaml")
    with pytest.raises(SIError, match="set name 'same' is also used by"):
        load_principle_sets([a, b])
