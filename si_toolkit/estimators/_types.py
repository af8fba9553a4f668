"""Array types, shared defaults and the score-tensor check used by every estimator module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from si_toolkit.errors import SIError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.integer[Any]]
BoolArray = npt.NDArray[np.bool_]
# A vectorised statistic: statistic(*samples, axis=-1) reduces the prompt axis.
Statistic = Callable[..., Any]
IntervalMethod = Literal["BCa", "percentile", "constant", "undefined"]

DEFAULT_N_RESAMPLES = 2000  # SI-SPEC §5
DEFAULT_CONFIDENCE = 0.95  # SI-SPEC §5
# Below this (nats) a mean MI is floating-point zero or noise-negative, so a ratio of it
# (the CoT share) is undefined rather than huge.
MIN_MI_NATS = 1e-9
# SI-SPEC §5: below this many prompts the few-prompts flag is raised and no p-value finer
# than 1/n is reported.
MIN_PROMPTS = 20
_MAX_CELLS_NAMED = 5  # how many offending cells an error message lists


def _check_scores(L: FloatArray) -> FloatArray:
    """Return L as float64 after checking its shape (n, K, K, R), K >= 2, and finiteness."""
    arr = np.asarray(L, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"score tensor must have shape (n, K, K, R), got {arr.shape}")
    n, k, _, r = arr.shape
    if k < 2:
        raise SIError(f"score tensor has K = {k} variant(s); a principle set needs K >= 2")
    if n < 1 or r < 1:
        raise SIError(f"score tensor has {n} prompt(s) and {r} replicate(s); need >= 1 of each")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        cells = ", ".join(
            f"(prompt index {x}, condition {i}, variant {j}, replicate {rr})"
            for x, i, j, rr in bad[:_MAX_CELLS_NAMED]
        )
        more = f" and {len(bad) - _MAX_CELLS_NAMED} more" if len(bad) > _MAX_CELLS_NAMED else ""
        raise SIError(
            f"score tensor has {len(bad)} non-finite log-prob(s) at {cells}{more}; "
            "rerun `si score` for those prompts"
        )
    return arr
