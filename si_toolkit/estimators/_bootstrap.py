"""Prompt-level (cluster) bootstrap CIs of SI-SPEC §5, and the CoT share's ratio CI (§4)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from si_toolkit.errors import SIError
from si_toolkit.estimators._types import (
    DEFAULT_CONFIDENCE,
    DEFAULT_N_RESAMPLES,
    MIN_MI_NATS,
    FloatArray,
    IntervalMethod,
    Statistic,
)


@dataclass(frozen=True)
class Interval:
    """A confidence interval; low/high are None when it is undefined (fewer than 2 prompts).

    method: ``BCa``, ``percentile`` (BCa failed), ``constant`` (every prompt gives the same
    value, so every resample does) or ``undefined``.
    """

    low: float | None
    high: float | None
    method: IntervalMethod

    def contains(self, value: float) -> bool:
        """True when low <= value <= high (False when undefined)."""
        return self.low is not None and self.high is not None and self.low <= value <= self.high


_UNDEFINED = Interval(None, None, "undefined")


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise SIError(f"n_bootstrap = {n_resamples}; it must be >= 1 (default 2000)")
    if not 0.0 < confidence < 1.0:
        raise SIError(f"confidence = {confidence}; it must be in (0, 1) (default 0.95)")


def _bootstrap(
    samples: Sequence[FloatArray], statistic: Statistic, n_resamples: int, confidence: float, seed: int
) -> tuple[Interval, FloatArray]:
    """Paired prompt-level bootstrap: (CI, bootstrap distribution of the statistic)."""
    _check_bootstrap_args(n_resamples, confidence)
    arrays = tuple(np.asarray(s, dtype=np.float64) for s in samples)
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError("bootstrap samples must be 1-D arrays of one length (one value per prompt)")
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic(*arrays, axis=-1))
    if arrays[0].shape[0] < 2 or not math.isfinite(point):
        return _UNDEFINED, np.empty(0)
    if all(np.ptp(a) == 0 for a in arrays):
        # Every resample equals the point estimate; BCa's acceleration would be 0/0.
        return Interval(point, point, "constant"), np.full(n_resamples, point)
    distribution = np.empty(0)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("error", stats.DegenerateDataWarning)
            try:
                res = stats.bootstrap(
                    arrays, statistic, n_resamples=n_resamples, confidence_level=confidence,
                    method=method, paired=True, vectorized=True, rng=np.random.default_rng(seed),
                )
            except stats.DegenerateDataWarning:
                continue  # BCa undefined for these data: fall back to the percentile interval
        distribution = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return Interval(low, high, "BCa" if method == "BCa" else "percentile"), distribution
    return _UNDEFINED, distribution


def bootstrap_ci(
    samples: Sequence[FloatArray],
    statistic: Statistic,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Prompt-level (cluster) bootstrap CI of statistic(*samples)  (SI-SPEC §5).

    samples: arrays of shape (n,), one value per prompt, resampled together (paired).
    statistic: vectorised, statistic(*samples, axis=-1). BCa where defined, else percentile;
    resamples drawn from numpy.random.default_rng(seed), so equal seeds give equal CIs.
    """
    return _bootstrap(samples, statistic, n_resamples, confidence, seed)[0]


def _mean(values: FloatArray, axis: int = -1) -> FloatArray:
    out: FloatArray = np.mean(values, axis=axis)
    return out


def bootstrap_mean_ci(
    values: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """CI of the mean over prompts of per-prompt values (n,)  (SI-SPEC §5)."""
    return bootstrap_ci([values], _mean, n_resamples=n_resamples, confidence=confidence, seed=seed)


@dataclass(frozen=True)
class Ratio:
    """A ratio of means with its CI; value None when the denominator is ~0 or negative."""

    value: float | None
    ci: Interval


def _ratio_of_means(num: FloatArray, den: FloatArray, axis: int = -1) -> FloatArray:
    out: FloatArray = np.mean(num, axis=axis) / np.mean(den, axis=axis)
    return out


def cot_share(
    mi_cot: FloatArray,
    mi_full: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Ratio:
    """CoT share = mean_x Î_col(cot)(x) / mean_x Î_col(full)(x)  (SI-SPEC §4), unitless.

    mi_cot, mi_full: (n,) per-prompt MI in nats on the same prompts. A ratio of means (not a
    mean of ratios, which per-prompt MI near 0 would blow up), with a paired bootstrap CI.
    Undefined (None) when the mean full-span MI is below MIN_MI_NATS.
    """
    cot = np.asarray(mi_cot, dtype=np.float64)
    full = np.asarray(mi_full, dtype=np.float64)
    if cot.shape != full.shape or cot.ndim != 1:
        raise ValueError(f"mi_cot {cot.shape} and mi_full {full.shape} must be (n,) of one length")
    if full.size == 0 or float(full.mean()) < MIN_MI_NATS:
        return Ratio(None, _UNDEFINED)
    ci = bootstrap_ci(
        [cot, full], _ratio_of_means, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return Ratio(float(cot.mean() / full.mean()), ci)
