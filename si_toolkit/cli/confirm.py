"""`si confirm`, `si eval`, `si geometry` and `si steadiness`: the confirm job.

Thin: parse options, call one function of `si_toolkit.confirm`, print with rich. Definitions of every number: docs/evaluation.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from si_toolkit.cli.common import DTYPE_HELP, FilesArg, JsonOpt, ModelOpt, err, fail, out
from si_toolkit.errors import USER_FAILURES

__all__ = ["app"]

app = typer.Typer()


def _progress(quiet: bool) -> Any:
    """(description, total) -> a context manager yielding advance(n): one rich bar per model."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar(description: str, total: int) -> Any:
        with Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, disable=quiet) as progress:
            task = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task, n)

    return bar


def _summary_table(summaries: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Held-out benchmark (greedy)" if all(s["config"]["temperature"] == 0 for s in summaries.values())
                  else "Held-out benchmark")
    for col in ("", "model", "items", "accuracy", "95% CI", "lenient acc.", "format rate", "truncated"):
        table.add_column(col, justify="left" if col in ("", "model") else "right")
    for label, s in summaries.items():
        ci = s["accuracy_ci"]
        table.add_row(label, s["model"]["name"], str(s["n_items"]), f"{s['accuracy']:.3f}",
                      f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a", f"{s['accuracy_lenient']:.3f}",
                      f"{s['format_rate']:.0%}", f"{s['truncated_rate']:.0%}")
    return table


def _comparison_table(comparison: dict[str, Any]) -> Table:
    from si_toolkit.report.tables import fmt_p  # "≤ 1/n" where the data cannot resolve a smaller p

    table = Table(title=f"A − B on {comparison['n_items']} paired items")
    for col in ("metric", "A", "B", "A − B", "95% CI", "p", "only A", "only B"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for metric, m in comparison["metrics"].items():
        ci = m["delta_ci"]
        table.add_row(metric, f"{m['a']:.3f}", f"{m['b']:.3f}", f"{m['delta']:+.3f}",
                      f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "n/a",
                      fmt_p(m["p_value"], m.get("p_at_floor")), _count(m["only_a"]), _count(m["only_b"]))
    return table


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def _harness_table(report: dict[str, Any]) -> Table:
    from si_toolkit.confirm.harness import harness_metrics

    rows = report.get("comparison") or [
        {"task": task, "metric": key, "a": value, "b": None, "delta": None, "delta_ci": None}
        for task, results in report["results"]["a"].items() for key, value in harness_metrics(results).items()
    ]
    table = Table(title="lm-evaluation-harness" + (" (A − B, paired over documents)" if "comparison" in report else ""))
    for col in ("task", "metric", "A", "B", "A − B", "95% CI"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for r in rows:
        ci = r["delta_ci"]
        table.add_row(r["task"], r["metric"], f"{r['a']:.3f}", "" if r["b"] is None else f"{r['b']:.3f}",
                      "" if r["delta"] is None else f"{r['delta']:+.3f}", f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
    return table


@app.command("eval")
def eval_command(
    checkpoint: Annotated[str, typer.Argument(help="Model A: `embedded`, a checkpoint folder, or a cached HF id.")],
    compare: Annotated[str | None, typer.Option("--compare", help="Model B (e.g. the base), or the items.jsonl of an earlier `si eval`.")] = None,
    prompts: Annotated[str, typer.Option("--prompts", help="Items with numeric answers: builtin:arithmetic or a file.")] = "builtin:arithmetic",
    split: Annotated[str, typer.Option("--split", help="heldout (never trained on) or all.")] = "heldout",
    n_items: Annotated[int | None, typer.Option("--n-items", help="Use the first n items of the split.")] = None,
    system: Annotated[str | None, typer.Option("--system", help="System text before the CoT instruction (default: 'You are a helpful assistant.').")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Generated tokens per item.")] = 192,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy (default); > 0 samples.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling and bootstrap seed.")] = 0,
    dtype: Annotated[str, typer.Option("--dtype", help=DTYPE_HELP)] = "bfloat16",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Items per generation batch.")] = 16,
    no_prefill: Annotated[bool, typer.Option("--no-prefill", help="Do not prefill the assistant turn with <think>.")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default reports/eval-A[-vs-B]; a checkpoint is named with its run, e.g. eval-RUN-checkpoint-200).")] = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="Move an output folder that holds earlier results aside instead of refusing.")] = False,
    harness: Annotated[str | None, typer.Option("--harness", help="Also run lm-evaluation-harness tasks: names or task YAML files, e.g. gsm8k,arc_easy (extra [eval]).")] = None,
    harness_include_path: Annotated[Path | None, typer.Option("--harness-include-path", help="Folder of your own task YAML files, so --harness can name their tasks.")] = None,
    harness_limit: Annotated[int | None, typer.Option("--harness-limit", help="Documents per harness task (testing only).")] = None,
    harness_fewshot: Annotated[int | None, typer.Option("--harness-fewshot", help="Few-shot examples for the harness tasks.")] = None,
    chat_template: Annotated[bool, typer.Option("--chat-template", help="Harness: apply the model's chat template.")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model folder.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Accuracy and format rate on held-out arithmetic problems; with --compare, A − B item by item."""
    from si_toolkit.confirm.api import evaluate

    try:
        harness_options = {"num_fewshot": harness_fewshot, "limit": harness_limit, "apply_chat_template": chat_template}
        result = evaluate(checkpoint, compare=compare, out=out_dir, force_new=force_new, harness=harness,
                          harness_include_path=harness_include_path, harness_options=harness_options,
                          trust_remote_code=trust_remote_code, progress=_progress(quiet),
                          on_moved=lambda moved: err.print(f"moved the earlier results to {moved}", highlight=False),
                          prompts=prompts, split=split, n_items=n_items, prefill=not no_prefill,
                          **({} if system is None else {"system": system}), max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, dtype=dtype, batch_size=batch_size)
    except USER_FAILURES as error:
        fail(error)
        return
    folder = result.pop("folder")
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    out.print(_summary_table({k: v for k, v in result.items() if k in ("a", "b") and "accuracy" in v}))
    if "comparison" in result:
        out.print(_comparison_table(result["comparison"]))
    if "harness" in result:
        out.print(_harness_table(result["harness"]))
    err.print(f"results: {folder}")


@app.command("geometry")
def geometry_command(
    base: Annotated[str, typer.Argument(help="The base model: `embedded`, a folder, or a cached HF id.")],
    trained: Annotated[str, typer.Argument(help="The trained checkpoint folder (a fine-tune of BASE).")],
    principles: Annotated[Path, typer.Option("--principles", help="The principle-set YAML the model was trained on.")],
    prompts: Annotated[str, typer.Option("--prompts", help="builtin:mixed|arithmetic|open or a prompt file.")] = "builtin:mixed",
    n_prompts: Annotated[int, typer.Option("--n-prompts", help="Held-out prompts to use.")] = 16,
    split: Annotated[str, typer.Option("--split", help="heldout (never trained on) or all.")] = "heldout",
    pool: Annotated[str, typer.Option("--pool", help="suffix (tokens after the principle text) or all.")] = "suffix",
    dtype: Annotated[str, typer.Option("--dtype", help=DTYPE_HELP)] = "bfloat16",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 8,
    no_prefill: Annotated[bool, typer.Option("--no-prefill", help="Render without the <think> prefill.")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default reports/geometry-TRAINED; a checkpoint is named with its run).")] = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="Move an output folder that holds earlier results aside instead of refusing.")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model folder.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print geometry.json on stdout.")] = False,
) -> None:
    """Per layer: Sinkhorn divergence base→trained, shift along each principle's direction, effective rank."""
    from si_toolkit.confirm.api import safe_model_name
    from si_toolkit.confirm.geometry import GeometryConfig, analyze_geometry, write_geometry
    from si_toolkit.safeio import claim_result_folder

    try:
        config = GeometryConfig(prompts=prompts, n_prompts=n_prompts, split=split, pool=pool, prefill=not no_prefill,
                                dtype=dtype, batch_size=batch_size)
        folder = out_dir or Path("reports") / f"geometry-{safe_model_name(trained)}"
        moved = claim_result_folder(folder, force_new=force_new)  # before the models load: a refusal costs nothing
        if moved is not None:
            err.print(f"moved the earlier results to {moved}", highlight=False)
        result = analyze_geometry(base, trained, principles, config, trust_remote_code=trust_remote_code)
        write_geometry(result, folder)
    except USER_FAILURES as error:
        fail(error)
        return
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table(title=f"Geometry of {result['trained']['name']} vs {result['base']['name']} ({result['n_points']} inputs)")
    ids = [p["id"] for p in result["layers"][0]["principles"]]
    for col in ("layer", "S_ε", "‖Δ‖", "eff. rank base→trained", *(f"{i} ∥ / ⊥" for i in ids)):
        table.add_column(col, justify="right")
    for row in result["layers"]:
        shifts = ["n/a" if p["parallel_rel"] is None else f"{p['parallel_rel']:+.2f} / {p['orthogonal_rel']:.2f}"
                  for p in row["principles"]]
        table.add_row(str(row["layer"]), f"{row['sinkhorn']:.3g}", f"{row['shift_norm']:.3g}",
                      f"{row['effective_rank_base']:.1f} → {row['effective_rank_trained']:.1f}", *shifts)
    out.print(table)
    err.print(f"geometry.json and figures: {folder}")


@app.command("steadiness")
def steadiness_command(
    metrics: Annotated[Path, typer.Argument(help="A training run's metrics.jsonl (or its run folder).")],
    warmup_steps: Annotated[float | None, typer.Option("--warmup-steps", help="Steps dropped before volatilities (default 10 % of the run).")] = None,
    collapse_fraction: Annotated[float, typer.Option("--collapse-fraction", help="Entropy collapse: below this fraction of its start.")] = 0.5,
    json_out: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON on stdout.")] = False,
) -> None:
    """Steadiness of a training run: reward/loss volatility, entropy slope and collapse, KL/Sinkhorn drift."""
    from si_toolkit.confirm.steadiness import read_metrics, steadiness

    try:
        path = metrics / "metrics.jsonl" if metrics.is_dir() else metrics
        result = steadiness(read_metrics(path), warmup_steps=warmup_steps, collapse_fraction=collapse_fraction).to_dict()
    except USER_FAILURES as error:
        fail(error)
        return
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    table = Table(title=f"Steadiness — {path}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, "n/a" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
    out.print(table)


@app.command()
def confirm(
    files: FilesArg,
    top: Annotated[int | None, typer.Option("--top", help="Train the k highest-SI sets (default: the profile's).")] = None,
    bottom: Annotated[int | None, typer.Option("--bottom", help="Train the k lowest-SI sets (default: the profile's).")] = None,
    profile: Annotated[str, typer.Option("--profile", help="quick: CPU smoke test (2 sets, 1 seed, cannot support a "
                                          "claim); cpu: every set, 2 seeds, < 2 h on 2 CPU cores; standard: GPU host "
                                          "(4 sets, 3 seeds).")] = "quick",
    seeds: Annotated[int | None, typer.Option("--seeds", help="Training seeds per set and preset (default: the profile's).")] = None,
    model: ModelOpt = "embedded",
    ranking: Annotated[Path | None, typer.Option("--ranking", help="Reuse a ranking run folder.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Confirmation folder (resumable).")] = Path("reports/confirm"),
    json_out: JsonOpt = False,
) -> None:
    """Rank, train top/bottom sets (enigma + grpo ablation), evaluate, and report whether SI predicted the outcome."""
    from si_toolkit.confirm.confirm import ConfirmConfig, run_confirm

    try:
        config = ConfirmConfig(model=model, profile=profile, top=top, bottom=bottom, seeds=seeds,
                               ranking=str(ranking) if ranking else None)
        result = run_confirm(files, config, out_dir, log=lambda line: err.print(line, highlight=False))
    except USER_FAILURES as error:
        fail(error)
        return
    if json_out:
        sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2, default=str) + "\n")
    else:
        err.print(f"report: {out_dir / 'confirm.html'}")
        out.print(escape(result["verdict"]))
