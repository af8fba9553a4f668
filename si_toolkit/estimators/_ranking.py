"""Ranking of principle sets by SI with ties to the leader (SI-SPEC §5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from si_toolkit.errors import SIError
from si_toolkit.estimators._bootstrap import Interval, bootstrap_mean_ci
from si_toolkit.estimators._compare import PairedComparison, paired_comparison
from si_toolkit.estimators._types import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES


@dataclass(frozen=True)
class RankEntry:
    """One row of a ranking; delta = SI(set) − SI(leader) on their common prompts (≤ 0 mostly)."""

    rank: int
    name: str
    si: float
    si_ci: Interval
    comparison: PairedComparison | None  # None when the set shares no prompt with the leader
    tied_with_leader: bool


def rank_sets(
    si_by_set: Mapping[str, Mapping[str, float]],
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> list[RankEntry]:
    """Rank sets by SI (descending, name breaks exact ties) and mark ties with the leader (§5).

    si_by_set: set name -> {prompt id -> per-prompt SI}. A set is tied with the leader when the
    paired-difference CI over their common prompts includes 0, or cannot be computed (fewer
    than 2 common prompts: the data cannot separate them). The leader is tied with itself.
    """
    if not si_by_set:
        return []
    means = {name: float(np.mean(list(v.values()))) for name, v in si_by_set.items() if v}
    if len(means) != len(si_by_set):
        empty = sorted(set(si_by_set) - set(means))
        raise SIError(f"set(s) {empty} have no scored prompts; rerun `si score`")
    order = sorted(means, key=lambda name: (-means[name], name))
    leader = si_by_set[order[0]]
    entries = []
    for rank, name in enumerate(order, start=1):
        values = si_by_set[name]
        own = np.array(list(values.values()), dtype=np.float64)
        si_ci = bootstrap_mean_ci(own, n_resamples=n_resamples, confidence=confidence, seed=seed)
        common = sorted(set(values) & set(leader))
        comparison = None
        if common:
            comparison = paired_comparison(
                np.array([values[p] for p in common]), np.array([leader[p] for p in common]),
                n_resamples=n_resamples, confidence=confidence, seed=seed,
            )
        tied = comparison is None or comparison.ci.low is None or comparison.ci.contains(0.0)
        entries.append(RankEntry(rank, name, means[name], si_ci, comparison, tied))
    return entries
