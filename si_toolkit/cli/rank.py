"""`si rank`, `si sample`, `si score`, `si estimate`, `si report`: the rank job.

Thin: parse options, call one function of `si_toolkit.rank`, print with rich.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from si_toolkit.cli.common import (BackendOpt, DtypeOpt, FilesArg, JsonOpt, ModelOpt, OutOpt, ProfileOpt, PromptsOpt,
                                   QuietOpt, ShardOpt, TrustOpt, err, fail, failures, out,
                                   progress_factory)
from si_toolkit.errors import USER_FAILURES, SIError

__all__ = ["app"]

app = typer.Typer()


@app.command()
def rank(
    files: FilesArg,
    prompts: PromptsOpt = "builtin:mixed",
    model: ModelOpt = "embedded",
    backend: BackendOpt = "hf",
    dtype: DtypeOpt = "bfloat16",
    profile: ProfileOpt = "quick",
    n_prompts: Annotated[int | None, typer.Option("--n-prompts", help="Prompts per set (overrides the profile).")] = None,
    replicates: Annotated[int | None, typer.Option("--replicates", help="R responses per (prompt, variant).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Tokens per response.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Base seed.")] = 0,
    out: OutOpt = None,
    force_new: Annotated[bool, typer.Option("--force-new", help="Move an existing run with another config aside.")] = False,
    no_prefill: Annotated[bool, typer.Option("--no-prefill", help="Do not prefill the assistant turn with <think>.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip writing report.html/.md.")] = False,
    prepare_only: Annotated[bool, typer.Option("--prepare-only", help="Only create the run folder (then run `si sample/score --shard`).")] = False,
    trust_remote_code: TrustOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample, score and estimate SI for each principle set; print the ranking (resumes a killed run)."""
    with failures():
        run = _create_run(files, prompts, model, backend, dtype, profile, n_prompts, replicates, max_new_tokens,
                          seed, out, force_new, no_prefill)
        if prepare_only:
            err.print(f"run folder ready: {run.path}")
            return
        estimates = _run_all(run, trust_remote_code, quiet)
        if not no_report:
            _write_report(run.path, quiet)
        _print_estimates(estimates, run.path, json_out)


def _create_run(files: list[Path], prompts: str, model: str, backend: str, dtype: str, profile: str,
                n_prompts: int | None, replicates: int | None, max_new_tokens: int | None, seed: int,
                out: Path | None, force_new: bool, no_prefill: bool) -> Any:
    from si_toolkit.rank.pipeline import create_rank_run

    if not files:
        raise SIError("no principle-set files given; e.g. `si rank principles/*.yaml`")
    command = shlex.join(["si", *sys.argv[1:]]) if Path(sys.argv[0]).name == "si" else None
    return create_rank_run(files, prompts=prompts, model=model, backend=backend, dtype=dtype, profile=profile,
                           n_prompts=n_prompts, replicates=replicates, max_new_tokens=max_new_tokens, seed=seed,
                           out=out, force_new=force_new, prefill=not no_prefill, command=command)



def _run_all(run: Any, trust_remote_code: bool, quiet: bool, shard_text: str | None = None) -> dict[str, Any]:
    from si_toolkit.rank.pipeline import run_rank
    from si_toolkit.rank.runs import parse_shard

    return run_rank(run, trust_remote_code=trust_remote_code, shard=parse_shard(shard_text),
                    progress=progress_factory(quiet))


def _write_report(run_dir: Path, quiet: bool) -> None:
    from si_toolkit.report import build_report

    paths = build_report(run_dir)
    if not quiet:
        err.print(f"report: {paths.html}")


def _print_estimates(estimates: dict[str, Any], run_dir: Path, json_out: bool) -> None:
    """The ranking as a rich table (rank interval, P(rank 1), ΔSI and p included) and the
    reliability reading; --json prints the same data as the estimates.json structure (MI in
    bits, CoT share and the rest are there and in the report)."""
    if json_out:
        sys.stdout.write(json.dumps(estimates, indent=2) + "\n")
        return
    from rich.table import Table

    from si_toolkit.report.tables import fmt, fmt_ci, fmt_p, fmt_pct, fmt_rank_interval

    conf = f"{100 * float(estimates.get('settings', {}).get('confidence', 0.95)):g}%"
    # 12 columns fit 120 characters (the width used when stdout is not a terminal); in a narrower
    # terminal the set name folds onto a second line rather than disappearing.
    table = Table(title=f"Sufficiency Index ranking — {run_dir}", box=None, header_style="bold")
    columns = ("#", "set", "K", "SI", f"{conf} CI", f"rank {conf}", "P(rank 1)", "ΔSI", "p", "acc/chance",
               "format", "tied")
    for col in columns:
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=col != "set",
                         min_width=12 if col == "set" else None, overflow="fold")
    for entry in estimates["ranking"]:
        s = estimates["sets"][entry["set"]]
        leader = entry["rank"] == 1
        table.add_row(str(entry["rank"]), entry["set"], str(s["K"]), fmt(s["si"]), fmt_ci(s.get("si_ci"), 2),
                      fmt_rank_interval(entry.get("rank_interval")), fmt_pct(entry.get("p_rank1")),
                      "—" if leader else fmt(entry.get("delta_to_leader")),
                      "—" if leader else fmt_p(entry.get("p_value"), entry.get("p_at_floor")),
                      f"{fmt(s.get('accuracy'), 2)}/{fmt(s.get('chance'), 2)}",
                      fmt_pct(s.get("format_rate")), "=" if entry.get("tied_with_leader") else "")
    out.print(table)
    reliability = estimates.get("reliability")
    if isinstance(reliability, dict) and reliability.get("reading"):
        out.print(reliability["reading"], highlight=False)
    out.print("ΔSI = SI(set) − SI(leader), paired over prompts; = marks a set whose ΔSI CI includes 0.",
              highlight=False)


@app.command()
def sample(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (made by `si rank` or an earlier `si sample`).")],
    shard: ShardOpt = None,
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample responses for a run folder (resumes; --shard I/N splits the work across processes)."""
    _stage_command(run_dir, "sample", shard, trust_remote_code, quiet)


@app.command()
def score(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with samples.parquet.")],
    shard: ShardOpt = None,
    trust_remote_code: TrustOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score every response under every condition (resumes; --shard I/N splits the work)."""
    _stage_command(run_dir, "score", shard, trust_remote_code, quiet)


def _stage_command(run_dir: Path, stage: str, shard_text: str | None, trust_remote_code: bool, quiet: bool) -> None:
    """One stage (or one shard of it); the merged table is written once every unit has a shard."""
    from si_toolkit.rank.pipeline import run_backend, sample_stage, score_stage, units_left
    from si_toolkit.rank.runs import RunFolder, parse_shard

    backend = None
    try:
        run = RunFolder(run_dir)
        run.read_manifest()  # a clear error before anything else when this is not a run folder
        shard = parse_shard(shard_text)
        left = units_left(run, stage, shard)
        if left:
            backend = run_backend(run, trust_remote_code=trust_remote_code)
        work = sample_stage if stage == "sample" else score_stage
        with progress_factory(quiet)(stage, left) as advance:
            complete = work(run, backend, shard, advance)
        where = f"shard {shard_text}" if shard_text else stage
        err.print(f"{where}: done; {stage} {'complete' if complete else 'waiting for other shards'}")
    except USER_FAILURES as error:
        fail(error)
    finally:
        if backend is not None:
            backend.close()


@app.command()
def estimate(
    source: Annotated[Path, typer.Argument(help="A run folder or a scores.parquet file.")],
    span: Annotated[str, typer.Option("--span", help="cot, answer or full.")] = "cot",
    critic: Annotated[str, typer.Option("--critic", help="sum (exact) or mean (SAMI length-normalised).")] = "sum",
    n_bootstrap: Annotated[int, typer.Option("--n-bootstrap", help="Bootstrap resamples for CIs.")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Compute every SI-SPEC quantity from scores (writes estimates.json into a run folder)."""
    from si_toolkit.rank.pipeline import estimate_stage

    with failures():
        if not source.exists():
            raise SIError(f"{source}: no such run folder or scores file")
        is_default = span == "cot" and critic == "sum"
        result = estimate_stage(source, span=span, critic=critic, n_bootstrap=n_bootstrap, seed=seed,
                                write=source.is_dir() and is_default)
        _print_estimates(result, source, json_out)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run folder with estimates.json.")]) -> None:
    """(Re)build report.html, report.md, si.csv and figures/ from a run folder alone."""
    with failures():
        _write_report(run_dir, quiet=False)
