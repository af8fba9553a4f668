"""Steadiness of a training run, read from the trainer's ``metrics.jsonl`` (pure numpy).

A confirmatory run is judged not only by where it ends but by how it got there: a run whose
reward jumps around, whose policy entropy collapses early, or whose KL / Sinkhorn distance to
the reference keeps drifting is less trustworthy than one that converges smoothly. Each number
below is defined once, by one function, with its formula in the docstring:

- `volatility`: std of the first differences of a curve after warm-up (reward, loss).
- `slope`: least-squares slope against the step (entropy).
- `drift`: net change along the least-squares line over the run (KL, Sinkhorn).
- `collapse_step`: first step where a curve falls below a fraction of its initial value.
- `tail_mean`: mean of the last 10 % of the logged span (where the run ended up).
- `steadiness`: all of them for one run, as a frozen `Steadiness`.

Rows are dicts with a ``step`` key and metric keys (``reward_mean``, ``loss``, ``entropy``,
``kl``, ``sinkhorn``, ``frac_zero_std_groups``, ...). A metric missing from a row, or null, NaN
or infinite there, is left out of that metric's curve; a metric with too few points gives None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from si_toolkit.errors import SIError
from si_toolkit.train.logfile import read_metrics  # re-exported: steadiness reads what training logs

__all__ = [
    "DEFAULT_COLLAPSE_FRACTION",
    "DEFAULT_WARMUP_FRACTION",
    "Steadiness",
    "after_warmup",
    "collapse_step",
    "curve",
    "default_warmup_steps",
    "drift",
    "read_metrics",
    "slope",
    "steadiness",
    "tail_mean",
    "volatility",
]

FloatArray = npt.NDArray[np.float64]
Rows = Sequence[Mapping[str, Any]]

# Warm-up: the first 10 % of the logged step span, where the learning rate ramps up and the
# reward moves fastest by design; volatility there says nothing about stability.
DEFAULT_WARMUP_FRACTION = 0.1
# Entropy "collapse": the policy's mean token entropy has fallen below half its initial value.
DEFAULT_COLLAPSE_FRACTION = 0.5


# --------------------------------------------------------------------------------- reading


def curve(rows: Rows, key: str) -> tuple[FloatArray, FloatArray]:
    """(steps, values) of one metric: rows where `key` holds a finite number, in row order."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(row["step"]))
            values.append(float(value))
    return np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)


# --------------------------------------------------------------------------------- definitions


def default_warmup_steps(steps: FloatArray, fraction: float = DEFAULT_WARMUP_FRACTION) -> float:
    """w = ⌈fraction · (s_last − s_first)⌉ steps (0 for fewer than 2 steps)."""
    if steps.size < 2:
        return 0.0
    return float(math.ceil(fraction * (steps[-1] - steps[0])))


def after_warmup(steps: FloatArray, values: FloatArray, warmup_steps: float) -> tuple[FloatArray, FloatArray]:
    """The points with step >= s_first + warmup_steps."""
    if steps.size == 0:
        return steps, values
    keep = steps >= steps[0] + warmup_steps
    return steps[keep], values[keep]


def volatility(values: FloatArray) -> float | None:
    """Population std of the first differences: sqrt(mean_t (Δ_t − mean Δ)²), Δ_t = v_{t+1} − v_t.

    Differencing removes the trend, so a curve that climbs steadily has volatility 0 and one
    that zig-zags by ±a has volatility ≈ 2a. Same unit as the values, per logged step.
    None for fewer than 3 points (fewer than 2 differences).
    """
    if values.size < 3:
        return None
    return float(np.std(np.diff(values)))


def slope(steps: FloatArray, values: FloatArray) -> float | None:
    """Least-squares slope b of v ≈ a + b·s: b = Σ(s − s̄)(v − v̄) / Σ(s − s̄)². Unit: value per step.

    None for fewer than 2 points or when every point has the same step.
    """
    if steps.size < 2:
        return None
    centred = steps - steps.mean()
    denominator = float(np.sum(centred**2))
    if denominator == 0.0:
        return None
    return float(np.sum(centred * (values - values.mean())) / denominator)


def drift(steps: FloatArray, values: FloatArray) -> float | None:
    """Net change over the run along the least-squares line: b · (s_last − s_first).

    Like final − initial, but read off the fitted line, so one noisy first or last point does
    not decide it. Same unit as the values. None where `slope` is None.
    """
    b = slope(steps, values)
    return None if b is None else float(b * (steps[-1] - steps[0]))


def tail_mean(steps: FloatArray, values: FloatArray, fraction: float = DEFAULT_WARMUP_FRACTION) -> float | None:
    """Mean of the values with step >= s_last − ⌈fraction · (s_last − s_first)⌉: where the run ended up.

    Averaging the last stretch instead of taking the last point keeps one noisy step from
    deciding it. None for an empty curve.
    """
    if steps.size == 0:
        return None
    return float(values[steps >= steps[-1] - default_warmup_steps(steps, fraction)].mean())


def collapse_step(steps: FloatArray, values: FloatArray, fraction: float = DEFAULT_COLLAPSE_FRACTION) -> int | None:
    """First step s_t with v_t < fraction · v_0 (v_0 = the first logged value); None if never.

    Also None when v_0 <= 0, where a relative threshold means nothing.
    """
    if not 0.0 < fraction < 1.0:
        raise SIError(f"collapse fraction = {fraction}: must be in (0, 1) (default {DEFAULT_COLLAPSE_FRACTION})")
    if values.size == 0 or values[0] <= 0.0:
        return None
    below = np.nonzero(values < fraction * values[0])[0]
    return int(steps[below[0]]) if below.size else None


# --------------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class Steadiness:
    """Steadiness numbers of one run (None where the metric was not logged or is too short)."""

    n_steps: int  # logged rows
    warmup_steps: float  # steps dropped before the volatilities
    reward_volatility: float | None  # volatility(reward_mean after warm-up)
    loss_volatility: float | None  # volatility(loss after warm-up)
    entropy_slope: float | None  # slope(entropy), nats per step
    entropy_collapse_step: int | None  # collapse_step(entropy, collapse_fraction)
    collapse_fraction: float
    kl_drift: float | None  # drift(kl)
    sinkhorn_drift: float | None  # drift(sinkhorn)
    zero_std_fraction: float | None  # mean of frac_zero_std_groups over all rows
    final_reward: float | None  # tail_mean(reward_mean): the last 10 % of the logged span

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def steadiness(rows: Rows, *, warmup_steps: float | None = None,
               collapse_fraction: float = DEFAULT_COLLAPSE_FRACTION) -> Steadiness:
    """All steadiness numbers of one run from its metrics rows (sorted by step).

    warmup_steps: steps to drop before the volatilities; None = `default_warmup_steps`
    (10 % of the logged step span).
    """
    if not rows:
        raise SIError("the metrics file holds no rows; the run logged no step yet")
    all_steps = np.asarray([float(r["step"]) for r in rows], dtype=np.float64)
    warmup = default_warmup_steps(all_steps) if warmup_steps is None else float(warmup_steps)
    if warmup < 0:
        raise SIError(f"warmup_steps = {warmup_steps}: must be >= 0")
    reward_s, reward_v = curve(rows, "reward_mean")
    entropy_s, entropy_v = curve(rows, "entropy")
    zero_std = curve(rows, "frac_zero_std_groups")[1]
    return Steadiness(
        n_steps=len(rows),
        warmup_steps=warmup,
        reward_volatility=volatility(after_warmup(reward_s, reward_v, warmup)[1]),
        loss_volatility=volatility(after_warmup(*curve(rows, "loss"), warmup)[1]),
        entropy_slope=slope(entropy_s, entropy_v),
        entropy_collapse_step=collapse_step(entropy_s, entropy_v, collapse_fraction),
        collapse_fraction=collapse_fraction,
        kl_drift=drift(*curve(rows, "kl")),
        sinkhorn_drift=drift(*curve(rows, "sinkhorn")),
        zero_std_fraction=float(zero_std.mean()) if zero_std.size else None,
        final_reward=tail_mean(reward_s, reward_v),
    )
