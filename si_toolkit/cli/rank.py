"""`si rank`, `si sample`, `si score`, `si estimate`, `si report`: the rank job.

Thin: parse options, call one function of `si_toolkit.rank`, print with rich.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

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
    until_decided: Annotated[bool, typer.Option("--until-decided", help="Add prompts in rounds (first --n-prompts, then --round-prompts more each round) and stop giving them to a set once its rank is decided (SI-SPEC §5).")] = False,
    max_prompts: Annotated[int | None, typer.Option("--max-prompts", help="With --until-decided: the most prompts a set gets (default 4 x the first round, within the prompt set).")] = None,
    round_prompts: Annotated[int | None, typer.Option("--round-prompts", help="With --until-decided: prompts added per round (default: the first round's size).")] = None,
    trust_remote_code: TrustOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample, score and estimate SI for each principle set; print the ranking (resumes a killed run)."""
    from si_toolkit.rank.api import prepare_rank
    from si_toolkit.rank.api import rank as rank_sets

    options = dict(n_prompts=n_prompts, replicates=replicates, max_new_tokens=max_new_tokens, seed=seed,
                   backend=backend, dtype=dtype, out=out, force_new=force_new, prefill=not no_prefill,
                   until_decided=until_decided, max_prompts=max_prompts, round_prompts=round_prompts)
    with failures():
        if not files:
            raise SIError("no principle-set files given; e.g. `si rank principles/*.yaml`")
        if prepare_only and until_decided:
            raise SIError("--prepare-only cannot be combined with --until-decided: the race decides between "
                          "rounds in one process; drop one of them")
        if prepare_only:
            run = prepare_rank(files, prompts, model, profile, **options)
            err.print(f"run folder ready: {run.path}")
            return
        ranking = rank_sets(files, prompts, model, profile, report=not no_report, trust_remote_code=trust_remote_code,
                            progress=progress_factory(quiet), **options)
        if ranking.report_path and not quiet:
            err.print(f"report: {ranking.report_path}")
        _print_estimates(ranking.estimates, ranking.run_dir, json_out, ranking.manifest)


def _write_report(run_dir: Path, quiet: bool) -> None:
    from si_toolkit.report import build_report

    paths = build_report(run_dir)
    if not quiet:
        err.print(f"report: {paths.html}")


def _print_estimates(estimates: dict[str, Any], run_dir: Path, json_out: bool,
                     manifest: dict[str, Any] | None = None) -> None:
    racing = (manifest or {}).get("racing")
    if json_out:
        sys.stdout.write(json.dumps({**estimates, "racing": racing} if racing else estimates, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"Sufficiency Index ranking — {run_dir}")
    for col in ("rank", "set", "K", "SI", "95% CI", "MI bits", "acc/chance", "format", "tied"):
        table.add_column(col, justify="left" if col == "set" else "right", no_wrap=col != "set",
                         min_width=18 if col == "set" else None)
    for entry in estimates["ranking"]:
        s = estimates["sets"][entry["set"]]
        ci = s["si_ci"]
        table.add_row(str(entry["rank"]), entry["set"], str(s["K"]), f"{s['si']:.3f}",
                      f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a", f"{s['mi_col_bits']:.3f}",
                      f"{s['accuracy']:.2f} / {s['chance']:.2f}",
                      f"{s['format_rate']:.0%}" if s.get("format_rate") is not None else "n/a",
                      "=" if entry["tied_with_leader"] else "")
    out.print(table)
    if racing:
        _print_racing(manifest or {}, [e["set"] for e in estimates["ranking"]])


def _print_racing(manifest: dict[str, Any], order: list[str]) -> None:
    """The report's racing table and sentence: prompts per set, decisions, model calls saved."""
    from rich.table import Table

    from si_toolkit.report.racing import racing_table

    racing = racing_table(manifest, order)
    if racing is None:
        return
    table = Table(title="Racing (--until-decided): which ranks are decided")
    for col, numeric in zip(racing.columns, racing.numeric):
        table.add_column(col, justify="right" if numeric else "left")
    for row in racing.rows:
        table.add_row(*(escape(cell) for cell in row))
    out.print(table)
    out.print(escape(racing.caption), highlight=False)


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
