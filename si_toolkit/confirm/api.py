"""Evaluation from Python: `evaluate(checkpoint, compare=..., **config)`; `si eval` calls it.

The built-in held-out benchmark on model A (and B), their paired comparison, and optionally
lm-evaluation-harness tasks with identical settings for both. Definitions: docs/evaluation.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from si_toolkit.errors import SIError

__all__ = ["evaluate", "eval_folder_name", "safe_model_name"]

# (description, total) -> a context manager yielding advance(n); None shows nothing.
ProgressFactory = Callable[[str, int], Any]


def evaluate(checkpoint: str | Path, *, compare: str | Path | None = None, out: str | Path | None = None,
             force_new: bool = False, harness: str | None = None, harness_include_path: str | Path | None = None,
             harness_options: dict[str, Any] | None = None, trust_remote_code: bool = False,
             progress: ProgressFactory | None = None, on_moved: Callable[[Path], None] | None = None,
             **config: Any) -> dict[str, Any]:
    """Evaluate model A (and B) on the held-out benchmark; write items, summaries, comparison.

    checkpoint, compare : ``embedded``, a checkpoint folder or a cached HF id; `compare` may also be
        the items.jsonl of an earlier evaluation (then its settings must equal these).
    out : the result folder (default ``reports/eval-A[-vs-B]``); earlier results there are refused
        unless ``force_new=True`` moves them aside.
    harness : comma-separated lm-evaluation-harness task names or task YAML files (extra [eval]);
        `harness_include_path` a folder of task YAMLs; `harness_options` num_fewshot, limit,
        apply_chat_template.
    config : `EvalConfig` fields (n_items, max_new_tokens, temperature, dtype, seed, ...).
    Returns {"a": summary, "b": ..., "comparison": ..., "harness": ..., "folder": Path}.
    """
    from si_toolkit.confirm.evaluate import EvalConfig, compare_items, read_items
    from si_toolkit.safeio import atomic_write_json, claim_result_folder

    eval_config = EvalConfig(**config)
    checkpoint, compare = str(checkpoint), None if compare is None else str(compare)
    if harness_include_path is not None and not harness:
        raise SIError("--harness-include-path needs --harness TASKS naming the tasks to run from it")
    harness_config = None if not harness else _harness_config(
        harness, harness_include_path, compare, {**(harness_options or {}), "dtype": eval_config.dtype,
                                                  "seed": eval_config.seed})
    folder = Path(out) if out else Path("reports") / eval_folder_name(checkpoint, compare)
    # An earlier items.jsonl standing in for B is read (and checked) before anything is moved or run.
    earlier_b = _items_b(compare, eval_config, folder / "b", progress, trust_remote_code) if _is_items(compare) else None
    moved = claim_result_folder(folder, force_new=force_new)
    if moved is not None and on_moved:
        on_moved(moved)
    result: dict[str, Any] = {}
    if compare is None:
        result["a"] = _evaluate(checkpoint, eval_config, folder, progress, trust_remote_code)
    else:
        items_b, summary_b = earlier_b or _items_b(compare, eval_config, folder / "b", progress, trust_remote_code)
        result["a"] = _evaluate(checkpoint, eval_config, folder / "a", progress, trust_remote_code)
        result["b"] = summary_b
        result["comparison"] = compare_items(read_items(folder / "a" / "items.jsonl"), items_b, seed=eval_config.seed)
        result["comparison"].update(a=result["a"].get("model"), b=result["b"].get("model"))
        atomic_write_json(folder / "comparison.json", result["comparison"])
    if harness_config is not None:
        refs = {"a": checkpoint, **({"b": compare} if compare else {})}
        result["harness"] = _harness(refs, harness_config, folder, trust_remote_code)
    result["folder"] = folder
    return result


def eval_folder_name(checkpoint: str, compare: str | None) -> str:
    """eval-A[-vs-B], each a folder-safe short name of the model reference."""
    return f"eval-{safe_model_name(checkpoint)}" + (f"-vs-{safe_model_name(compare)}" if compare else "")


_CHECKPOINT = re.compile(r"checkpoint-\d+")  # the folders `si train` writes: RUN/checkpoint-<step>


def safe_model_name(ref: str) -> str:
    """A folder-safe short name of a model reference: its last path part, and for a training
    checkpoint its run's folder too (`reports/run-a/checkpoint-2` -> `run-a-checkpoint-2`), so
    checkpoints of different runs never share an output folder."""
    path = Path(ref.rstrip("/"))
    if path.exists():
        path = path.resolve()
    name = path.name or ref
    if _CHECKPOINT.fullmatch(name) and path.parent.name:
        name = f"{path.parent.name}-{name}"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    return name[:80] or "model"



def _evaluate(ref: str, config: Any, folder: Path, progress: ProgressFactory | None,
              trust_remote_code: bool) -> dict[str, Any]:
    from si_toolkit.confirm.evaluate import benchmark_items, evaluate_checkpoint

    bar = progress(f"eval {safe_model_name(ref)}", len(benchmark_items(config))) if progress else nullcontext(None)
    with bar as advance:
        return evaluate_checkpoint(ref, config, folder, progress=advance, trust_remote_code=trust_remote_code)


def _is_items(compare: str | None) -> bool:
    """True when --compare names an earlier run's items.jsonl rather than model B."""
    return compare is not None and Path(compare).suffix == ".jsonl"


def _items_b(compare: str, config: Any, folder: Path, progress: ProgressFactory | None, trust_remote_code: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """B's per-item results: read from an earlier items.jsonl, or evaluated now into `folder`."""
    from si_toolkit.confirm.evaluate import read_items

    path = Path(compare)
    if path.suffix == ".jsonl" and not path.is_file():
        raise SIError(f"--compare {compare}: no such items file; give model B or the items.jsonl of an earlier `si eval`")
    if path.suffix == ".jsonl":
        summary_path = path.parent / "summary.json"
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
        theirs, ours = summary.get("config", {}), asdict(config)
        differing = sorted(k for k in ours if k in theirs and theirs[k] != ours[k])
        if differing:
            raise SIError(f"{path}: evaluated with other settings ({', '.join(differing)} differ); rerun both with "
                          "identical settings, or pass the same options as that run")
        return read_items(path), summary
    summary = _evaluate(compare, config, folder, progress, trust_remote_code)
    return read_items(folder / "items.jsonl"), summary


def _harness_config(harness: str, include_path: Path | None, compare: str | None, options: dict[str, Any]) -> Any:
    """The one HarnessConfig for A and B, its tasks checked before any model is loaded."""
    from si_toolkit.confirm.harness import HarnessConfig, parse_tasks, resolve_tasks

    if compare and compare.endswith(".jsonl"):
        raise SIError("--harness with --compare needs model B itself, not an items.jsonl; pass B's folder")
    config = HarnessConfig(tasks=parse_tasks(harness), include_path=None if include_path is None else str(include_path),
                           **options)
    resolve_tasks(config)  # fail here, not after the benchmark has run
    return config


def _harness(refs: dict[str, str], config: Any, folder: Path, trust_remote_code: bool) -> dict[str, Any]:
    """Run lm-evaluation-harness on each model with one HarnessConfig; compare A with B if both ran."""
    from si_toolkit.confirm.harness import compare_harness, run_harness
    from si_toolkit.safeio import atomic_write_text

    results = {}
    for label, ref in refs.items():
        results[label] = run_harness(ref, config, trust_remote_code=trust_remote_code)
        atomic_write_text(folder / f"harness-{label}.json", json.dumps(results[label], indent=1, default=str) + "\n")
    report: dict[str, Any] = {"config": asdict(config),
                              "results": {k: v.get("results", {}) for k, v in results.items()}}
    if len(results) == 2:
        report["comparison"] = compare_harness(results["a"], results["b"], seed=config.seed)
        atomic_write_text(folder / "harness-comparison.json", json.dumps(report["comparison"], indent=1) + "\n")
    return report


