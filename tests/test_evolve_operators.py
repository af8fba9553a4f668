"""Seeded pool operators and child making (si_toolkit.evolve.operators)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from si_toolkit.evolve.candidate import MAX_SLOT_CLAUSES, Candidate, SlotRef
from si_toolkit.evolve.operators import (POOL_OPERATORS, Edit, add_clause, drop_clause, make_child, merge_slots,
                                         operator_weights, reorder_clauses, swap_clause)

ALT = Candidate(name="s", description="", mode="alternatives", design=None, preamble="", ids=("a", "b"),
                texts=(("A one.", "A two."), ("B one.",)))
ANTI = Candidate(name="t", description="", mode="antithesis", design="one-flip", preamble="Rules.", ids=("a", "b"),
                 texts=(("Be brief.", "Use lists."), ("Be kind.",)),
                 antitheses=(("Ramble.", "Never list."), ("Be rude.",)))
POOL = ("A one.", "A two.", "B one.", "Pool x.", "Pool y.", "Pool z.")


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", sorted(POOL_OPERATORS))
@pytest.mark.parametrize("start", [ALT, ANTI], ids=["alternatives", "antithesis"])
def test_operators_only_move_user_sentences_and_keep_structure(name, start) -> None:
    other = start.with_slot(SlotRef(0, "text"), ("Pool y.", "A one."))
    user = set(POOL) | start.clauses() | other.clauses()
    applied = 0
    for seed in range(200):
        edit = POOL_OPERATORS[name](start, other, POOL, _rng(seed))
        if edit is None:
            continue
        applied += 1
        c = edit.candidate
        assert edit.operator == name and not edit.model_written
        assert c.clauses() <= user, edit.detail
        assert c.ids == start.ids and c.mode == start.mode and c.preamble == start.preamble
        assert all(1 <= len(c.get(s)) <= MAX_SLOT_CLAUSES for s in c.slots())
        assert c != start
        if start.antitheses is not None:  # a reversal only ever holds its own seed reversal's clauses
            for k in range(len(start.ids)):
                assert set(c.get(SlotRef(k, "antithesis"))) <= set(start.antitheses[k]) | set(other.antitheses[k])
    assert applied > 0


def test_each_operator_does_what_its_name_says() -> None:
    add = add_clause(ALT, None, POOL, _rng(0))
    assert sum(map(len, add.candidate.texts)) == 4 and "added" in add.detail
    drop = drop_clause(ALT, None, POOL, _rng(0))
    assert drop.candidate.texts[1] == ("B one.",) and len(drop.candidate.texts[0]) == 1  # only slot a has 2
    swap = swap_clause(ALT, None, POOL, _rng(1))
    assert sum(map(len, swap.candidate.texts)) == 3
    reorder = reorder_clauses(ALT, None, POOL, _rng(2))
    assert reorder.candidate.texts[0] == ("A two.", "A one.")
    other = ALT.with_slot(SlotRef(1, "text"), ("Pool x.", "B one."))
    merged = merge_slots(ALT, other, POOL, _rng(0))
    assert merged.candidate.texts[1] == ("B one.", "Pool x.")


def test_operators_that_cannot_apply_return_none() -> None:
    single = Candidate(name="s", description="", mode="alternatives", design=None, preamble="", ids=("a", "b"),
                       texts=(("A.",), ("B.",)))
    assert drop_clause(single, None, (), _rng(0)) is None
    assert reorder_clauses(single, None, (), _rng(0)) is None
    assert add_clause(single, None, ("A.", "B."), _rng(0)) is not None
    assert swap_clause(single, None, (), _rng(0)) is None
    assert merge_slots(single, None, (), _rng(0)) is None
    assert merge_slots(single, single, (), _rng(0)) is None


def test_operators_are_deterministic_under_a_seed() -> None:
    for name, op in POOL_OPERATORS.items():
        other = ALT.with_slot(SlotRef(0, "text"), ("Pool z.",))
        first = [op(ALT, other, POOL, _rng(s)) for s in range(20)]
        again = [op(ALT, other, POOL, _rng(s)) for s in range(20)]
        assert first == again, name
        # different seeds make different edits (merge and reorder have one possible edit here)
        assert len({e.candidate for e in first if e is not None}) > 1 or name in ("merge", "reorder"), name


def test_make_child_skips_seen_candidates_and_uses_every_operator() -> None:
    seen = {ALT}
    counts: Counter[str] = Counter()
    parents = [ALT, ALT.with_slot(SlotRef(1, "text"), ("Pool x.",))]
    for seed in range(300):
        child = make_child(parents, POOL, _rng(seed), seen=lambda c: c in seen)
        assert child is not None and child.edit.candidate not in seen
        counts[child.edit.operator] += 1
        if child.edit.operator == "merge":
            assert child.second_parent is not None and child.second_parent != child.parent
    assert set(counts) == set(POOL_OPERATORS)
    assert make_child([ALT], (), _rng(0), seen=lambda c: True) is None  # nothing new can be made


def test_rewrite_is_weighted_in_only_with_a_rewriter() -> None:
    assert "rewrite" not in operator_weights(n_parents=2, rewrite=False)
    assert operator_weights(n_parents=1, rewrite=True) == {"add": 1.0, "drop": 1.0, "swap": 1.0, "reorder": 1.0,
                                                          "rewrite": 2.0}
    calls = []

    def rewriter(c, slot, seed):
        calls.append((slot, seed))
        return Edit(c.with_slot(slot, ("Model text here.",)), "rewrite", "r", model_written=True)

    kinds = Counter(make_child([ALT], POOL, _rng(s), seen=lambda c: False, rewriter=rewriter).edit.operator
                    for s in range(120))
    assert kinds["rewrite"] > 0 and calls
