"""Training metrics: weighted means across micro-batches and processes, metrics.jsonl, TensorBoard.

Every logged number is a weighted mean Σ w·v / Σ w accumulated by `StatSums` on each process
and summed over processes, so one process and N processes with the same global batch log the
same values. The weights are the counts that make the mean the global one: active tokens
for per-token statistics (entropy, KL, clip fractions), the term's own normalisation for loss
terms (see trainer._term_weights).

`MetricsLog` appends one JSON object per step to OUT/metrics.jsonl (each line is flushed and
fsynced; on resume the rows after the checkpoint's step are dropped by rewriting the file
atomically) and mirrors scalars to TensorBoard when the `tensorboard` package is installed
(when it is not, one warning says so).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from si_toolkit.safeio import atomic_write_text
from si_toolkit.train.distributed import DistContext, all_reduce_sum

__all__ = ["MetricsLog", "StatSums", "health_warnings", "rollout_stats"]

# Metrics that depend on wall time; they differ between otherwise identical runs.
TIMING_KEYS = frozenset({"step_time", "generation_time", "tokens_per_s"})


class StatSums:
    """Weighted sums Σ w·v and Σ w per name; `reduce` sums them over processes."""

    def __init__(self) -> None:
        self._sums: dict[str, list[float]] = {}

    def add(self, name: str, value: float, weight: float) -> None:
        entry = self._sums.setdefault(name, [0.0, 0.0])
        entry[0] += float(value) * float(weight)
        entry[1] += float(weight)

    def reduce(self, ctx: DistContext) -> dict[str, float]:
        """Global weighted means (NaN where the total weight is 0). Every rank must call it with the
        same names in the same order, hence the sorted keys."""
        names = sorted(self._sums)
        if not names:
            return {}
        local = torch.tensor([self._sums[n] for n in names], dtype=torch.float64)  # (n, 2)
        total = all_reduce_sum(local, ctx)
        return {n: (float(s / w) if w > 0 else math.nan) for n, (s, w) in zip(names, total.tolist())}


def rollout_stats(rewards: np.ndarray, strict: np.ndarray, graded: np.ndarray, lengths: np.ndarray,
                  truncated: np.ndarray, num_generations: int) -> dict[str, float]:
    """Reward and completion statistics of a whole step (arrays over all completions, group-major).

    frac_zero_std_groups is TRL's frac_reward_zero_std: the share of groups whose rewards are all
    equal (std < 1e-6), which get zero advantage and no policy-gradient signal.
    """
    groups = rewards.reshape(-1, num_generations)  # (n_groups, G)
    return {
        "reward_mean": float(np.nanmean(rewards)),
        "reward_std": float(np.nanstd(rewards)),
        "format_rate": float(strict.mean()),
        "graded_format_mean": float(graded.mean()),
        "frac_zero_std_groups": float((np.nanstd(groups, axis=1) < 1e-6).mean()),
        "completion_length_mean": float(lengths.mean()),
        "completion_length_min": float(lengths.min()),
        "completion_length_max": float(lengths.max()),
        "truncated_ratio": float(truncated.mean()),
    }


def health_warnings(row: dict[str, Any], *, entropy_warn: float, zero_std_warn: float) -> list[str]:
    """Human-readable warnings for a metrics row: entropy collapse, no reward variance."""
    out = []
    entropy = row.get("entropy", math.nan)
    if math.isfinite(entropy) and entropy < entropy_warn:
        out.append(f"mean token entropy {entropy:.3f} nats < {entropy_warn:g}: the policy is collapsing "
                   "(lower learning_rate, raise lambda_ot or beta)")
    zero = row.get("frac_zero_std_groups", math.nan)
    if math.isfinite(zero) and zero > zero_std_warn:
        out.append(f"{zero:.0%} of groups have zero reward std (no GRPO signal; only the auxiliary terms "
                   "move the policy): use a graded or richer reward, or raise num_generations")
    return out


class MetricsLog:
    """Append-only metrics.jsonl (+ TensorBoard) of one run; only the main process writes."""

    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

                self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
            except ImportError:
                warnings.warn(
                    "tensorboard=true, but the tensorboard package is not installed: no TensorBoard events are "
                    f"written (every metric is still in {self.path}); pip install tensorboard, or set "
                    "tensorboard=false to silence this",
                    UserWarning,
                    stacklevel=2,
                )

    def truncate_after(self, step: int) -> None:
        """Drop rows with step > `step` (a run killed after logging but before checkpointing)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_jsonable(row)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> float:
    """The step of a metrics line; a torn line (a kill mid-write) or a blank one counts as +inf (dropped)."""
    try:
        return float(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return math.inf


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf become None: JSON has no such numbers."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
