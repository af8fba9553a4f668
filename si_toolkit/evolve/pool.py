"""Clauses: the sentences principle texts are cut into, and the optional `--pool` file.

Pool operators only ever move whole clauses, so a created text is made of sentences a person
wrote (the seed set's or the pool's). `split_clauses` and `join_clauses` are inverse on what
`split_clauses` returns: a clause that ends a sentence is joined to the next by a space,
any other by a newline, and the splitter cuts at exactly those places.

A pool is a UTF-8 text file (one or more sentences per line; blank lines, `#` lines and list
markers such as `- ` or `1. ` are skipped) or a YAML file with either `sentences:` (a list of
strings) or `principles:` (entries with `text:`, as in a principle set; antitheses are not
used as pool sentences).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from si_toolkit.errors import SIError
from si_toolkit.safeio import read_yaml_mapping

__all__ = ["MAX_CLAUSE_CHARS", "MAX_POOL_CLAUSES", "Pool", "split_clauses", "join_clauses", "load_pool"]

MAX_CLAUSE_CHARS = 500  # one pool sentence; longer is almost surely a paragraph that lost its full stops
MAX_POOL_CLAUSES = 5_000  # a long constitution has a few hundred sentences
MAX_POOL_BYTES = 1_000_000
_YAML_SUFFIXES = (".yaml", ".yml")
_PRINCIPLE_SET_KEYS = {"name", "description", "mode", "design", "preamble", "principles"}
# A sentence ends at . ! ? or … (optionally followed by closing quotes/brackets) before space.
_SENTENCE = re.compile(r".*?[.!?…]+[\"'”’)\]]*(?=\s|$)|.+$", re.DOTALL)
# Abbreviations whose full stop does not end a sentence ("e.g. a refund").
_ABBREVIATION = re.compile(r"(?:^|\s)(?:e\.g|i\.e|etc|vs|cf|Dr|Mr|Mrs|Ms|St|No)\.$", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s+")


@dataclass(frozen=True)
class Pool:
    """User-written sentences the pool operators may add or swap in. `sha` hashes the clauses."""

    source: str
    clauses: tuple[str, ...]

    @property
    def sha(self) -> str:
        return hashlib.sha256("\n".join(self.clauses).encode()).hexdigest()[:16]


def _ends_sentence(clause: str) -> bool:
    return re.search(r"[.!?…]+[\"'”’)\]]*$", clause) is not None and not _ABBREVIATION.search(clause)


def _split_line(line: str) -> list[str]:
    """Sentences of one line; a piece that ends in an abbreviation joins the next piece."""
    out: list[str] = []
    carry = ""
    for match in _SENTENCE.finditer(line.strip()):
        piece = " ".join(f"{carry} {match.group(0)}".split())  # inner whitespace runs become one space
        if not piece:
            continue
        if _ABBREVIATION.search(piece):
            carry = piece
            continue
        out.append(piece)
        carry = ""
    if carry:
        out.append(carry)
    return out


def split_clauses(text: str) -> list[str]:
    """The clauses (sentences) of a text, in order, with runs of spaces made one; lines are
    always boundaries."""
    return [c for line in text.splitlines() for c in _split_line(line) if c]


def join_clauses(clauses: list[str] | tuple[str, ...]) -> str:
    """The inverse of `split_clauses`: a space after a sentence end, a newline otherwise."""
    text = ""
    for n, clause in enumerate(clauses):
        if n:
            text += " " if _ends_sentence(clauses[n - 1]) else "\n"
        text += clause
    return text


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise SIError(f"--pool {path}: file not found; check the path")
    if path.stat().st_size > MAX_POOL_BYTES:
        raise SIError(f"--pool {path}: file is over 1 MB; a pool holds sentences, a few hundred KB at most")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SIError(f"--pool {path}: not valid UTF-8 (byte {err.start}); save the file as UTF-8") from None


def _text_pool(path: Path) -> list[tuple[str, str]]:
    """(where, clause) for each sentence of a text file."""
    out = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        out += [(f"{path}: line {number}", c) for c in split_clauses(_LIST_MARKER.sub("", line))]
    return out


def _yaml_strings(data: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    if "sentences" in data:
        unknown = set(data) - {"sentences"}
        items = data["sentences"]
        if unknown or not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise SIError(f"--pool {path}: 'sentences' must be the only key and a list of strings")
        return [(f"{path}: sentences[{n}]", s) for n, s in enumerate(items)]
    principles = data.get("principles")
    if set(data) - _PRINCIPLE_SET_KEYS or not isinstance(principles, list):
        raise SIError(f"--pool {path}: a YAML pool needs 'sentences: [...]' or 'principles: [{{text: ...}}]'")
    out = []
    for n, item in enumerate(principles):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise SIError(f"--pool {path}: principles[{n}] must be a mapping with a 'text' string")
        out.append((f"{path}: principles[{n}].text", item["text"]))
    return out


def load_pool(path: Path | str) -> Pool:
    """Read a pool file into its distinct clauses (first occurrence kept, order kept).

    Raises SIError for a missing, oversized, non-UTF-8 or empty file, a malformed YAML pool, and
    a sentence over `MAX_CLAUSE_CHARS` (naming its line or entry).
    """
    path = Path(path)
    if path.suffix.lower() in _YAML_SUFFIXES:
        _read_text(path)  # the same size and encoding checks as a text pool
        pieces = [(where, c) for where, text in _yaml_strings(read_yaml_mapping(path, "pool"), path)
                  for c in split_clauses(text)]
    else:
        pieces = _text_pool(path)
    clauses: list[str] = []
    for where, clause in pieces:
        if len(clause) > MAX_CLAUSE_CHARS:
            raise SIError(f"{where}: a sentence of {len(clause):,} characters (\"{clause[:40]}…\"); the limit is "
                          f"{MAX_CLAUSE_CHARS}; end sentences with a full stop or shorten it")
        if clause not in clauses:
            clauses.append(clause)
    if not clauses:
        raise SIError(f"--pool {path}: no sentences found; give a text file with one or more sentences per line")
    if len(clauses) > MAX_POOL_CLAUSES:
        raise SIError(f"--pool {path}: {len(clauses):,} sentences; the limit is {MAX_POOL_CLAUSES:,}")
    return Pool(str(path), tuple(clauses))
