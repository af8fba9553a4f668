"""The trainer from Python: `train(principles, **config)` with the config keys of `si train --set`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from si_toolkit.principles import PrincipleSet, load_principle_set

__all__ = ["TrainRun", "train"]


@dataclass(frozen=True)
class TrainRun:
    """A finished training run: its folder, final checkpoint, every checkpoint and the metrics.

    metrics : pandas.DataFrame, one row per step (metrics.jsonl of the run folder, all of it,
        including steps logged before a resume).
    """

    out_dir: Path
    last_step: int
    checkpoint: Path

    @property
    def checkpoints(self) -> list[Path]:
        return sorted(self.out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))

    @property
    def metrics(self) -> Any:
        import pandas as pd

        from si_toolkit.train.logfile import read_metrics

        return pd.DataFrame(read_metrics(self.out_dir / "metrics.jsonl"))


def train(principles: str | Path | PrincipleSet | dict[str, Any], *, out: str | Path | None = None,
          resume: bool = False, config: str | Path | None = None, **options: Any) -> TrainRun:
    """Train with GRPO + SAMI + Sinkhorn (ENIGMA) on one principle set; returns the run.

    principles : a principle-set YAML path, a `PrincipleSet` or a mapping with the YAML keys.
    out : the run folder (default ``reports/train-<set>-<preset>``); ``resume=True`` continues it.
    config : an optional training-config YAML; ``options`` override it, with the keys that
        ``si train --help-config`` lists (e.g. ``preset="grpo"``, ``max_steps=50``, ``model=...``).
    """
    from si_toolkit.train.config import load_train_config
    from si_toolkit.train.trainer import train as run_trainer

    if isinstance(principles, PrincipleSet):
        principle_set = principles
    elif isinstance(principles, dict):
        principle_set = PrincipleSet.from_dict(principles)
    else:
        principle_set = load_principle_set(principles)
    cfg = load_train_config(Path(config) if config else None, options)
    folder = Path(out) if out else Path("reports") / f"train-{principle_set.name}-{cfg.preset}"
    result = run_trainer(cfg, principle_set, folder, resume=resume)
    return TrainRun(out_dir=result.out_dir, last_step=result.last_step, checkpoint=result.checkpoint)
