"""Clauses and the --pool file (si_toolkit.evolve.pool)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from si_toolkit.errors import SIError
from si_toolkit.evolve.pool import MAX_CLAUSE_CHARS, join_clauses, load_pool, split_clauses


@pytest.mark.parametrize(("text", "clauses"), [
    ("Be kind. Answer briefly!", ["Be kind.", "Answer briefly!"]),
    ("Use plain words, e.g. short ones. Stop.", ["Use plain words, e.g. short ones.", "Stop."]),
    ("Pay 1.5 dollars. Ok", ["Pay 1.5 dollars.", "Ok"]),
    ("Say \"no.\" Then stop", ["Say \"no.\"", "Then stop"]),
    ("Line one\nLine two. Three?", ["Line one", "Line two.", "Three?"]),
    ("  \n", []),
], ids=["two", "abbreviation", "decimal", "quote", "lines", "blank"])
def test_split_clauses(text, clauses) -> None:
    assert split_clauses(text) == clauses


_words = st.text(alphabet="abcdefgh ,'", min_size=1, max_size=30).filter(lambda s: s.strip() and s == s.strip())
_clause = st.builds(lambda w, end: w + end, _words, st.sampled_from([".", "!", "?", "", " e.g.", "..."]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_clause, min_size=1, max_size=6))
def test_join_is_the_inverse_of_split(clauses) -> None:
    parts = split_clauses(join_clauses(split_clauses("\n".join(clauses))))
    assert split_clauses(join_clauses(parts)) == parts
    assert parts == split_clauses("\n".join(clauses))


def test_text_pool_skips_blank_comment_and_list_markers(tmp_path) -> None:
    path = tmp_path / "constitution.md"
    path.write_text("# Our values\n\n- Be honest. Be kind.\n1. Protect privacy.\nBe honest.\n", encoding="utf-8")
    pool = load_pool(path)
    assert pool.clauses == ("Be honest.", "Be kind.", "Protect privacy.")  # duplicates kept once
    assert len(pool.sha) == 16


def test_yaml_pools(tmp_path) -> None:
    listed = tmp_path / "pool.yaml"
    listed.write_text("sentences:\n  - Be honest. Be kind.\n  - Cite sources.\n", encoding="utf-8")
    assert load_pool(listed).clauses == ("Be honest.", "Be kind.", "Cite sources.")
    as_set = tmp_path / "set.yml"
    as_set.write_text("mode: antithesis\nprinciples:\n  - id: a\n    text: Be brief.\n    antithesis: Ramble.\n",
                      encoding="utf-8")
    assert load_pool(as_set).clauses == ("Be brief.",)  # antitheses are not pool sentences


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.txt", b"\n# only a comment\n", "no sentences found"),
    ("latin1.txt", "Soyez polis. Réponse.".encode("latin-1"), "not valid UTF-8"),
    ("long.txt", ("x" * (MAX_CLAUSE_CHARS + 1)).encode(), f"the limit is {MAX_CLAUSE_CHARS}"),
    ("bad.yaml", b"sentences: 3\n", "list of strings"),
    ("other.yaml", b"rules: [a]\n", "a YAML pool needs"),
], ids=["empty", "non-utf8", "long-sentence", "bad-sentences", "unknown-yaml"])
def test_bad_pools_raise_one_line(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SIError, match=message) as info:
        load_pool(path)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_missing_pool(tmp_path) -> None:
    with pytest.raises(SIError, match="file not found"):
        load_pool(tmp_path / "nope.txt")
