"""Principle sets: load and validate the YAML files that define the K variants (SI-SPEC §1).

A principle set file looks like this::

    name: concise-vs-comprehensive      # optional; defaults to the file name
    description: One line for the report.
    mode: alternatives                  # or: antithesis
    principles:
      - id: concise
        text: Answer in as few words as possible.
      - id: comprehensive
        text: Cover every relevant consideration.

In `antithesis` mode each principle also has an `antithesis`, and `design` is `one-flip`
(default: the all-positive constitution plus one variant per flipped principle, K = m + 1)
or `factorial` (all 2^m combinations, m <= 6). An optional `preamble` is put before the
numbered principles of every variant. An optional `role` marks a control set:
`null-control` (variants that cannot differ, expected SI 0) or `positive-control` (variants
built to be told apart, expected SI high); the report flags a control that behaves against
its role.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from si_toolkit.errors import SIError
from si_toolkit.safeio import read_yaml_mapping

__all__ = [
    "Principle",
    "Variant",
    "PrincipleSet",
    "load_principle_set",
    "load_principle_sets",
    "principle_set_from_mapping",
    "MAX_FACTORIAL_PRINCIPLES",
    "MAX_TEXT_CHARS",
    "ROLES",
]

MODES = ("alternatives", "antithesis")
DESIGNS = ("one-flip", "factorial")
ROLES = ("null-control", "positive-control")
MAX_FACTORIAL_PRINCIPLES = 6  # 2^6 = 64 variants; K^2 scoring cost beyond that is unreasonable
MAX_TEXT_CHARS = 20_000  # one principle's text; longer text is almost surely a mistake
MAX_FILE_BYTES = 1_000_000
_TOP_KEYS = {"name", "description", "mode", "design", "preamble", "principles", "role"}
_PRINCIPLE_KEYS = {"id", "text", "antithesis", "label"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Principle:
    """One listed principle: its id, text and (antithesis mode) its flipped text."""

    id: str
    text: str
    antithesis: str | None = None


@dataclass(frozen=True)
class Variant:
    """One condition c_i: the system-prompt text a response is sampled under.

    `flipped` holds the indices of the principles given as their antithesis (antithesis mode).
    """

    label: str
    text: str
    flipped: tuple[int, ...] = ()


@dataclass(frozen=True)
class PrincipleSet:
    """A validated principle set with its variants c_1..c_K under a uniform prior."""

    name: str
    path: str
    mode: str
    design: str | None
    description: str
    principles: tuple[Principle, ...]
    variants: tuple[Variant, ...]
    preamble: str = ""
    role: str | None = None  # "null-control", "positive-control", or None for an ordinary set

    @classmethod
    def from_yaml(cls, path: Path | str) -> PrincipleSet:
        """Read and validate a principle-set YAML file (the same rules as `si principles validate`)."""
        return load_principle_set(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, name: str | None = None) -> PrincipleSet:
        """Validate a principle set given as a mapping with the YAML file's keys (no file needed).

        `name` is used when the mapping has no `name:`; one of the two is required.
        """
        if not isinstance(data, dict):
            raise SIError(f"a principle set must be a mapping with the YAML file's keys, got {type(data).__name__}")
        where = f"principle set {data.get('name') or name or '(unnamed)'}"
        if not (data.get("name") or name):
            raise SIError(f"{where}: give it a `name` (a key of the mapping, or name=...)")
        return principle_set_from_mapping(data, where=where, default_name=str(name or ""), path="")

    def to_dict(self) -> dict[str, Any]:
        """The mapping `from_dict` (and the YAML file format) takes: a round trip gives an equal set."""
        data: dict[str, Any] = {"name": self.name}
        if self.description:
            data["description"] = self.description
        data["mode"] = self.mode
        if self.design is not None:
            data["design"] = self.design
        if self.preamble:
            data["preamble"] = self.preamble
        if self.role is not None:
            data["role"] = self.role
        data["principles"] = [
            {"id": p.id, "text": p.text, **({"antithesis": p.antithesis} if p.antithesis is not None else {})}
            for p in self.principles
        ]
        return data

    def to_yaml(self) -> str:
        """The set as YAML text that `from_yaml` reads back to an equal set."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    @property
    def K(self) -> int:  # noqa: N802 - K is the spec's symbol
        return len(self.variants)

    def principle_pairs(self) -> list[tuple[str, int, int]]:
        """(principle id, index of the all-positive variant, index of the variant with only it flipped).

        Used for per-principle SI (SI-SPEC §4); empty in alternatives mode.
        """
        if self.mode != "antithesis":
            return []
        index = {v.flipped: i for i, v in enumerate(self.variants)}
        return [(p.id, index[()], index[(k,)]) for k, p in enumerate(self.principles)]


def load_principle_sets(paths: list[Path]) -> list[PrincipleSet]:
    """Load several files; set names must be unique because they key the run folder."""
    sets = [load_principle_set(p) for p in paths]
    seen: dict[str, str] = {}
    for s in sets:
        if s.name in seen:
            raise SIError(
                f"{s.path}: set name '{s.name}' is also used by {seen[s.name]}; "
                "give one of them a different `name:`"
            )
        seen[s.name] = s.path
    return sets


def load_principle_set(path: Path | str) -> PrincipleSet:
    """Read and validate one principle-set YAML file."""
    path = Path(path)
    return principle_set_from_mapping(_read_yaml(path), where=str(path), default_name=path.stem, path=str(path))


def principle_set_from_mapping(data: dict[str, Any], *, where: str, default_name: str,
                               path: str = "") -> PrincipleSet:
    """Validate a principle set given as the mapping a YAML file holds (the same rules as a file).

    `where` names the source in error messages (a path, or e.g. "candidate g1-c3"); `default_name`
    is the set's name when the mapping has no `name:`; `path` the file it came from ("" if none).
    """
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SIError(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(_TOP_KEYS)}")
    name = str(data.get("name") or default_name)
    if not _SAFE_NAME.match(name):
        raise SIError(
            f"{where}: field 'name' = {name!r} is not a safe set name; use 1-64 letters, digits, "
            "'-', '_' or '.', starting with a letter or digit (it names files in the run folder)"
        )
    mode = data.get("mode", "alternatives")
    if mode not in MODES:
        raise SIError(f"{where}: field 'mode' = {mode!r} is not one of {list(MODES)}")
    principles = _parse_principles(data.get("principles"), mode, where)
    design = None
    if mode == "antithesis":
        design = data.get("design", "one-flip")
        if design not in DESIGNS:
            raise SIError(f"{where}: field 'design' = {design!r} is not one of {list(DESIGNS)}")
    elif "design" in data:
        raise SIError(f"{where}: field 'design' only applies to mode: antithesis; remove it")
    preamble = _optional_text(data, "preamble", where)
    role = data.get("role")
    if role is not None and role not in ROLES:
        raise SIError(
            f"{where}: field 'role' = {role!r} is not one of {list(ROLES)}; "
            "remove it for an ordinary set"
        )
    variants = (
        _alternative_variants(principles, preamble)
        if mode == "alternatives"
        else _antithesis_variants(principles, preamble, design, where)
    )
    return PrincipleSet(
        name=name,
        path=path,
        mode=mode,
        design=design,
        description=_optional_text(data, "description", where),
        principles=tuple(principles),
        variants=tuple(variants),
        preamble=preamble,
        role=role,
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
        raise SIError(f"{path}: file is over 1 MB; a principle set should be a few KB")
    return read_yaml_mapping(path, "principle set")


def _optional_text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SIError(f"{where}: field '{key}' must be text, got {type(value).__name__}")
    return _check_length(value.strip(), f"{where}: field '{key}'")


def _check_length(text: str, what: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise SIError(f"{what} is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}; shorten it")
    return text


def _parse_principles(raw: Any, mode: str, where: str) -> list[Principle]:
    if not isinstance(raw, list) or not raw:
        raise SIError(f"{where}: field 'principles' must be a non-empty list of {{id, text}} entries")
    out: list[Principle] = []
    ids: set[str] = set()
    for n, item in enumerate(raw):
        field = f"{where}: principles[{n}]"
        if not isinstance(item, dict):
            raise SIError(f"{field} must be a mapping with 'id' and 'text', got {type(item).__name__}")
        unknown = set(item) - _PRINCIPLE_KEYS
        if unknown:
            raise SIError(f"{field}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_PRINCIPLE_KEYS)}")
        pid = str(item.get("id") or item.get("label") or f"p{n + 1}")
        if pid in ids:
            raise SIError(f"{field}: duplicate id '{pid}'; ids must be unique within a set")
        ids.add(pid)
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SIError(f"{field} ('{pid}'): missing or empty 'text'; give the principle's wording")
        anti = item.get("antithesis")
        if mode == "antithesis" and (not isinstance(anti, str) or not anti.strip()):
            raise SIError(f"{field} ('{pid}'): mode antithesis needs an 'antithesis' text for every principle")
        if mode == "alternatives" and anti is not None:
            raise SIError(f"{field} ('{pid}'): 'antithesis' is only used with mode: antithesis; remove it")
        out.append(
            Principle(
                id=pid,
                text=_check_length(text.strip(), f"{field}.text"),
                antithesis=_check_length(anti.strip(), f"{field}.antithesis") if isinstance(anti, str) else None,
            )
        )
    if mode == "alternatives" and len(out) < 2:
        raise SIError(f"{where}: mode alternatives needs K >= 2 principles, got {len(out)}; add another variant")
    return out


def _alternative_variants(principles: list[Principle], preamble: str) -> list[Variant]:
    return [Variant(label=p.id, text=_join(preamble, p.text)) for p in principles]


def _antithesis_variants(
    principles: list[Principle], preamble: str, design: str | None, where: str
) -> list[Variant]:
    m = len(principles)
    if design == "factorial":
        if m > MAX_FACTORIAL_PRINCIPLES:
            raise SIError(
                f"{where}: design factorial with {m} principles gives 2^{m} variants; the limit is "
                f"{MAX_FACTORIAL_PRINCIPLES} principles; use design: one-flip or split the set"
            )
        flip_sets = [
            tuple(k for k in range(m) if bits[k]) for bits in itertools.product((0, 1), repeat=m)
        ]
    else:
        flip_sets = [()] + [(k,) for k in range(m)]
    variants = []
    for flipped in flip_sets:
        lines = [
            f"{k + 1}. {p.antithesis if k in flipped else p.text}" for k, p in enumerate(principles)
        ]
        label = "all-positive" if not flipped else "flip:" + "+".join(principles[k].id for k in flipped)
        variants.append(Variant(label=label, text=_join(preamble, "\n".join(lines)), flipped=flipped))
    return variants


def _join(preamble: str, body: str) -> str:
    return f"{preamble}\n\n{body}" if preamble else body
