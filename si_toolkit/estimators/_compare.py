"""Paired comparison of two sets on common prompts (SI-SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from si_toolkit.estimators._bootstrap import Interval, _mean, resample
from si_toolkit.estimators._types import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, MIN_PROMPTS, FloatArray


@dataclass(frozen=True)
class PairedComparison:
    """ΔSI = mean_x (a(x) − b(x)) over common prompts, its CI and two-sided p-value.

    p_value is never below p_floor, the finest p the data resolve (1/n below MIN_PROMPTS
    prompts, else 1/B for B resamples); `p_at_floor` says that the test inversion gave a smaller
    p, so a display prints "p ≤ p_floor", not "p = p_floor".
    """

    delta: float
    ci: Interval
    p_value: float | None
    n_prompts: int
    p_floor: float = 0.0

    @property
    def p_at_floor(self) -> bool:
        """True when p_value is the resolution floor (the inverted p was at most that)."""
        return self.p_value is not None and self.p_value <= self.p_floor


def p_value_floor(n_prompts: int, n_resamples: int) -> float:
    """The smallest p-value reported for n prompts and B resamples  (SI-SPEC §5).

    1/n below MIN_PROMPTS (= 20) prompts: the data cannot resolve a finer p. Otherwise 1/B:
    a bootstrap with B resamples cannot tell p = 0 from p < 1/B.
    """
    floor = 1.0 / n_resamples
    if 0 < n_prompts < MIN_PROMPTS:
        floor = max(floor, 1.0 / n_prompts)
    return min(1.0, floor)


def paired_comparison(
    a: FloatArray,
    b: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of the per-prompt difference d(x) = a(x) − b(x)  (SI-SPEC §5).

    a, b: (n,) per-prompt values on the same prompts, same order. The CI is the prompt-level
    bootstrap interval of d̄ (BCa where defined); the two-sided p-value tests H0: E[d] = 0 by
    inverting that same interval: p = the smallest 1 − confidence at which it excludes 0, so
    "the CI excludes 0" ⇔ p < 1 − confidence. p is 1 when every d(x) = 0, None for n < 2, and
    never below `p_value_floor(n, B)`.
    """
    aa, bb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if aa.shape != bb.shape or aa.ndim != 1 or aa.size == 0:
        raise ValueError(f"paired values must be (n,) of one length, got {aa.shape} and {bb.shape}")
    diff = aa - bb
    delta = float(diff.mean())
    n = int(diff.size)
    res = resample([diff], _mean, n_resamples=n_resamples, confidence=confidence, seed=seed)
    floor = p_value_floor(n, n_resamples)
    if res is None:
        return PairedComparison(delta, Interval(None, None, "undefined"), None, n, floor)
    return PairedComparison(delta, res.interval(confidence), max(floor, res.p_value(0.0)), n, floor)
