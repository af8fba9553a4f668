"""The lm-evaluation-harness bridge of `si eval`: standard benchmarks run with identical settings.

`run_harness` calls `lm_eval.simple_evaluate` (extra ``[eval]``) on a local model folder, offline,
with per-sample logs; `compare_harness` gives A − B for every numeric metric with a paired
bootstrap CI over the documents both runs logged. Definitions: docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from si_toolkit.errors import SIError
from si_toolkit.estimators import paired_comparison

__all__ = [
    "HarnessConfig",
    "compare_harness",
    "harness_item_scores",
    "harness_model_args",
    "parse_tasks",
    "require_harness",
    "run_harness",
]

_HARNESS_INSTALL = "install it with `pip install 'si-toolkit[eval]'` (lm-eval[hf])"
# Words in the errors `datasets` / `huggingface_hub` raise when offline data is not cached.
_MISSING_DATA_HINTS = ("offline", "couldn't reach", "localentrynotfound", "datasetnotfound", "not found in cache",
                       "couldn't find", "connectionerror")


@dataclass(frozen=True)
class HarnessConfig:
    """Settings of an lm-evaluation-harness run; the same object is used for base and trained."""

    tasks: tuple[str, ...] = field(metadata={"help": "Harness task names, e.g. ('gsm8k', 'arc_easy')."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples (None = the task's default)."})
    batch_size: int = field(default=8, metadata={"help": "Harness batch size (>= 1)."})
    limit: int | None = field(default=None, metadata={"help": "Documents per task (testing only; None = all)."})
    apply_chat_template: bool = field(default=False, metadata={"help": "Render requests with the model's chat template."})
    dtype: str = field(default="bfloat16", metadata={"help": "float32, bfloat16 (default, as `si rank`) or float16 weights."})
    seed: int = field(default=0, metadata={"help": "Python, numpy, torch and few-shot sampling seeds."})

    def __post_init__(self) -> None:
        if not self.tasks or any(not t.strip() for t in self.tasks):
            raise SIError(f"--harness {','.join(self.tasks)!r}: give task names, e.g. --harness gsm8k,arc_easy")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise SIError("--harness-batch-size and --harness-limit must be >= 1")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise SIError(f"--dtype {self.dtype!r}: use float32, bfloat16 or float16")


def parse_tasks(text: str) -> tuple[str, ...]:
    """'gsm8k, arc_easy' → ('gsm8k', 'arc_easy')."""
    return tuple(t for t in (part.strip() for part in text.replace(" ", ",").split(",")) if t)


def require_harness() -> None:
    """SIError with the install command when lm-evaluation-harness is not importable."""
    import importlib.util
    import sys

    # an already imported lm_eval counts as present (find_spec would look at its __spec__)
    if sys.modules.get("lm_eval") is None and importlib.util.find_spec("lm_eval") is None:
        raise SIError(f"--harness needs lm-evaluation-harness (the `lm_eval` package), which is not installed; {_HARNESS_INSTALL}")


def harness_model_args(model_path: str, config: HarnessConfig, *, trust_remote_code: bool = False) -> str:
    """The `model_args` string of the harness's `hf` model: the local folder and the dtype."""
    return f"pretrained={model_path},dtype={config.dtype}" + (",trust_remote_code=True" if trust_remote_code else "")


def run_harness(model_ref: str, config: HarnessConfig, *, device: str = "auto", trust_remote_code: bool = False) -> dict[str, Any]:
    """`lm_eval.simple_evaluate(model="hf", ...)` on a local model, offline, with per-sample logs.

    Task data must already be in the local Hugging Face datasets cache: HF_DATASETS_OFFLINE and
    HF_HUB_OFFLINE default to 1 here, so nothing is downloaded and a missing dataset raises an
    SIError saying how to fill the cache. Returns the harness's result dict.
    """
    import os

    from si_toolkit.models import resolve_model

    require_harness()
    resolved = resolve_model(model_ref)
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a run must never hang on a hub request
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval  # type: ignore[import-not-found]
    import torch

    _check_task_names(config.tasks)
    try:
        results = lm_eval.simple_evaluate(
            model="hf", model_args=harness_model_args(resolved.path, config, trust_remote_code=trust_remote_code),
            tasks=list(config.tasks), num_fewshot=config.num_fewshot, batch_size=config.batch_size,
            device=("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device,
            limit=config.limit, log_samples=True, apply_chat_template=config.apply_chat_template,
            random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed,
            fewshot_random_seed=config.seed,
        )
    except Exception as err:  # noqa: BLE001 - classify the offline-data failure, re-raise the rest
        text = (" ".join(c.__name__ for c in type(err).__mro__) + f" {err}").lower()
        if any(hint in text for hint in _MISSING_DATA_HINTS):
            tasks = ",".join(config.tasks)
            raise SIError(
                f"lm-evaluation-harness could not load the data of task(s) {tasks} from the local Hugging Face "
                f"datasets cache (offline mode: {str(err).splitlines()[0][:200]}); fill the cache once on a connected "
                f"machine with `HF_DATASETS_OFFLINE=0 lm-eval run --model hf --model_args pretrained=<folder> --tasks "
                f"{tasks} --limit 1` and copy its ~/.cache/huggingface (or $HF_HOME) here"
            ) from None
        raise
    return dict(results or {})  # None on non-zero ranks of a distributed run


def _check_task_names(tasks: Sequence[str]) -> None:
    from lm_eval.tasks import TaskManager  # type: ignore[import-not-found]

    known = set(getattr(TaskManager(), "all_tasks", []) or [])
    unknown = [t for t in tasks if known and t not in known]
    if unknown:
        raise SIError(f"--harness: unknown task(s) {unknown}; list the tasks with `lm-eval ls tasks`")


def harness_item_scores(results: dict[str, Any], task: str, metric_key: str) -> dict[str, float]:
    """Per-document values of one harness metric from the logged samples: {doc_id: value}.

    `metric_key` is the results key ``metric,filter`` (e.g. ``exact_match,strict-match``); only
    samples of that filter count (samples without a ``filter`` field count for every filter).
    """
    metric, _, wanted = metric_key.partition(",")
    out = {}
    for row in results.get("samples", {}).get(task, []):
        if wanted and row.get("filter", wanted) != wanted:
            continue
        value = row.get(metric)
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[str(row["doc_id"])] = float(value)
    return out


def compare_harness(a: dict[str, Any], b: dict[str, Any], *, n_resamples: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """A − B for every numeric harness metric both runs report, with a paired bootstrap CI.

    ``delta`` is the difference of the harness's own aggregates; ``delta_ci`` and ``p_value``
    come from `estimators.paired_comparison` on the per-document values of the documents both
    runs logged (None when fewer than 2), i.e. they are about the per-document mean difference.
    """
    rows = []
    for task, metrics in sorted(a.get("results", {}).items()):
        other = b.get("results", {}).get(task, {})
        for key, value in metrics.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if "_stderr" in key or not numeric or not isinstance(other.get(key), (int, float)):
                continue
            row: dict[str, Any] = {"task": task, "metric": key, "a": float(value), "b": float(other[key]),
                                   "delta": float(value) - float(other[key]), "delta_ci": None, "p_value": None,
                                   "n_paired": 0}
            sa, sb = harness_item_scores(a, task, key), harness_item_scores(b, task, key)
            common = sorted(set(sa) & set(sb))
            if len(common) >= 2:
                res = paired_comparison(np.array([sa[i] for i in common]), np.array([sb[i] for i in common]),
                                        n_resamples=n_resamples, seed=seed)
                row.update(delta_ci=None if res.ci.low is None else [res.ci.low, res.ci.high],
                           p_value=res.p_value, n_paired=len(common))
            rows.append(row)
    return rows
