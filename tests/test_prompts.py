"""Tests for si_toolkit.prompts and the built-in prompt data (si_toolkit/data)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from si_toolkit.data import make_arithmetic
from si_toolkit.errors import SIError
from si_toolkit.prompts import BUILTINS, KINDS, Prompt, PromptSet, load_prompts, prompt_hash


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _shipped(name: str) -> str:
    return (resources.files("si_toolkit.data") / "prompts" / f"{name}.jsonl").read_text(encoding="utf-8")


# ---------------------------------------------------------------- built-in sets


def test_builtin_sizes_ids_and_kinds() -> None:
    arithmetic, open_, mixed = (load_prompts(f"builtin:{n}") for n in ("arithmetic", "open", "mixed"))
    assert len(arithmetic) >= 60 and len(open_) >= 50
    assert len(mixed) == len(arithmetic) + len(open_)
    assert (arithmetic.name, arithmetic.source) == ("arithmetic", "builtin:arithmetic")
    for ps in (arithmetic, open_, mixed):
        ids = [p.id for p in ps.prompts]
        assert len(set(ids)) == len(ids)
    assert all(p.kind == "arithmetic" and re.fullmatch(r"\d+", p.answer or "") for p in arithmetic.prompts)
    assert all(p.kind == "open" and p.answer is None for p in open_.prompts)
    assert len({p.text for p in open_.prompts}) == len(open_)


def test_builtin_mixed_interleaves_then_appends_the_rest() -> None:
    arithmetic = load_prompts("builtin:arithmetic").prompts
    open_ = load_prompts("builtin:open").prompts
    mixed = load_prompts("builtin:mixed").prompts
    k = len(open_)  # the shorter set
    assert mixed[: 2 * k : 2] == arithmetic[:k]
    assert mixed[1 : 2 * k : 2] == open_
    assert mixed[2 * k :] == arithmetic[k:]


def test_shipped_arithmetic_file_equals_generator_output() -> None:
    expected = make_arithmetic.render_jsonl(make_arithmetic.generate_problems())
    assert _shipped("arithmetic") == expected
    assert make_arithmetic.main(["--check"]) == 0


def test_generator_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = make_arithmetic.generate_problems(seed=5)
    assert a == make_arithmetic.generate_problems(seed=5)
    assert a != make_arithmetic.generate_problems(seed=6)
    assert len(make_arithmetic.generate_problems(per_template=2)) == 2 * len(make_arithmetic.TEMPLATES)
    out = tmp_path / "a.jsonl"
    assert make_arithmetic.main(["--check", "--out", str(out)]) == 1  # missing file is out of date
    assert make_arithmetic.main(["--out", str(out)]) == 0
    assert make_arithmetic.main(["--check", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == _shipped("arithmetic")


# Each template's wording, with its numbers captured, and the answer recomputed from them here,
# independently of the generator's code.
_RECOMPUTE = [
    (r"buys (\d+) \w+ at (\d+) dollars each and pays with a (\d+)-dollar bill", lambda c, p, b: b - c * p),
    (r"\w+ for (\d+) dollars each and \w+ for (\d+) dollars each\. \w+ buys (\d+) \w+ and (\d+) \w+\.",
     lambda p, q, a, b: a * p + b * q),
    (r"has (\d+) \w+ and shares them equally among (\d+) friends", lambda t, f: t // f),
    (r"packs (\d+) eggs into cartons that hold (\d+) eggs", lambda t, s: t % s),
    (r"leaves at (\d+):(\d+) pm and arrives at (\d+):(\d+) pm", lambda h1, m1, h2, m2: (h2 - h1) * 60 + m2 - m1),
    (r"for (\d+) minutes every day\. How many hours does \w+ practise in (\d+) days", lambda m, d: m * d // 60),
    (r"cycles at (\d+) kilometres per hour for (\d+) hours", lambda v, t: v * t),
    (r"trip is (\d+) miles long\. \w+ drives (\d+) miles in the morning and (\d+) miles", lambda d, a, b: d - a - b),
    (r"orders (\d+) boxes of pencils with (\d+) pencils in each box\. The school gives (\d+) pencils to each of (\d+)",
     lambda b, per, g, c: b * per - g * c),
    (r"saves (\d+) dollars a week for (\d+) weeks and then spends (\d+) dollars", lambda w, n, s: w * n - s),
    (r"rectangle (\d+) metres long and (\d+) metres wide", lambda length, w: 2 * (length + w)),
    (r"costs (\d+) dollars and \w+ buys it at (\d+)% off", lambda p, pc: p * (100 - pc) // 100),
]


def test_every_arithmetic_answer_is_correct() -> None:
    used = set()
    for p in load_prompts("builtin:arithmetic").prompts:
        matches = [(k, re.search(rx, p.text)) for k, (rx, _) in enumerate(_RECOMPUTE)]
        hits = [(k, m) for k, m in matches if m]
        assert len(hits) == 1, p.text  # each problem has exactly one known template
        k, m = hits[0]
        used.add(k)
        expected = _RECOMPUTE[k][1](*map(int, m.groups()))
        assert p.answer == str(expected), p.text
        assert expected >= 0
    assert used == set(range(len(_RECOMPUTE)))  # every template occurs
    # divisions above are exact: sharing and sale prices are whole numbers
    for p in load_prompts("builtin:arithmetic").prompts:
        if m := re.search(_RECOMPUTE[2][0], p.text):
            assert int(m[1]) % int(m[2]) == 0
        if m := re.search(_RECOMPUTE[11][0], p.text):
            assert int(m[1]) * (100 - int(m[2])) % 100 == 0


def test_builtin_prefix_mixes_templates() -> None:
    first = load_prompts("builtin:arithmetic", n=12).prompts
    kinds = {next(k for k, (rx, _) in enumerate(_RECOMPUTE) if re.search(rx, p.text)) for p in first}
    assert len(kinds) == 12


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize("seed", [0, 7])
def test_selection_is_prefix_consistent(seed: int) -> None:
    small = load_prompts("builtin:mixed", n=24, seed=seed)
    large = load_prompts("builtin:mixed", n=48, seed=seed)
    assert small.prompts == large.prompts[:24]
    assert len(small) == 24


def test_seed_zero_keeps_file_order_other_seeds_permute() -> None:
    file_order = [json.loads(line)["id"] for line in _shipped("open").splitlines()]
    assert [p.id for p in load_prompts("builtin:open").prompts] == file_order
    shuffled = [p.id for p in load_prompts("builtin:open", seed=3).prompts]
    assert shuffled != file_order and sorted(shuffled) == sorted(file_order)
    assert shuffled == [p.id for p in load_prompts("builtin:open", seed=3).prompts]
    assert shuffled != [p.id for p in load_prompts("builtin:open", seed=4).prompts]


def test_hash_order_does_not_move_existing_prompts_when_one_is_added(tmp_path: Path) -> None:
    rows = [{"id": f"q{k}", "prompt": f"question {k}"} for k in range(20)]
    before = [p.id for p in load_prompts(str(_write_jsonl(tmp_path / "a.jsonl", rows)), seed=9).prompts]
    rows.append({"id": "q-new", "prompt": "a new question"})
    after = [p.id for p in load_prompts(str(_write_jsonl(tmp_path / "a.jsonl", rows)), seed=9).prompts]
    assert [i for i in after if i != "q-new"] == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n = 0: must be >= 1"),
        ({"n": -3}, "n = -3: must be >= 1"),
        ({"n": True}, "n = True: must be an integer"),
        ({"n": 2.0}, "n = 2.0: must be an integer"),
        ({"seed": "1"}, "seed = '1': must be an integer"),
        ({"n": 129}, "builtin:mixed: asked for n = 129 prompts but it holds only 128"),
    ],
    ids=["zero", "negative", "bool", "float", "seed-str", "too-many"],
)
def test_bad_n_or_seed(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SIError, match=re.escape(message)):
        load_prompts("builtin:mixed", **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- user files: formats

_ROWS = [
    {"id": "q1", "prompt": "What is 2 + 2?", "answer": "4", "kind": "arithmetic"},
    {"id": "q2", "prompt": "Should I apologise first?"},
    {"prompt": "  Name three birds.  "},
]
_EXPECTED = (
    Prompt("q1", "What is 2 + 2?", "4", "arithmetic"),
    Prompt("q2", "Should I apologise first?", None, "open"),
    Prompt("data-3", "Name three birds.", None, "open"),
)


def test_jsonl(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", _ROWS)
    ps = load_prompts(str(path))
    assert ps == PromptSet(name="data", source=str(path), prompts=_EXPECTED)


def test_jsonl_blank_lines_and_numeric_fields(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('\n{"id": 7, "prompt": "a", "answer": 42}\n\n{"prompt": "b", "answer": 2.5}\n', encoding="utf-8")
    prompts = load_prompts(path).prompts
    # the generated id uses the line number (4), the number error messages would name
    assert prompts == (Prompt("7", "a", "42"), Prompt("data-4", "b", "2.5"))


def test_json_lines_and_json_array(tmp_path: Path) -> None:
    lines = _write_jsonl(tmp_path / "data.json", _ROWS)
    assert load_prompts(str(lines)).prompts == _EXPECTED
    array = tmp_path / "data.json"
    array.write_text(json.dumps(_ROWS, indent=2), encoding="utf-8")
    assert load_prompts(str(array)).prompts == _EXPECTED  # item 3 -> data-3


def test_csv_with_bom_quotes_and_text_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        '\ufeffid,text,answer,kind,extra\nq1,"What is 2 + 2?",4,arithmetic,x\n'
        'q2,"Should I\napologise first?",,,\n,Name three birds.,,,\n',
        encoding="utf-8",
    )
    prompts = load_prompts(str(path)).prompts
    assert prompts[0] == _EXPECTED[0]
    assert prompts[1] == Prompt("q2", "Should I\napologise first?")
    assert prompts[2] == _EXPECTED[2]


def test_prompt_column_wins_over_text(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "use me", "text": "not me"}])
    assert load_prompts(path).prompts[0].text == "use me"


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    table = pa.table(
        {
            "id": ["q1", "q2", None],
            "prompt": ["What is 2 + 2?", "Should I apologise first?", "  Name three birds.  "],
            "answer": [4.0, None, float("nan")],  # a numeric column with nulls, as pandas writes it
            "kind": ["arithmetic", None, "open"],
            "extra": [1, 2, 3],
        }
    )
    pq.write_table(table, path)
    assert load_prompts(str(path)).prompts == _EXPECTED


def test_same_content_in_every_format_gives_the_same_hash(tmp_path: Path) -> None:
    rows = [{"id": r.id, "prompt": r.text} for r in _EXPECTED]
    jsonl = _write_jsonl(tmp_path / "a.jsonl", rows)
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("id,prompt\n" + "".join(f"{r.id},{r.text}\n" for r in _EXPECTED), encoding="utf-8")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [r.id for r in _EXPECTED], "prompt": [r.text for r in _EXPECTED]}), parquet)
    hashes = {prompt_hash(load_prompts(str(p))) for p in (jsonl, csv_path, parquet)}
    assert len(hashes) == 1 and re.fullmatch(r"[0-9a-f]{64}", hashes.pop())


def test_prompt_hash_tracks_ids_texts_and_order_only() -> None:
    base = PromptSet("s", "x", (Prompt("a", "one"), Prompt("b", "two")))
    h = prompt_hash(base)
    assert h == prompt_hash(PromptSet("other", "y", (Prompt("a", "one", "1", "arithmetic"), Prompt("b", "two"))))
    assert h != prompt_hash(PromptSet("s", "x", (Prompt("a", "one"), Prompt("b", "two!"))))
    assert h != prompt_hash(PromptSet("s", "x", (Prompt("a", "one"), Prompt("c", "two"))))
    assert h != prompt_hash(PromptSet("s", "x", (Prompt("b", "two"), Prompt("a", "one"))))
    # no separator ambiguity: moving text between id and text changes the hash
    left, right = PromptSet("s", "x", (Prompt("a", "bc"),)), PromptSet("s", "x", (Prompt("ab", "c"),))
    assert prompt_hash(left) != prompt_hash(right)


def test_generated_ids_use_a_sanitised_stem(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "my data (v2).jsonl", [{"prompt": "hi"}])
    ps = load_prompts(str(path))
    assert ps.name == "my-data-v2-"
    assert ps.prompts[0].id == "my-data-v2--1"


def test_records_for_the_manifest() -> None:
    ps = load_prompts("builtin:arithmetic", n=1)
    rec = ps.records()[0]
    assert rec == {"id": "arith-000", "text": ps.prompts[0].text, "answer": ps.prompts[0].answer, "kind": "arithmetic"}
    assert "arithmetic" in KINDS


# ---------------------------------------------------------------- user files: errors


def _raises(spec: Path | str, *parts: str) -> str:
    with pytest.raises(SIError) as err:
        load_prompts(str(spec))
    message = str(err.value)
    for part in parts:
        assert part in message, message
    return message


def test_missing_file(tmp_path: Path) -> None:
    _raises(tmp_path / "nope.jsonl", str(tmp_path / "nope.jsonl"), "not found", "builtin:")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "dir.jsonl"
    folder.mkdir()
    _raises(folder, str(folder), "is not a file")


def test_empty_spec() -> None:
    _raises("  ", "prompt spec is empty")


def test_unknown_builtin() -> None:
    _raises("builtin:maths", "builtin:maths", "unknown built-in", "builtin:arithmetic", "builtin:open", "builtin:mixed")


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("What is 2 + 2?\n", encoding="utf-8")
    _raises(path, str(path), "unsupported prompt file type '.txt'", ".jsonl", ".csv", ".parquet")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    head = b'{"prompt": "ok"}\n\n' if suffix == ".jsonl" else b"prompt\nok\n"
    path.write_bytes(head + b'{"prompt": "caf\xe9"}\n')
    _raises(path, str(path), "line 3", "not valid UTF-8", "save the file as UTF-8")


def test_malformed_json_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n', encoding="utf-8")
    _raises(path, str(path), "line 3", "malformed JSON")


def test_malformed_json_array(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n {"prompt": "a"},\n {"prompt": }\n]', encoding="utf-8")
    _raises(path, str(path), "line 3", "malformed JSON")


@pytest.mark.parametrize("line", ['["a list"]', '"just text"', "42"], ids=["list", "string", "number"])
def test_json_line_that_is_not_an_object(tmp_path: Path, line: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a"}\n' + line + "\n", encoding="utf-8")
    _raises(path, str(path), "line 2", "expected a JSON object")


def test_json_line_without_prompt_lists_fields(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [{"prompt": "a"}, {"question": "b", "id": "x"}])
    _raises(path, str(path), "line 2", "no 'prompt' (or 'text') field", "['id', 'question']")


def test_csv_without_prompt_column_lists_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,question\n1,What?\n", encoding="utf-8")
    _raises(path, str(path), "no 'prompt' (or 'text') column", "columns found: ['id', 'question']")


def test_parquet_without_prompt_column_lists_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": ["a"], "question": ["What?"]}), path)
    _raises(path, str(path), "no 'prompt' (or 'text') column", "columns found: ['id', 'question']")


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"this is not parquet")
    _raises(path, str(path), "not a readable Parquet file")


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("data.jsonl", '{"prompt": "a"}\n{"prompt": "   "}\n', "line 2"),
        ("data.jsonl", '{"prompt": "a"}\n{"prompt": null}\n', "line 2"),
        ("data.csv", "prompt,id\na,1\n,2\n", "row 2 (line 3)"),
        ("data.csv", "prompt,id\na,1\n  ,2\n", "row 2 (line 3)"),
    ],
    ids=["jsonl-blank", "jsonl-null", "csv-empty", "csv-blank"],
)
def test_blank_prompt_names_the_row(tmp_path: Path, name: str, content: str, where: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    _raises(path, str(path), where, "field 'prompt' is empty")


def test_blank_prompt_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"]}), path)
    _raises(path, str(path), "row 2", "field 'prompt' is empty")


def test_non_text_prompt(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [{"prompt": 12}])
    _raises(path, str(path), "line 1", "field 'prompt' must be text")


@pytest.mark.parametrize(
    ("name", "content", "parts"),
    [
        ("data.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n',
         ["line 3", "duplicate id 'a'", "first used at line 1"]),
        ("data.csv", "id,prompt\na,x\nb,y\nb,z\n", ["row 3 (line 4)", "duplicate id 'b'", "first used at row 2"]),
        # a given id that collides with a generated one: data-2 is what row 2 gets
        ("data.csv", "id,prompt\ndata-2,x\n,y\n", ["row 2", "duplicate id 'data-2'", "first used at row 1"]),
    ],
    ids=["jsonl", "csv", "generated"],
)
def test_duplicate_ids(tmp_path: Path, name: str, content: str, parts: list[str]) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    _raises(path, str(path), *parts)


@pytest.mark.parametrize(
    ("name", "content"),
    [("data.jsonl", ""), ("data.jsonl", "\n \n"), ("data.json", "[]"), ("data.csv", "id,prompt\n")],
    ids=["jsonl-empty", "jsonl-blank-lines", "json-empty-array", "csv-header-only"],
)
def test_zero_prompts(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    _raises(path, str(path), "no prompts found")


def test_zero_prompts_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], type=pa.string())}), path)
    _raises(path, str(path), "no prompts found")


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("", encoding="utf-8")
    _raises(path, str(path), "the file is empty")


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "..", ".hidden", "with space", "x" * 129, "-lead"])
def test_unsafe_ids_are_refused(tmp_path: Path, bad: str) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [{"id": "ok", "prompt": "a"}, {"id": bad, "prompt": "b"}])
    _raises(path, str(path), "line 2", "field 'id'", "not a safe id")


@pytest.mark.parametrize(
    ("row", "parts"),
    [
        ({"id": True, "prompt": "a"}, ["field 'id' must be text or an integer"]),
        ({"prompt": "a", "answer": [1]}, ["field 'answer' must be text or a number"]),
        ({"prompt": "a", "kind": "poetry"}, ["field 'kind' = 'poetry' is not one of", "arithmetic"]),
    ],
    ids=["bool-id", "list-answer", "unknown-kind"],
)
def test_bad_optional_fields(tmp_path: Path, row: dict[str, object], parts: list[str]) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", [row])
    _raises(path, str(path), "line 1", *parts)


def test_docs_prompts_md_examples_and_counts_hold(tmp_path: Path) -> None:
    """docs/prompts.md documents the formats for users: its examples load as it says, its counts are right."""
    doc = (Path(__file__).parents[1] / "docs" / "prompts.md").read_text(encoding="utf-8")
    for name in BUILTINS:
        assert f"| `builtin:{name}` | {len(load_prompts(f'builtin:{name}'))} |" in doc
    loaded = []
    for suffix in ("jsonl", "csv"):
        example = re.search(rf"```{suffix}\n(.*?)```", doc, re.DOTALL)
        assert example is not None, f"docs/prompts.md lost its .{suffix} example"
        path = tmp_path / f"example.{suffix}"
        path.write_text(example.group(1), encoding="utf-8")
        loaded.append(load_prompts(path).records())
    assert loaded[0] == loaded[1]  # the two examples describe the same prompts
    assert [(r["id"], r["answer"], r["kind"]) for r in loaded[0]] == [("q1", None, "open"), ("q2", "21", "arithmetic")]
