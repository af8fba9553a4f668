"""Paired comparison of two sets on common prompts (SI-SPEC §5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from si_toolkit.estimators._bootstrap import Interval, _bootstrap, _mean
from si_toolkit.estimators._types import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, FloatArray


@dataclass(frozen=True)
class PairedComparison:
    """ΔSI = mean_x (a(x) − b(x)) over common prompts, its CI and two-sided p-value."""

    delta: float
    ci: Interval
    p_value: float | None
    n_prompts: int


def paired_comparison(
    a: FloatArray,
    b: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of the per-prompt difference d(x) = a(x) − b(x)  (SI-SPEC §5).

    a, b: (n,) per-prompt values on the same prompts, same order. The p-value tests
    H0: E[d] = 0 by recentring the bootstrap distribution of d̄ at 0:
    p = (1 + #{b : |d̄*_b − d̄| >= |d̄|}) / (B + 1); it is 1 when d̄ = 0, None for n < 2.
    """
    aa, bb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if aa.shape != bb.shape or aa.ndim != 1 or aa.size == 0:
        raise ValueError(f"paired values must be (n,) of one length, got {aa.shape} and {bb.shape}")
    diff = aa - bb
    delta = float(diff.mean())
    ci, dist = _bootstrap([diff], _mean, n_resamples, confidence, seed)
    if dist.size == 0:
        return PairedComparison(delta, ci, None, int(diff.size))
    extreme = int(np.count_nonzero(np.abs(dist - delta) >= abs(delta)))
    return PairedComparison(delta, ci, (1 + extreme) / (dist.size + 1), int(diff.size))
