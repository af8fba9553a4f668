"""Ranking of principle sets by SI: ties with the leader and rank intervals (SI-SPEC §5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from si_toolkit.errors import SIError
from si_toolkit.estimators._bootstrap import (
    Interval,
    _batch_rows,
    _check_bootstrap_args,
    _resample_blocks,
    bootstrap_mean_ci,
)
from si_toolkit.estimators._compare import PairedComparison, paired_comparison
from si_toolkit.estimators._types import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, FloatArray


@dataclass(frozen=True)
class RankEntry:
    """One row of a ranking; delta = SI(set) − SI(leader) on their common prompts (≤ 0 mostly).

    rank_interval and p_rank1 come from `rank_uncertainty` on the prompts every set has.
    """

    rank: int
    name: str
    si: float
    si_ci: Interval
    comparison: PairedComparison | None  # None when the set shares no prompt with the leader
    tied_with_leader: bool
    rank_interval: tuple[int, int] | None = None
    p_rank1: float | None = None


def common_prompt_matrix(si_by_set: Mapping[str, Mapping[str, float]], names: Sequence[str]) -> FloatArray:
    """(n_sets, n_common) per-prompt values of `names` (rows, in that order) on the prompts they
    all have (columns, sorted by prompt id): the input of rank_uncertainty and split_half_reliability.
    """
    ids = [set(si_by_set[name]) for name in names]
    common = sorted(set.intersection(*ids)) if ids else []
    out: FloatArray = np.array([[si_by_set[name][p] for p in common] for name in names],
                               dtype=np.float64).reshape(len(names), len(common))
    return out


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
    Each entry also carries its rank interval and P(rank 1) (`rank_uncertainty` on the prompts
    all sets have, same resamples settings).
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
    ranks = rank_uncertainty(common_prompt_matrix(si_by_set, order), n_resamples=n_resamples,
                             confidence=confidence, seed=seed)
    return [replace(e, rank_interval=ranks.rank_interval[n], p_rank1=ranks.p_rank1[n])
            for n, e in enumerate(entries)]


@dataclass(frozen=True)
class RankUncertainty:
    """Bootstrap rank intervals of sets ranked by mean SI  (SI-SPEC §5); rank 1 = highest SI.

    rank_interval[s] = (low, high): the central `confidence` interval of set s's rank over the
    joint prompt resamples; p_rank1[s]: the share of resamples in which s ranks first (sets that
    tie for first in a resample all count, so the shares can sum above 1). Sets are in the order
    of the input rows. With fewer than 2 prompts nothing can be resampled: every interval is
    (1, n_sets) and p_rank1 is None.
    """

    rank_interval: tuple[tuple[int, int], ...]
    p_rank1: tuple[float | None, ...]
    n_prompts: int
    n_resamples: int
    confidence: float

    @property
    def decided(self) -> tuple[bool, ...]:
        """Per set: its rank interval has width 1 (the same rank in nearly every resample)."""
        return tuple(low == high for low, high in self.rank_interval)


def rank_uncertainty(
    per_prompt: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> RankUncertainty:
    """Rank intervals and P(rank 1) from a joint paired prompt bootstrap  (SI-SPEC §5).

    per_prompt: (n_sets, n_prompts) per-prompt SI of each set on common prompts (same column
    order for every set). Each resample draws n prompt indices with replacement from
    numpy.random.default_rng(seed) and applies them to every set together, so a hard prompt
    stays hard for all; in it the sets are ranked by mean SI (competition ranking: ties share
    the best rank). rank interval = the (1 − confidence)/2 and (1 + confidence)/2 quantiles
    (inverted-CDF, so whole ranks) of each set's ranks.
    """
    _check_bootstrap_args(n_resamples, confidence)
    values = np.asarray(per_prompt, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] < 1:
        raise ValueError(f"per_prompt must be (n_sets, n_prompts) with n_sets >= 1, got shape {values.shape}")
    n_sets, n = values.shape
    if n < 2:
        return RankUncertainty(((1, n_sets),) * n_sets, (None,) * n_sets, n, n_resamples, confidence)
    blocks = _resample_blocks(n, n_resamples, seed, _batch_rows(n, n_sets))  # rows of (B, n) indices
    means = np.concatenate([values[:, block].mean(axis=2) for block in blocks], axis=1)  # (n_sets, B)
    ranks = stats.rankdata(-means, method="min", axis=0)  # (n_sets, B); 1 = highest mean
    tail = (1.0 - confidence) / 2.0
    low = np.quantile(ranks, tail, axis=1, method="inverted_cdf")
    high = np.quantile(ranks, 1.0 - tail, axis=1, method="inverted_cdf")
    first = (ranks == 1).mean(axis=1)
    return RankUncertainty(
        tuple((int(lo), int(hi)) for lo, hi in zip(low, high, strict=True)),
        tuple(float(p) for p in first), n, n_resamples, confidence,
    )
