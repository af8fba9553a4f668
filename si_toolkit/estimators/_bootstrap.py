"""Prompt-level (cluster) bootstrap CIs of SI-SPEC §5, and the CoT share's ratio CI (§4)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

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

    def to_list(self) -> list[float] | None:
        """[low, high] as estimates.json stores it, or None when undefined."""
        return None if self.low is None or self.high is None else [self.low, self.high]


_UNDEFINED = Interval(None, None, "undefined")
_MAX_CELLS_PER_BATCH = 4_000_000  # resampled values held at once (32 MB of float64)
IndexArray = npt.NDArray[np.int64]


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise SIError(f"n_bootstrap = {n_resamples}; it must be >= 1 (default 2000)")
    if not 0.0 < confidence < 1.0:
        raise SIError(f"confidence = {confidence}; it must be in (0, 1) (default 0.95)")


@dataclass(frozen=True)
class Resampled:
    """A bootstrap distribution and the BCa constants that turn it into intervals and p-values.

    distribution: (B,) sorted values of the statistic on the prompt resamples. z0 (bias) and
    accel (acceleration, from the jackknife) define the BCa levels (Efron & Tibshirani 1993,
    §14.3, eq. 14.10); both are 0 for the percentile method. One object gives the interval at
    any level (`interval`) and the p-value that inverts it (`p_value`), so the two agree.
    """

    point: float
    distribution: FloatArray
    z0: float
    accel: float
    method: IntervalMethod

    def _level(self, beta: float) -> float:
        """BCa level α(β) = Φ(z0 + (z0 + z_β) / (1 − a (z0 + z_β))), monotone in β.

        Past the pole 1 − a (z0 + z_β) = 0 (reached only for extreme β) the level is clamped
        to the limit on the principal branch (1 for a > 0, 0 for a < 0), keeping it monotone.
        """
        if self.method != "BCa":
            return beta
        t = self.z0 + float(special.ndtri(beta))
        denom = 1.0 - self.accel * t
        if denom <= 0.0:
            return 1.0 if self.accel > 0 else 0.0
        return float(special.ndtr(self.z0 + t / denom))

    def _level_inverse(self, u: float) -> float:
        """sup{β : α(β) <= u}, the inverse of `_level` (its range ends where u is outside it)."""
        if self.method != "BCa":
            return u
        if u >= 1.0:
            return 1.0
        if u <= 0.0:  # α(β) = 0 only on the clamped part below the pole (a < 0)
            return float(special.ndtr(1.0 / self.accel - self.z0)) if self.accel < 0 else 0.0
        w = float(special.ndtri(u)) - self.z0
        denom = 1.0 + self.accel * w
        if denom <= 0.0:  # u lies below (a > 0) or above (a < 0) every level the branch reaches
            return 0.0 if self.accel > 0 else 1.0
        return float(special.ndtr(w / denom - self.z0))

    def interval(self, confidence: float) -> Interval:
        """The two-sided interval [Q(α(γ/2)), Q(α(1 − γ/2))], γ = 1 − confidence (type-7 quantiles)."""
        if self.method == "constant":
            return Interval(self.point, self.point, "constant")
        gamma = 1.0 - confidence
        levels = [self._level(gamma / 2.0), self._level(1.0 - gamma / 2.0)]
        low, high = (float(q) for q in np.quantile(self.distribution, levels))
        return Interval(low, high, self.method)

    def p_value(self, null: float = 0.0) -> float:
        """Two-sided p-value by test inversion: the smallest γ = 1 − confidence whose interval
        excludes `null`, so `interval(c)` excludes it exactly when p < 1 − c.

        With β_L = sup{β : Q(β) <= null} and β_U = inf{β : Q(β) >= null} on the quantile
        function Q of the bootstrap distribution, the lower end exceeds `null` iff
        γ/2 > α⁻¹(β_L) and the upper end falls below it iff γ/2 > 1 − α⁻¹(β_U), so
        p = 2 min(α⁻¹(β_L), 1 − α⁻¹(β_U)), capped at 1.
        """
        if self.method == "constant":
            return 1.0 if self.point == null else 0.0
        beta_low, beta_high = _crossing_levels(self.distribution, null)
        p = 2.0 * min(self._level_inverse(beta_low), 1.0 - self._level_inverse(beta_high))
        return float(min(1.0, max(0.0, p)))


def _crossing_levels(x: FloatArray, null: float) -> tuple[float, float]:
    """(β_L, β_U): where the type-7 quantile function of sorted x leaves ≤ null and reaches ≥ null.

    Q(β) interpolates x linearly at h = β (B − 1). β_L = sup{β : Q(β) ≤ null} (0 when
    x_0 > null), β_U = inf{β : Q(β) ≥ null} (1 when x_{B−1} < null).
    """
    b = x.size
    if b == 1:
        return (1.0 if x[0] <= null else 0.0), (0.0 if x[0] >= null else 1.0)
    below = int(np.count_nonzero(x <= null))  # x[:below] <= null < x[below:]
    if below == 0:
        beta_low = 0.0
    elif below == b:
        beta_low = 1.0
    else:
        lo, hi = x[below - 1], x[below]
        beta_low = (below - 1 + (null - lo) / (hi - lo)) / (b - 1)
    under = int(np.count_nonzero(x < null))  # x[:under] < null <= x[under:]
    if under == 0:
        beta_high = 0.0
    elif under == b:
        beta_high = 1.0
    else:
        lo, hi = x[under - 1], x[under]
        beta_high = (under - 1 + (null - lo) / (hi - lo)) / (b - 1)
    return float(beta_low), float(beta_high)


def _batch_rows(n_columns: int, n_arrays: int) -> int:
    return max(1, _MAX_CELLS_PER_BATCH // max(1, n_columns * n_arrays))


def _apply(statistic: Statistic, arrays: tuple[FloatArray, ...], blocks: Iterator[IndexArray]) -> FloatArray:
    """statistic on every row of every block of prompt indices (blocks bound the memory used)."""
    parts = []
    for block in blocks:
        with np.errstate(divide="ignore", invalid="ignore"):
            parts.append(np.asarray(statistic(*(a[block] for a in arrays), axis=-1), dtype=np.float64))
    return np.concatenate(parts)


def _resample_blocks(n: int, n_resamples: int, seed: int, rows: int) -> Iterator[IndexArray]:
    """Rows of n prompt indices drawn with replacement; drawing in blocks gives the same stream."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, rows):
        yield rng.integers(0, n, (min(rows, n_resamples - start), n))


def _jackknife_blocks(n: int, rows: int) -> Iterator[IndexArray]:
    """Row i holds the n − 1 prompt indices other than i."""
    cols = np.arange(n - 1)
    for start in range(0, n, rows):
        left_out = np.arange(start, min(n, start + rows))[:, None]
        yield cols[None, :] + (cols[None, :] >= left_out)


def _bca_constants(point: float, dist: FloatArray, statistic: Statistic,
                   arrays: tuple[FloatArray, ...]) -> tuple[float, float]:
    """(z0, a): bias from the share of resamples below the estimate, acceleration from the jackknife.

    z0 = Φ⁻¹((#{θ*_b < θ̂} + #{θ*_b <= θ̂}) / 2B); a = Σ U³ / (6 (Σ U²)^{3/2}) with
    U_i = (n − 1)(mean_k θ̂_(k) − θ̂_(i)) over the leave-one-prompt-out estimates θ̂_(i).
    """
    share = (np.count_nonzero(dist < point) + np.count_nonzero(dist <= point)) / (2.0 * dist.size)
    z0 = float(special.ndtri(share))
    n = arrays[0].size
    jack = _apply(statistic, arrays, _jackknife_blocks(n, _batch_rows(n, len(arrays))))
    u = (n - 1) * (jack.mean() - jack)
    with np.errstate(divide="ignore", invalid="ignore"):
        accel = float((u**3).sum() / (6.0 * (u**2).sum() ** 1.5))
    return z0, accel


def resample(
    samples: Sequence[FloatArray], statistic: Statistic, *, n_resamples: int, confidence: float, seed: int
) -> Resampled | None:
    """Paired prompt-level bootstrap of statistic(*samples); None when undefined (< 2 prompts).

    Resample i draws n prompt indices with replacement from numpy.random.default_rng(seed)
    (the same draws as scipy.stats.bootstrap with paired=True), applied to every sample.
    BCa where its constants are finite, else the percentile method.
    """
    _check_bootstrap_args(n_resamples, confidence)
    arrays = tuple(np.asarray(s, dtype=np.float64) for s in samples)
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError("bootstrap samples must be 1-D arrays of one length (one value per prompt)")
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic(*arrays, axis=-1))
    n = arrays[0].shape[0]
    if n < 2 or not math.isfinite(point):
        return None
    if all(np.ptp(a) == 0 for a in arrays):
        # Every resample equals the point estimate; BCa's acceleration would be 0/0.
        return Resampled(point, np.full(n_resamples, point), 0.0, 0.0, "constant")
    blocks = _resample_blocks(n, n_resamples, seed, _batch_rows(n, len(arrays)))
    dist = np.sort(_apply(statistic, arrays, blocks))
    if not np.isfinite(dist).all():
        return None
    z0, accel = _bca_constants(point, dist, statistic, arrays)
    if math.isfinite(z0) and math.isfinite(accel):
        return Resampled(point, dist, z0, accel, "BCa")
    return Resampled(point, dist, 0.0, 0.0, "percentile")  # BCa undefined for these data


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
    res = resample(samples, statistic, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return _UNDEFINED if res is None else res.interval(confidence)


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
    Undefined (None) when the mean full-span MI is below MIN_MI_NATS, and when mi_full equals
    mi_cot on every prompt: the answer span is then empty (L_full = L_cot + 0), so the "share"
    would read 1 [1, 1] although there is no answer to compare the reasoning with.
    """
    cot = np.asarray(mi_cot, dtype=np.float64)
    full = np.asarray(mi_full, dtype=np.float64)
    if cot.shape != full.shape or cot.ndim != 1:
        raise ValueError(f"mi_cot {cot.shape} and mi_full {full.shape} must be (n,) of one length")
    if full.size == 0 or float(full.mean()) < MIN_MI_NATS or np.array_equal(cot, full):
        return Ratio(None, _UNDEFINED)
    ci = bootstrap_ci(
        [cot, full], _ratio_of_means, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return Ratio(float(cot.mean() / full.mean()), ci)
