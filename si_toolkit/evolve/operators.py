"""Operators: small pure functions that make a child candidate from a parent, seeded.

Pool operators move whole user-written clauses only (the seed's and the `--pool` file's), so a
child's text is made of sentences a person wrote:

- `add`: insert a pool clause into one slot, at a random place;
- `drop`: remove one clause from a slot that has two or more;
- `swap`: replace one clause of a slot with a pool clause;
- `reorder`: move one clause of a slot to another place;
- `merge`: give one slot the clauses of both parents' versions of it (the first parent's in
  order, then the second's that it lacks).

In antithesis mode pool clauses go into principle texts only; an antithesis is edited by
drop, reorder, merge and a model rewrite, so a flip stays the reverse of its own principle.
Each operator takes a `numpy.random.Generator` and returns an `Edit`, or None when it cannot
apply (e.g. `drop` on single-clause slots); the same generator state gives the same edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from si_toolkit.evolve.candidate import MAX_SLOT_CLAUSES, Candidate, SlotRef

__all__ = ["Edit", "Child", "Rewriter", "POOL_OPERATORS", "add_clause", "drop_clause", "swap_clause",
           "reorder_clauses", "merge_slots", "make_child", "operator_weights"]

MAX_ATTEMPTS = 40  # tries per child before giving up (every edit already seen, or none applies)


@dataclass(frozen=True)
class Edit:
    """A child candidate and how it was made (`detail` quotes the clauses moved)."""

    candidate: Candidate
    operator: str
    detail: str
    model_written: bool = False


@dataclass(frozen=True)
class Child:
    """An edit with its parents' indices in the parent list (second only for merge)."""

    edit: Edit
    parent: int
    second_parent: int | None


# (candidate, slot, seed) -> an Edit with model-written clauses, or None when the model gave nothing usable.
Rewriter = Callable[[Candidate, SlotRef, int], Edit | None]


def _q(clause: str) -> str:
    return f"“{clause}”"


def _insertable(c: Candidate, slot: SlotRef, pool: Sequence[str]) -> list[str]:
    """Pool clauses that may enter `slot`: not already there; none into an antithesis."""
    if slot.field != "text":
        return []
    held = set(c.get(slot))
    return [p for p in pool if p not in held]


def _pick(rng: np.random.Generator, items: Sequence[SlotRef]) -> SlotRef | None:
    return items[int(rng.integers(len(items)))] if items else None


def add_clause(c: Candidate, other: Candidate | None, pool: Sequence[str], rng: np.random.Generator) -> Edit | None:
    slot = _pick(rng, [s for s in c.slots() if len(c.get(s)) < MAX_SLOT_CLAUSES and _insertable(c, s, pool)])
    if slot is None:
        return None
    options = _insertable(c, slot, pool)
    clause = options[int(rng.integers(len(options)))]
    clauses = list(c.get(slot))
    at = int(rng.integers(len(clauses) + 1))
    clauses.insert(at, clause)
    return Edit(c.with_slot(slot, tuple(clauses)), "add", f"{c.slot_name(slot)}: added {_q(clause)}")


def drop_clause(c: Candidate, other: Candidate | None, pool: Sequence[str], rng: np.random.Generator) -> Edit | None:
    slot = _pick(rng, [s for s in c.slots() if len(c.get(s)) >= 2])
    if slot is None:
        return None
    clauses = list(c.get(slot))
    gone = clauses.pop(int(rng.integers(len(clauses))))
    return Edit(c.with_slot(slot, tuple(clauses)), "drop", f"{c.slot_name(slot)}: dropped {_q(gone)}")


def swap_clause(c: Candidate, other: Candidate | None, pool: Sequence[str], rng: np.random.Generator) -> Edit | None:
    slot = _pick(rng, [s for s in c.slots() if _insertable(c, s, pool)])
    if slot is None:
        return None
    options = _insertable(c, slot, pool)
    clauses = list(c.get(slot))
    at = int(rng.integers(len(clauses)))
    new = options[int(rng.integers(len(options)))]
    old, clauses[at] = clauses[at], new
    return Edit(c.with_slot(slot, tuple(clauses)), "swap", f"{c.slot_name(slot)}: {_q(old)} -> {_q(new)}")


def reorder_clauses(c: Candidate, other: Candidate | None, pool: Sequence[str],
                    rng: np.random.Generator) -> Edit | None:
    slot = _pick(rng, [s for s in c.slots() if len(c.get(s)) >= 2])
    if slot is None:
        return None
    clauses = list(c.get(slot))
    src = int(rng.integers(len(clauses)))
    dst = int(rng.integers(len(clauses) - 1))
    dst = dst + 1 if dst >= src else dst  # any other position
    moved = clauses.pop(src)
    clauses.insert(dst, moved)
    return Edit(c.with_slot(slot, tuple(clauses)), "reorder",
                f"{c.slot_name(slot)}: moved {_q(moved)} from place {src + 1} to {dst + 1}")


def merge_slots(c: Candidate, other: Candidate | None, pool: Sequence[str], rng: np.random.Generator) -> Edit | None:
    if other is None:
        return None
    slots = [s for s in c.slots() if set(other.get(s)) - set(c.get(s))]
    slot = _pick(rng, slots)
    if slot is None:
        return None
    mine = c.get(slot)
    extra = tuple(x for x in other.get(slot) if x not in mine)
    merged = (mine + extra)[:MAX_SLOT_CLAUSES]
    if merged == mine:
        return None
    return Edit(c.with_slot(slot, merged), "merge",
                f"{c.slot_name(slot)}: merged in {', '.join(_q(x) for x in merged[len(mine):])}")


PoolOperator = Callable[[Candidate, Candidate | None, Sequence[str], np.random.Generator], Edit | None]
POOL_OPERATORS: Mapping[str, PoolOperator] = {
    "add": add_clause, "drop": drop_clause, "swap": swap_clause, "reorder": reorder_clauses, "merge": merge_slots,
}


def operator_weights(*, n_parents: int, rewrite: bool) -> dict[str, float]:
    """How often each operator is tried: pool operators equally; `merge` needs two parents;
    a model rewrite, when there is a proposer, twice as often as one pool operator."""
    weights = {name: 1.0 for name in POOL_OPERATORS if name != "merge" or n_parents >= 2}
    if rewrite:
        weights["rewrite"] = 2.0
    return weights


def _apply(name: str, parent: Candidate, other: Candidate | None, pool: Sequence[str],
           rng: np.random.Generator, rewriter: Rewriter | None) -> Edit | None:
    if name == "rewrite":
        assert rewriter is not None
        slot = _pick(rng, parent.slots())
        assert slot is not None
        return rewriter(parent, slot, int(rng.integers(2**31 - 1)))
    return POOL_OPERATORS[name](parent, other, pool, rng)


def make_child(parents: Sequence[Candidate], pool: Sequence[str], rng: np.random.Generator, *,
               seen: Callable[[Candidate], bool], rewriter: Rewriter | None = None) -> Child | None:
    """One new child: pick a parent (the first with probability 1/2, else another), an operator by
    `operator_weights`, apply it; retry until the child is one `seen` does not know yet.

    Deterministic given `rng`'s state (and, for rewrites, what `rewriter` returns).
    """
    weights = operator_weights(n_parents=len(parents), rewrite=rewriter is not None)
    names = list(weights)
    p = np.array([weights[n] for n in names]) / sum(weights.values())
    for _ in range(MAX_ATTEMPTS):
        first = 0 if len(parents) == 1 or rng.random() < 0.5 else int(rng.integers(1, len(parents)))
        second = None
        if len(parents) >= 2:
            second = int(rng.integers(len(parents) - 1))
            second = second + 1 if second >= first else second
        name = names[int(rng.choice(len(names), p=p))]
        edit = _apply(name, parents[first], parents[second] if second is not None else None, pool, rng, rewriter)
        if edit is not None and not seen(edit.candidate):
            return Child(edit, first, second if name == "merge" else None)
    return None
