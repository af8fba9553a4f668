"""A candidate principle set in clause form: what the operators edit.

The editable parts are **slots**: each principle's `text` and, in antithesis mode, its
`antithesis`, each held as a tuple of clauses. The preamble, ids, mode and design are the
seed's and never change, so a candidate turns back into a principle set with the same K,
the same variant labels and, in antithesis mode, the same flips (variant "flip:k" is always
principle k's antithesis in place of its text). Variants are built by `si_toolkit.principles`,
the one place that defines them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any

from si_toolkit.evolve.pool import join_clauses, split_clauses
from si_toolkit.principles import PrincipleSet, principle_set_from_mapping

__all__ = ["SlotRef", "Candidate", "from_principle_set", "texts_hash", "evolved_name", "MAX_SLOT_CLAUSES"]

MAX_SLOT_CLAUSES = 8  # clauses per principle text: keeps system prompts short and the search space small
_MAX_NAME = 64  # principle-set names are 1-64 characters (principles.py)


@dataclass(frozen=True, order=True)
class SlotRef:
    """An editable slot: principle index k and field ("text" or "antithesis")."""

    principle: int
    field: str


@dataclass(frozen=True)
class Candidate:
    """A principle set as clauses. `texts[k]` / `antitheses[k]` are principle k's clauses."""

    name: str
    description: str
    mode: str
    design: str | None
    preamble: str
    ids: tuple[str, ...]
    texts: tuple[tuple[str, ...], ...]
    antitheses: tuple[tuple[str, ...], ...] | None = None
    # (clauses, text as the user wrote it) of the seed's slots: an unchanged slot keeps its exact
    # wording and whitespace, so the seed candidate is the seed set, byte for byte.
    verbatim: tuple[tuple[tuple[str, ...], str], ...] = ()

    def slots(self) -> list[SlotRef]:
        fields = ("text", "antithesis") if self.antitheses is not None else ("text",)
        return [SlotRef(k, f) for k in range(len(self.ids)) for f in fields]

    def get(self, slot: SlotRef) -> tuple[str, ...]:
        source = self.texts if slot.field == "text" else self.antitheses
        assert source is not None, "antithesis slot of an alternatives set"
        return source[slot.principle]

    def with_slot(self, slot: SlotRef, clauses: tuple[str, ...]) -> Candidate:
        """A copy with one slot's clauses replaced."""
        if slot.field == "text":
            return replace(self, texts=_put(self.texts, slot.principle, clauses))
        assert self.antitheses is not None, "antithesis slot of an alternatives set"
        return replace(self, antitheses=_put(self.antitheses, slot.principle, clauses))

    def slot_name(self, slot: SlotRef) -> str:
        return self.ids[slot.principle] + ("" if slot.field == "text" else " (antithesis)")

    def clauses(self) -> set[str]:
        return {c for slot in self.slots() for c in self.get(slot)}

    def to_mapping(self, *, name: str | None = None, description: str | None = None) -> dict[str, Any]:
        """The principle-set YAML mapping of this candidate (what best.yaml holds)."""
        data: dict[str, Any] = {"name": name or self.name, "description": description or self.description,
                                "mode": self.mode}
        if self.design is not None:
            data["design"] = self.design
        if self.preamble:
            data["preamble"] = self.preamble
        principles = []
        for k, pid in enumerate(self.ids):
            entry = {"id": pid, "text": self._text(self.texts[k])}
            if self.antitheses is not None:
                entry["antithesis"] = self._text(self.antitheses[k])
            principles.append(entry)
        data["principles"] = principles
        return data

    def _text(self, clauses: tuple[str, ...]) -> str:
        for seed_clauses, text in self.verbatim:
            if seed_clauses == clauses:
                return text
        return join_clauses(clauses)

    def to_principle_set(self, where: str) -> PrincipleSet:
        """Validated by the same rules as a principle-set file."""
        return principle_set_from_mapping(self.to_mapping(), where=where, default_name=self.name)

    def variant_texts(self) -> tuple[str, ...]:
        return tuple(v.text for v in self.to_principle_set(f"candidate of {self.name}").variants)


def _put(items: tuple[tuple[str, ...], ...], k: int, value: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return items[:k] + (value,) + items[k + 1:]


def from_principle_set(s: PrincipleSet, preamble: str) -> Candidate:
    """The seed set in clause form; `preamble` is the file's `preamble:` (PrincipleSet keeps only
    the variants built with it)."""
    slots = [p.text for p in s.principles]
    antitheses = None
    if s.mode == "antithesis":
        antitheses = tuple(tuple(split_clauses(p.antithesis or "")) for p in s.principles)
        slots += [p.antithesis or "" for p in s.principles]
    verbatim = tuple((tuple(split_clauses(text)), text) for text in slots)
    return Candidate(name=s.name, description=s.description, mode=s.mode, design=s.design,
                     preamble=preamble.strip(), ids=tuple(p.id for p in s.principles),
                     texts=tuple(tuple(split_clauses(p.text)) for p in s.principles), antitheses=antitheses,
                     verbatim=verbatim)


def texts_hash(texts: tuple[str, ...] | list[str]) -> str:
    """Identity of a candidate's variant texts (two candidates with equal texts are one)."""
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]


def evolved_name(seed_name: str) -> str:
    """best.yaml's set name: the seed's with '-evolved', within the 64-character limit."""
    return seed_name[: _MAX_NAME - len("-evolved")] + "-evolved"
