"""The lm-evaluation-harness bridge of `si eval`: standard or local benchmarks, identical settings.

`resolve_tasks` checks every task before anything runs: a name must be registered in lm-eval
or in the ``--harness-include-path`` folder, a ``.yaml`` path must be a task file, and a local
task's data files must exist. `run_harness` calls `lm_eval.simple_evaluate` (extra ``[eval]``)
on a local model folder, offline, with per-sample logs; `compare_harness` gives A − B for every
metric with a paired bootstrap CI over the documents both runs logged. Definitions:
docs/evaluation.md.
"""

from __future__ import annotations

import difflib
import glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from si_toolkit.errors import SIError
from si_toolkit.estimators import paired_comparison
from si_toolkit.safeio import read_yaml_mapping

__all__ = [
    "HarnessConfig",
    "compare_harness",
    "harness_item_scores",
    "harness_metrics",
    "harness_model_args",
    "is_task_file",
    "parse_tasks",
    "require_harness",
    "resolve_tasks",
    "run_harness",
    "task_registry",
]

_HARNESS_INSTALL = "install it with `pip install 'si-toolkit[eval]'` (lm-eval[hf])"
# Words in the errors `datasets` / `huggingface_hub` raise when offline data is not cached.
_MISSING_DATA_HINTS = ("offline", "couldn't reach", "localentrynotfound", "datasetnotfound", "not found in cache",
                       "couldn't find", "connectionerror")
# `datasets` builders that read local files named in `dataset_kwargs.data_files`.
_LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
_LOCAL_TASK_HINT = ("a task of your own: pass its YAML file (--harness path/to/task.yaml) or the folder holding it "
                    "(--harness-include-path DIR)")


@dataclass(frozen=True)
class HarnessConfig:
    """Settings of an lm-evaluation-harness run; the same object is used for base and trained."""

    tasks: tuple[str, ...] = field(metadata={"help": "Task names or task YAML files, e.g. ('gsm8k', 'tasks/sums.yaml')."})
    include_path: str | None = field(default=None, metadata={
        "help": "A folder of task YAML files (searched recursively) whose tasks `tasks` may name; None = lm-eval's own."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples (None = the task's default)."})
    batch_size: int = field(default=8, metadata={"help": "Harness batch size (>= 1)."})
    limit: int | None = field(default=None, metadata={"help": "Documents per task (testing only; None = all)."})
    apply_chat_template: bool = field(default=False, metadata={"help": "Render requests with the model's chat template."})
    dtype: str = field(default="bfloat16", metadata={"help": "float32, bfloat16 (default, as `si rank`) or float16 weights."})
    seed: int = field(default=0, metadata={"help": "Python, numpy, torch and few-shot sampling seeds."})

    def __post_init__(self) -> None:
        if not self.tasks or any(not t.strip() for t in self.tasks):
            raise SIError(f"--harness {','.join(self.tasks)!r}: give task names or task YAML files, e.g. --harness gsm8k,arc_easy")
        if self.include_path is not None and not self.include_path.strip():
            raise SIError("--harness-include-path is empty; give the folder that holds your task YAML files")
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


def is_task_file(spec: str) -> bool:
    """True when a --harness entry names a task YAML file rather than a registered task."""
    return spec.lower().endswith((".yaml", ".yml"))


def _read_task_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a task YAML file (SIError naming the file when it is not one)."""
    data = read_yaml_mapping(path, "lm-eval task", tags_as_text=True)  # `!function` entries stay text
    if not isinstance(data.get("task", data.get("group")), str):
        raise SIError(f"--harness {path}: not an lm-eval task file (no top-level 'task: NAME' or 'group: NAME'); "
                      "see the task format in docs/evaluation.md")
    return data


def _check_data_files(path: Path, cfg: dict[str, Any]) -> None:
    """Every local file pattern in a task's ``dataset_kwargs.data_files`` must match a file."""
    kwargs = cfg.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    if cfg.get("dataset_path") not in _LOCAL_BUILDERS or files is None:
        return
    values = files.values() if isinstance(files, dict) else [files]
    patterns = [p for v in values for p in ([v] if isinstance(v, str) else v if isinstance(v, list) else [])]
    for pattern in patterns:
        if "://" not in pattern and not glob.glob(os.path.expanduser(pattern)):
            raise SIError(f"{path}: dataset_kwargs.data_files names {pattern!r}, which does not exist (relative "
                          f"paths count from the folder you run si eval in, {Path.cwd()}); fix the path in the task file")


def _offline() -> None:
    """HF_DATASETS_OFFLINE and HF_HUB_OFFLINE default to 1 (read by `datasets` when it is first imported)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a run must never hang on a hub request
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def task_registry(config: HarnessConfig, metadata: dict[str, Any] | None = None) -> Any:
    """lm-eval's `TaskManager` over its own tasks plus `config.include_path` (indexing takes a few seconds)."""
    require_harness()
    if config.include_path is not None and not Path(config.include_path).is_dir():
        raise SIError(f"--harness-include-path {config.include_path}: no such folder; give the folder that holds "
                      "your task YAML files")
    _offline()
    from lm_eval.tasks import TaskManager  # type: ignore[import-not-found]

    return TaskManager(include_path=config.include_path, metadata=metadata)


def resolve_tasks(config: HarnessConfig, registry: Any = None) -> tuple[str, ...]:
    """Check every task of `config` before any model runs; return the specs to hand to lm-eval.

    A ``.yaml``/``.yml`` entry must be a task (or group) file and is returned as an absolute
    path; any other entry must be a name registered in lm-eval or in `config.include_path`.
    For tasks defined by a file of the user's (a path, or a file in the include path), local
    ``data_files`` must exist. `registry` is a `task_registry` (built here when needed).
    """
    require_harness()
    specs = []
    for spec in config.tasks:
        if is_task_file(spec):
            path = Path(spec).expanduser().resolve()
            if not path.is_file():
                raise SIError(f"--harness {spec}: no such task file; give the path of an lm-eval task YAML")
            _check_data_files(path, _read_task_yaml(path))
            specs.append(str(path))
        else:
            specs.append(spec)
    names = [s for s in specs if not is_task_file(s)]
    if names:
        registry = registry if registry is not None else task_registry(config)
        known = set(registry.all_tasks)
        for name in names:
            if name not in known:
                raise SIError(_unknown_task_message(name, sorted(known), config.include_path))
            entry = registry.task_index.get(name)
            yaml_path = getattr(entry, "yaml_path", None)
            if config.include_path and yaml_path and Path(config.include_path).resolve() in Path(yaml_path).resolve().parents:
                _check_data_files(Path(yaml_path), _read_task_yaml(Path(yaml_path)))
    return tuple(specs)


def _unknown_task_message(name: str, known: list[str], include_path: str | None) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
    where = f"lm-eval's tasks or --harness-include-path {include_path}" if include_path else "lm-eval's tasks"
    guess = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return (f"--harness: unknown task {name!r} (not in {where}); {guess}for {_LOCAL_TASK_HINT}; "
            "list the registered tasks with `lm-eval ls tasks`")


def run_harness(model_ref: str, config: HarnessConfig, *, device: str = "auto", trust_remote_code: bool = False) -> dict[str, Any]:
    """`lm_eval.simple_evaluate(model="hf", ...)` on a local model, offline, with per-sample logs.

    Task data must be local (a task's ``data_files``) or already in the local Hugging Face
    datasets cache: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE default to 1 here, so nothing is
    downloaded and a missing dataset raises an SIError saying how to fill the cache. Returns the
    harness's result dict.
    """
    from si_toolkit.models import resolve_model

    require_harness()
    _offline()  # before lm_eval (and with it `datasets`) is first imported
    resolved = resolve_model(model_ref)
    model_args = harness_model_args(resolved.path, config, trust_remote_code=trust_remote_code)
    # the registry simple_evaluate would build itself (model_args as task metadata), plus the include path
    from lm_eval.utils import simple_parse_args_string  # type: ignore[import-not-found]

    registry = task_registry(config, metadata=simple_parse_args_string(model_args))
    tasks = resolve_tasks(config, registry)
    import lm_eval
    import torch

    try:
        results = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=list(tasks), task_manager=registry,
            num_fewshot=config.num_fewshot, batch_size=config.batch_size,
            device=("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device,
            limit=config.limit, log_samples=True, apply_chat_template=config.apply_chat_template,
            random_seed=config.seed, numpy_random_seed=config.seed, torch_random_seed=config.seed,
            fewshot_random_seed=config.seed,
        )
    except Exception as err:  # noqa: BLE001 - classify the offline-data failure, re-raise the rest
        text = (" ".join(c.__name__ for c in type(err).__mro__) + f" {err}").lower()
        if any(hint in text for hint in _MISSING_DATA_HINTS):
            names = ",".join(config.tasks)
            raise SIError(
                f"lm-evaluation-harness could not load the data of task(s) {names} from the local Hugging Face "
                f"datasets cache (offline mode: {str(err).splitlines()[0][:200]}); fill the cache once on a connected "
                f"machine with `HF_DATASETS_OFFLINE=0 lm-eval run --model hf --model_args pretrained=<folder> --tasks "
                f"{names} --limit 1` and copy its ~/.cache/huggingface (or $HF_HOME) here"
            ) from None
        raise
    return dict(results or {})  # None on non-zero ranks of a distributed run


def harness_metrics(task_results: dict[str, Any]) -> dict[str, float]:
    """The metric values of one task's harness results: keys ``metric,filter``, numeric, no stderr.

    Leaves out bookkeeping such as ``alias``, ``name`` and ``sample_len`` (documents evaluated).
    """
    return {key: float(value) for key, value in task_results.items()
            if "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool)}


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
    for task, task_results in sorted(a.get("results", {}).items()):
        other = harness_metrics(b.get("results", {}).get(task, {}))
        for key, value in harness_metrics(task_results).items():
            if key not in other:
                continue
            row: dict[str, Any] = {"task": task, "metric": key, "a": value, "b": other[key],
                                   "delta": value - other[key], "delta_ci": None, "p_value": None, "n_paired": 0}
            sa, sb = harness_item_scores(a, task, key), harness_item_scores(b, task, key)
            common = sorted(set(sa) & set(sb))
            if len(common) >= 2:
                res = paired_comparison(np.array([sa[i] for i in common]), np.array([sb[i] for i in common]),
                                        n_resamples=n_resamples, seed=seed)
                row.update(delta_ci=None if res.ci.low is None else [res.ci.low, res.ci.high],
                           p_value=res.p_value, n_paired=len(common))
            rows.append(row)
    return rows
