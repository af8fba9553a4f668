"""Rank correlations: Spearman ρ with a bootstrap CI, and split-half reliability of a ranking (§5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from si_toolkit.errors import SIError
from si_toolkit.estimators._types import FloatArray

DEFAULT_N_SPLITS = 500  # random halvings averaged by split_half_reliability
# Readings of the Spearman–Brown reliability of an ordering: at or above RELIABLE the ordering
# is expected to reproduce on a fresh set of as many prompts; below UNRELIABLE it is not. 0.8 is
# the usual psychometric bar for a reliable instrument; 0.5 is where half the ordering's
# variance is noise.
RELIABLE = 0.8
UNRELIABLE = 0.5


def spearman_with_ci(x: FloatArray, y: FloatArray, *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Spearman ρ of (x, y) with a percentile bootstrap CI over the units (e.g. sets).

    x, y: (m,) paired values; pairs with a non-finite member are dropped. Returns
    {"rho": ρ, "ci": [low, high] (95 %), "n": m}. Fewer than 3 units, or a constant x or y:
    ρ is undefined (two points are always perfectly ranked), reported as None. The CI is None
    when fewer than 101 resamples have a defined ρ.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if len(xa) < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return {"rho": None, "ci": None, "n": int(len(xa))}
    rho = float(stats.spearmanr(xa, ya).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(xa), len(xa))
        if np.ptp(xa[idx]) > 0 and np.ptp(ya[idx]) > 0:
            boots.append(float(stats.spearmanr(xa[idx], ya[idx]).statistic))
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if len(boots) > 100 else None
    return {"rho": rho, "ci": ci, "n": int(len(xa))}


@dataclass(frozen=True)
class SplitHalfReliability:
    """Split-half agreement of a ranking  (SI-SPEC §5).

    rho: mean over random splits of Spearman ρ between the sets' SIs on two disjoint halves of
    the prompts; rho_sb: its Spearman–Brown correction 2ρ/(1 + ρ) (the reliability of an
    ordering on all n prompts), applied to ρ ≥ 0; a negative ρ (no reproducible ordering) is
    kept as is. Both None when undefined: fewer than 3 sets, fewer than 4 prompts, or every
    split had a half on which all sets tie.
    """

    rho: float | None
    rho_sb: float | None
    n_prompts: int
    n_sets: int
    n_splits: int  # splits with a defined ρ

    @property
    def level(self) -> str:
        """"reliable" (ρ_SB ≥ RELIABLE), "moderate", "unreliable" (< UNRELIABLE) or "undefined"."""
        if self.rho_sb is None:
            return "undefined"
        if self.rho_sb >= RELIABLE:
            return "reliable"
        return "moderate" if self.rho_sb >= UNRELIABLE else "unreliable"


def _row_ranks(values: FloatArray) -> FloatArray:
    out: FloatArray = stats.rankdata(values, axis=1)  # average ranks for ties, per row
    return out


def split_half_reliability(per_prompt: FloatArray, *, n_splits: int = DEFAULT_N_SPLITS,
                           seed: int = 0) -> SplitHalfReliability:
    """Split-half (Spearman–Brown) reliability of the ordering of sets by mean SI  (SI-SPEC §5).

    per_prompt: (n_sets, n_prompts) per-prompt SI of each set on common prompts. Each split
    permutes the prompts with numpy.random.default_rng(seed) and takes two disjoint halves of
    ⌊n/2⌋ prompts (one prompt is left out when n is odd); ρ_s = Spearman ρ between the sets'
    mean SIs on the two halves. ρ = mean_s ρ_s over splits where both halves separate the sets
    at all; ρ_SB = 2ρ / (1 + ρ) for ρ ≥ 0.
    """
    values = np.asarray(per_prompt, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"per_prompt must be (n_sets, n_prompts), got shape {values.shape}")
    if n_splits < 1:
        raise SIError(f"n_splits = {n_splits}; it must be >= 1 (default {DEFAULT_N_SPLITS})")
    n_sets, n = values.shape
    if n_sets < 3 or n < 4:
        return SplitHalfReliability(None, None, n, n_sets, 0)
    half = n // 2
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_splits, n)), axis=1)  # (n_splits, n): one permutation per split
    first = values[:, order[:, :half]].mean(axis=2).T  # (n_splits, n_sets)
    second = values[:, order[:, half:2 * half]].mean(axis=2).T
    defined = (np.ptp(first, axis=1) > 0) & (np.ptp(second, axis=1) > 0)
    if not defined.any():
        return SplitHalfReliability(None, None, n, n_sets, 0)
    ra, rb = _row_ranks(first[defined]), _row_ranks(second[defined])
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    rhos = (ra * rb).sum(axis=1) / np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))  # Pearson of ranks
    rho = float(rhos.mean())
    rho_sb = 2.0 * rho / (1.0 + rho) if rho >= 0 else rho
    return SplitHalfReliability(rho, rho_sb, n, n_sets, int(defined.sum()))


def describe_reliability(rel: SplitHalfReliability) -> str:
    """One line a reader can act on, e.g. "with 12 prompts the ordering is unreliable: ρ_SB = 0.41"."""
    if rel.rho_sb is None:
        why = (f"it needs at least 3 sets (this run has {rel.n_sets})" if rel.n_sets < 3
               else f"it needs at least 4 prompts (this run has {rel.n_prompts})" if rel.n_prompts < 4
               else "the sets tie on every half of the prompts")
        return f"The reliability of the ordering is not defined: {why}."
    words = {"reliable": "reliable", "moderate": "only moderately reliable", "unreliable": "unreliable"}
    return (f"With {rel.n_prompts} prompts the ordering is {words[rel.level]}: ρ_SB = {rel.rho_sb:.2f} "
            f"(split-half Spearman ρ = {rel.rho:.2f} over {rel.n_splits} splits; ρ_SB ≥ {RELIABLE:g} "
            f"reads as reliable, < {UNRELIABLE:g} as unreliable).")


# --------------------------------------------------------------------------------- testing a ρ

EXACT_PERMUTATION_MAX_N = 8  # 8! = 40 320 orderings: enumerate them; above, sample
DEFAULT_N_PERMUTATIONS = 20_000


def _rank_rows(values: FloatArray) -> FloatArray:
    """Average ranks along the last axis (ties share their mean rank, as scipy's spearmanr)."""
    return np.asarray(stats.rankdata(values, axis=-1), dtype=np.float64)


def _pearson_rows(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pearson r of a (…, m) against b (…, m), row by row (NaN where a row is constant)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1)), dtype=np.float64)


def _null_orderings(m: int, n_permutations: int, seed: int) -> FloatArray:
    """Orderings of m units for the permutation null: all m! of them when m is small, else a sample."""
    if m <= EXACT_PERMUTATION_MAX_N:
        import itertools

        return np.asarray(list(itertools.permutations(range(m))), dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((n_permutations, m)), axis=1)


def spearman_permutation_p(x: FloatArray, y: FloatArray, *, alternative: str = "greater",
                           n_permutations: int = DEFAULT_N_PERMUTATIONS, seed: int = 0) -> float | None:
    """Permutation p-value of Spearman ρ(x, y) under H0: y's ranks are exchangeable across units.

        p = #{orderings π : ρ(x, y_π) ≥ ρ(x, y)} / #orderings          (alternative "greater")

    Exact (all m! orderings) for m ≤ 8 units, Monte Carlo with the observed ordering counted
    otherwise (p ≥ 1/(n_permutations + 1)). "less" flips the inequality; "two-sided" compares
    |ρ|. None where ρ is undefined (fewer than 3 finite pairs, or a constant x or y).
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise SIError(f"alternative={alternative!r}: use 'greater', 'less' or 'two-sided'")
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if len(xa) < 3 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return None
    rx, ry = _rank_rows(xa), _rank_rows(ya)
    observed = float(_pearson_rows(rx, ry))
    orderings = _null_orderings(len(xa), n_permutations, seed)
    null = _pearson_rows(rx[None, :], ry[orderings])
    tol = 1e-12  # ties in ρ between orderings count as "as extreme"
    if alternative == "greater":
        hits = int(np.sum(null >= observed - tol))
    elif alternative == "less":
        hits = int(np.sum(null <= observed + tol))
    else:
        hits = int(np.sum(np.abs(null) >= abs(observed) - tol))
    if len(xa) <= EXACT_PERMUTATION_MAX_N:
        return hits / len(orderings)
    return (hits + 1) / (len(orderings) + 1)


def spearman_power(m: int, rho: float, *, alpha: float = 0.05, n_sim: int = 20_000, seed: int = 0) -> float:
    """Power of the one-sided permutation Spearman test at level α with m units, by simulation.

    Units are drawn from a bivariate normal with correlation `rho` (the population correlation
    between x and the observed outcome, measurement noise included); power is the share of
    simulated samples whose ρ exceeds the test's critical value (the (1 − α) quantile of the
    permutation null, which for continuous data does not depend on the sample).
    """
    if m < 3:
        return 0.0
    orderings = _null_orderings(m, DEFAULT_N_PERMUTATIONS, seed)
    base = np.arange(m, dtype=np.float64)
    null = _pearson_rows(base[None, :], orderings.astype(np.float64))
    # critical value: the smallest attainable ρ whose permutation p-value is ≤ α
    levels = np.unique(np.round(null, 12))
    p_of_level = np.array([np.mean(null >= level - 1e-12) for level in levels])
    significant = levels[p_of_level <= alpha]
    if not len(significant):
        return 0.0
    critical = float(significant[0])
    rng = np.random.default_rng(seed + 1)
    z1 = rng.standard_normal((n_sim, m))
    z2 = rho * z1 + np.sqrt(max(0.0, 1.0 - rho * rho)) * rng.standard_normal((n_sim, m))
    simulated = _pearson_rows(_rank_rows(z1), _rank_rows(z2))
    return float(np.mean(simulated >= critical - 1e-12))


def detectable_spearman(m: int, *, alpha: float = 0.05, power: float = 0.8, n_sim: int = 20_000,
                        seed: int = 0) -> float | None:
    """Smallest population correlation the one-sided Spearman test detects with the given power.

    Bisection on `spearman_power` over ρ ∈ [0, 1] to 0.01. None when even ρ → 1 falls short
    (too few units: with m units the smallest exact p-value is 1/m!).
    """
    if spearman_power(m, 0.999, alpha=alpha, n_sim=n_sim, seed=seed) < power:
        return None
    low, high = 0.0, 0.999
    while high - low > 0.005:
        mid = (low + high) / 2
        if spearman_power(m, mid, alpha=alpha, n_sim=n_sim, seed=seed) >= power:
            high = mid
        else:
            low = mid
    return round(high, 2)
