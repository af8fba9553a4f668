"""Prompt sets: the n prompts x that every variant is sampled on (SI-SPEC §1; for users: docs/prompts.md).

A prompt set comes from one of two places:

- ``builtin:NAME`` — package data shipped with si-toolkit:
  ``builtin:arithmetic`` (72 generated grade-school word problems with integer answers),
  ``builtin:open`` (56 open questions where style and values matter: advice, explanations,
  everyday dilemmas, writing requests) and ``builtin:mixed`` (the two interleaved, arithmetic
  first, then the rest of the longer set).
- a path to a user file: ``.jsonl`` (or ``.json``: JSON lines, or one JSON array of objects),
  ``.csv`` (with a header row) or ``.parquet``. Each record has a ``prompt`` field (or
  ``text`` when there is no ``prompt``), and optionally ``id``, ``answer`` (a reference answer
  for evaluation) and ``kind`` (one of `KINDS`, default ``open``). Other fields are ignored.

Ids are kept when given and must be safe strings (letters, digits, ``-``, ``_``, ``.``; no path
separators), since they key rows and files in the run folder; a record without one gets
``<stem>-<n>``, where n is the record's line number (JSON lines), item number (JSON array) or
1-based data row (CSV, Parquet) — the same number error messages use.

Selection is stable and prefix-consistent: ``n`` takes the first n prompts of one fixed order,
so for the same seed the prompts of ``n=24`` are exactly the first 24 of ``n=48``, and a run
can be extended with more prompts without resampling the ones it has. The order is the file's
order when ``seed`` is 0 (the default); any other seed orders prompts by a hash of
``(seed, id)``, which depends on nothing but the seed and the ids (not on library versions,
and adding a prompt to the file does not reorder the others).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from si_toolkit.errors import SIError

__all__ = ["Prompt", "PromptSet", "load_prompts", "prompt_hash", "BUILTINS", "KINDS", "SUFFIXES"]

BUILTINS = ("arithmetic", "open", "mixed")
KINDS = ("open", "arithmetic")  # "arithmetic": the answer is a number to compare numerically
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_TEXT_FIELDS = ("prompt", "text")  # the first one present holds the prompt
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Prompt:
    """One prompt x: its id, text, optional reference answer, and kind (see `KINDS`)."""

    id: str
    text: str
    answer: str | None = None
    kind: str = "open"


@dataclass(frozen=True)
class PromptSet:
    """A validated, ordered prompt set. `source` is ``builtin:NAME`` or the file path."""

    name: str
    source: str
    prompts: tuple[Prompt, ...]

    def __len__(self) -> int:
        return len(self.prompts)

    def records(self) -> list[dict[str, str | None]]:
        """The prompts as plain dicts (id, text, answer, kind), e.g. for the run manifest."""
        return [{"id": p.id, "text": p.text, "answer": p.answer, "kind": p.kind} for p in self.prompts]

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], *, name: str = "records") -> PromptSet:
        """Validate prompts given as mappings with a prompt file's fields (`prompt` or `text`,
        optional `id`, `answer`, `kind`), in order; the same rules and messages as a file."""
        if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
            raise SIError(f"prompt records: give a list of mappings, got {type(records).__name__}")
        raw = [_Record(n, f"record {n}", _record_fields(item, f"{name}: record {n}")) for n, item in enumerate(records, 1)]
        return cls(name=_safe_stem(Path(name)), source=name, prompts=tuple(_build_prompts(raw, name, _safe_stem(Path(name)))))

    @classmethod
    def from_dataframe(cls, frame: Any, *, name: str = "dataframe") -> PromptSet:
        """Validate prompts given as a pandas DataFrame with a prompt file's columns (row order kept)."""
        if not hasattr(frame, "to_dict") or not hasattr(frame, "columns"):
            raise SIError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
        _require_text_column([str(c) for c in frame.columns], name)
        return cls.from_records(frame.to_dict("records"), name=name)

    def to_jsonl(self) -> str:
        """The prompts as JSON lines that `load_prompts` reads back in the same order."""
        return "".join(json.dumps({k: v for k, v in r.items() if v is not None}, ensure_ascii=False) + "\n"
                       for r in self.records())


@dataclass(frozen=True)
class _Record:
    """One raw record of a file: its number (for ids), its location text (for errors), its fields."""

    number: int
    location: str
    fields: dict[str, Any]


def load_prompts(spec: str | Path, *, n: int | None = None, seed: int = 0) -> PromptSet:
    """Load ``builtin:NAME`` or a prompt file, validate it, and take the first `n` prompts.

    Parameters
    ----------
    spec : ``builtin:arithmetic``, ``builtin:open``, ``builtin:mixed`` or a file path
        (.jsonl, .json, .csv, .parquet).
    n : number of prompts to keep (>= 1), or None for all. Asking for more prompts than the
        source holds is an error rather than a silent shortfall.
    seed : 0 keeps the source's order; another seed uses a fixed hash order of the ids.
        Either way the result for `n` is a prefix of the result for any larger `n`.

    Raises SIError, naming the file, the line or row and the field, for every problem a user
    can cause.
    """
    _check_int("n", n, allow_none=True)
    _check_int("seed", seed, allow_none=False, minimum=None)
    spec = str(spec)
    if not spec.strip():
        raise SIError("prompt spec is empty; give builtin:arithmetic|open|mixed or a file path")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        prompts = _load_builtin(name, spec)
    else:
        path = Path(spec)
        name = _safe_stem(path)
        prompts = _load_file(path, name)
    ordered = _ordered(prompts, seed)
    if n is not None:
        if n > len(ordered):
            raise SIError(
                f"{spec}: asked for n = {n} prompts but it holds only {len(ordered)}; "
                f"use n <= {len(ordered)} or add prompts"
            )
        ordered = ordered[:n]
    return PromptSet(name=name, source=spec, prompts=tuple(ordered))


def prompt_hash(prompt_set: PromptSet) -> str:
    """sha256 (hex) of the ordered (id, text) pairs, serialised as a JSON list.

    JSON keeps the pairs unambiguous (no separator can be forged by a text); answers and kinds
    are left out because they do not change what is sampled or scored.
    """
    payload = json.dumps([[p.id, p.text] for p in prompt_set.prompts], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _check_int(field: str, value: Any, *, allow_none: bool, minimum: int | None = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SIError(f"{field} = {value!r}: must be an integer")
    if minimum is not None and value < minimum:
        raise SIError(f"{field} = {value}: must be >= {minimum} (the number of prompts to use)")


def _ordered(prompts: list[Prompt], seed: int) -> list[Prompt]:
    if seed == 0:
        return list(prompts)

    def key(p: Prompt) -> str:
        return hashlib.sha256(f"{seed}\x00{p.id}".encode()).hexdigest()

    return sorted(prompts, key=key)


def _load_builtin(name: str, spec: str) -> list[Prompt]:
    if name not in BUILTINS:
        choices = ", ".join(f"builtin:{b}" for b in BUILTINS)
        raise SIError(f"prompts '{spec}': unknown built-in prompt set '{name}'; choose one of {choices}")
    if name != "mixed":
        return _builtin_file(name)
    arithmetic, open_ = _builtin_file("arithmetic"), _builtin_file("open")
    mixed: list[Prompt] = []
    for k in range(max(len(arithmetic), len(open_))):
        mixed.extend(part[k] for part in (arithmetic, open_) if k < len(part))
    return mixed


def _builtin_file(name: str) -> list[Prompt]:
    text = (resources.files("si_toolkit.data") / "prompts" / f"{name}.jsonl").read_text(encoding="utf-8")
    where = f"builtin:{name}"
    return _build_prompts(_parse_json(text, where, array_allowed=False), where, name)


# ---------------------------------------------------------------- user files


def _load_file(path: Path, stem: str) -> list[Prompt]:
    where = str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SIError(
            f"{where}: unsupported prompt file type '{path.suffix or '(none)'}'; "
            f"use one of {', '.join(SUFFIXES)} or builtin:arithmetic|open|mixed"
        )
    if not path.exists():
        raise SIError(f"{where}: prompt file not found; check the path, or use builtin:arithmetic|open|mixed")
    if not path.is_file():
        raise SIError(f"{where}: is not a file; give the path of a {'/'.join(SUFFIXES)} file")
    if suffix == ".parquet":
        records = _parse_parquet(path, where)
    elif suffix == ".csv":
        records = _parse_csv(_read_utf8(path, where), where)
    else:
        records = _parse_json(_read_utf8(path, where), where, array_allowed=suffix == ".json")
    return _build_prompts(records, where, stem)


def _read_utf8(path: Path, where: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # -sig: tolerate the byte-order mark some editors write
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SIError(
            f"{where}: line {line}: not valid UTF-8 (byte {err.start}: {data[err.start:err.start + 1]!r}); "
            "save the file as UTF-8"
        ) from None


def _parse_json(text: str, where: str, *, array_allowed: bool) -> list[_Record]:
    """JSON lines (one object per non-blank line), or with `array_allowed` one JSON array."""
    if array_allowed and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise SIError(f"{where}: line {err.lineno}: malformed JSON ({err.msg}); fix the syntax") from None
        if not isinstance(items, list):
            raise SIError(f"{where}: expected a JSON array of objects, got {type(items).__name__}")
        return [_json_record(item, k, f"item {k}", where) for k, item in enumerate(items, start=1)]
    records = []
    # split on "\n" only: JSON strings may legally hold U+2028, which str.splitlines would split on
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SIError(
                f"{where}: line {lineno}: malformed JSON ({err.msg} at column {err.colno}); each line "
                'must be one JSON object such as {"id": "q1", "prompt": "..."}'
            ) from None
        records.append(_json_record(item, lineno, f"line {lineno}", where))
    return records


def _json_record(item: Any, number: int, location: str, where: str) -> _Record:
    if not isinstance(item, dict):
        raise SIError(
            f"{where}: {location}: expected a JSON object with a 'prompt' field, got {type(item).__name__}"
        )
    if not any(f in item for f in _TEXT_FIELDS):
        raise SIError(
            f"{where}: {location}: no 'prompt' (or 'text') field; fields found: {sorted(item)}; "
            "put the prompt under 'prompt'"
        )
    return _Record(number, location, item)


def _parse_csv(text: str, where: str) -> list[_Record]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise SIError(f"{where}: the file is empty; it needs a header row with a 'prompt' column and data rows")
        columns = [c.strip() for c in header]
        _require_text_column(columns, where)
        records = []
        for row_no, row in enumerate(reader, start=1):
            if not row:
                continue  # a blank line, e.g. at the end of the file
            # zip drops cells beyond the header and leaves short rows' fields missing (= empty)
            fields = dict(zip(columns, row))
            records.append(_Record(row_no, f"row {row_no} (line {reader.line_num})", fields))
    except csv.Error as err:
        raise SIError(f"{where}: line {reader.line_num}: malformed CSV ({err}); fix the quoting") from None
    return records


def _parse_parquet(path: Path, where: str) -> list[_Record]:
    import pyarrow as pa  # imported here: only Parquet input needs it, and it is slow to import
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise SIError(f"{where}: not a readable Parquet file ({err}); check the file") from None
    columns = list(table.column_names)
    _require_text_column(columns, where)
    wanted = [c for c in ("id", *_TEXT_FIELDS, "answer", "kind") if c in columns]
    data = {c: table.column(c).to_pylist() for c in wanted}
    return [
        _Record(k + 1, f"row {k + 1}", {c: data[c][k] for c in wanted}) for k in range(table.num_rows)
    ]


def _record_fields(item: Any, at: str) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise SIError(f"{at} must be a mapping with a 'prompt' field, got {type(item).__name__}")
    _require_text_column(list(item), at)
    return dict(item)


def _require_text_column(columns: list[str], where: str) -> None:
    if not any(f in columns for f in _TEXT_FIELDS):
        raise SIError(
            f"{where}: no 'prompt' (or 'text') column; columns found: {columns}; "
            "rename the column that holds the prompts to 'prompt'"
        )


def _build_prompts(records: list[_Record], where: str, stem: str) -> list[Prompt]:
    if not records:
        raise SIError(f"{where}: no prompts found; the file needs at least one record with a 'prompt'")
    prompts: list[Prompt] = []
    first_seen: dict[str, str] = {}
    for rec in records:
        prompt = _build_prompt(rec, where, stem)
        if prompt.id in first_seen:
            raise SIError(
                f"{where}: {rec.location}: duplicate id '{prompt.id}' (first used at "
                f"{first_seen[prompt.id]}); ids must be unique; rename one of them"
            )
        first_seen[prompt.id] = rec.location
        prompts.append(prompt)
    return prompts


def _build_prompt(rec: _Record, where: str, stem: str) -> Prompt:
    at = f"{where}: {rec.location}"
    field = next(f for f in _TEXT_FIELDS if f in rec.fields)
    text = rec.fields[field]
    if _is_missing(text) or (isinstance(text, str) and not text.strip()):
        raise SIError(f"{at}: field '{field}' is empty; fill in the prompt or remove the record")
    if not isinstance(text, str):
        raise SIError(f"{at}: field '{field}' must be text, got {type(text).__name__} {text!r}; quote it")
    return Prompt(
        id=_prompt_id(rec.fields.get("id"), at, f"{stem}-{rec.number}"),
        text=text.strip(),
        answer=_answer(rec.fields.get("answer"), at),
        kind=_kind(rec.fields.get("kind"), at),
    )


def _prompt_id(raw: Any, at: str, generated: str) -> str:
    if _is_missing(raw) or (isinstance(raw, str) and not raw.strip()):
        return generated
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise SIError(f"{at}: field 'id' must be text or an integer, got {type(raw).__name__} {raw!r}")
    value = str(raw).strip()
    if not _SAFE_ID.match(value):
        raise SIError(
            f"{at}: field 'id' = {value!r} is not a safe id; use 1-128 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (no '/', '\\' or spaces: ids name rows and files in the run folder)"
        )
    return value


def _answer(raw: Any, at: str) -> str | None:
    if _is_missing(raw):
        return None
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise SIError(f"{at}: field 'answer' must be text or a number, got {type(raw).__name__} {raw!r}")
    if isinstance(raw, float):
        # Parquet and JSON may store 42 as 42.0; keep the reference answer in its plain form
        return str(int(raw)) if raw.is_integer() else repr(raw)
    value = str(raw).strip()
    return value or None


def _kind(raw: Any, at: str) -> str:
    if _is_missing(raw) or (isinstance(raw, str) and not raw.strip()):
        return "open"
    value = str(raw).strip()
    if value not in KINDS:
        raise SIError(f"{at}: field 'kind' = {value!r} is not one of {list(KINDS)}; fix it or leave it out")
    return value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _safe_stem(path: Path) -> str:
    """The file stem with unsafe characters replaced, usable as a set name and id prefix."""
    stem = _UNSAFE_CHARS.sub("-", path.stem).lstrip("-_.")[:64]
    return stem or "prompts"
