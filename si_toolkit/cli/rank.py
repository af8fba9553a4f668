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
        if ranking.reused:
            err.print(f"{ranking.run_dir}: reused its finished samples and scores (nothing was sampled or scored; "
                      "the estimates were recomputed from scores.parquet); for new samples use another --out or --seed",
                      highlight=False)
        if ranking.report_path and not quiet:
            err.print(f"report: {ranking.report_path}")
        _print_estimates(ranking.estimates, ranking.run_dir, json_out, ranking.manifest)


def _write_report(run_dir: Path, quiet: bool) -> None:
    from si_toolkit.report import build_report

    paths = build_report(run_dir)
    if not quiet:
        err.print(f"report: {paths.html}")


def _print_estimates(estimates: dict[str, Any], source: Path, json_out: bool,
                     manifest: dict[str, Any] | None = None) -> None:
    """The ranking as a rich table (rank interval, P(rank 1), ΔSI and p included), the
    reliability reading and, for a raced run, which ranks were decided; --json prints the same
    data as the estimates.json structure (plus the manifest's racing block for a raced run)."""
    racing = (manifest or {}).get("racing")
    if json_out:
        sys.stdout.write(json.dumps({**estimates, "racing": racing} if racing else estimates, indent=2) + "\n")
        return
    from rich.table import Table

    from si_toolkit.report.tables import fmt, fmt_ci, fmt_p, fmt_pct, fmt_rank_interval

    conf = f"{100 * float(estimates.get('settings', {}).get('confidence', 0.95)):g}%"
    # 12 columns fit 120 characters (the width used when stdout is not a terminal); in a narrower
    # terminal the set name folds onto a second line rather than disappearing.
    settings = estimates.get("settings", {})
    span, critic = settings.get("span", "cot"), settings.get("critic", "sum")
    # SI is the cot span under the summed critic (SI-SPEC §4); other choices are named as such.
    what = "Sufficiency Index ranking" if (span, critic) == ("cot", "sum") else f"Ranking by span {span}, critic {critic}"
    table = Table(title=f"{what} — {source}", box=None, header_style="bold")
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
    span: Annotated[str, typer.Option("--span", help="cot (SI), answer or full.")] = "cot",
    critic: Annotated[str, typer.Option("--critic", help="sum (exact, SI) or mean (SAMI length-normalised).")] = "sum",
    n_bootstrap: Annotated[int, typer.Option("--n-bootstrap", help="Bootstrap resamples for CIs.")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    json_out: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No note on stderr saying which file was written.")] = False,
) -> None:
    """Compute every SI-SPEC quantity from scores. In a run folder the default span and critic
    (cot, sum: SI) write estimates.json; any other choice writes estimates-SPAN-CRITIC.json."""
    from si_toolkit.rank.pipeline import estimate_stage, estimates_file

    with failures():
        if not source.exists():
            raise SIError(f"{source}: no such run folder or scores file")
        in_run = source.is_dir()
        result = estimate_stage(source, span=span, critic=critic, n_bootstrap=n_bootstrap, seed=seed, write=in_run)
        if not quiet:
            where = (f"wrote {source / estimates_file(span, critic)}" if in_run
                     else "nothing written (a bare scores file has no run folder)")
            err.print(f"span {span}, critic {critic}: {where}", highlight=False)
        # The table's title names the span and critic: a non-default choice is not SI.
        _print_estimates(result, source, json_out)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run folder with estimates.json.")]) -> None:
    """(Re)build report.html, report.md, si.csv and figures/ from a run folder alone."""
    with failures():
        _write_report(run_dir, quiet=False)


@app.command()
def plan(
    run_dir: Annotated[Path, typer.Argument(help="A finished pilot run folder (from `si rank`).")],
    target_half_width: Annotated[float | None, typer.Option("--target-half-width", help="Wanted 95% CI half-width on each set's SI, e.g. 0.05.")] = None,
    separate: Annotated[tuple[str, str] | None, typer.Option("--separate", help="Two set names (A B) to tell apart: paired ΔSI CI excludes 0.")] = None,
    power: Annotated[float, typer.Option("--power", help="Wanted probability of separating A and B (with --separate).")] = 0.8,
    replicates: Annotated[list[int] | None, typer.Option("--replicates", help="R to plan for, up to the pilot's R (repeat for several; default 1, 2, 4 and the pilot's R).")] = None,
    simulations: Annotated[int, typer.Option("--simulations", help="Simulated runs per candidate number of prompts.")] = 100,
    n_bootstrap: Annotated[int, typer.Option("--n-bootstrap", help="Bootstrap resamples per simulated CI.")] = 2000,
    max_prompts: Annotated[int, typer.Option("--max-prompts", help="Largest number of prompts searched.")] = 5000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulations.")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """How many prompts (and which R) a run needs for a CI half-width on SI, or to separate two sets,
    by resampling the pilot's per-prompt SI."""
    from si_toolkit.rank.plan import PlanConfig, plan_run

    with failures():
        config = PlanConfig(target_half_width=target_half_width, separate=separate, power=power,
                            replicates=tuple(replicates or ()), simulations=simulations, n_bootstrap=n_bootstrap,
                            max_prompts=max_prompts, seed=seed)
        result = plan_run(run_dir, config)
    if json_out:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    out.print(_plan_table(result))


def _plan_table(result: dict[str, Any]) -> Any:
    """The plan's rows as a rich table, notes as numbered lines under it: the fields of `si plan --json`."""
    from rich.markup import escape
    from rich.table import Table

    s = result["settings"]
    table = Table(title=f"Plan from pilot {escape(result['run'])} ({s['simulations']} simulations per n, "
                        f"{s['confidence']:.0%} CIs)")
    for col in ("set", "goal", "R", "prompts", "responses", "achieved", "pilot n×R: mean ± sd", "note"):
        table.add_column(col, justify="left" if col in ("set", "goal") else "right", no_wrap=col != "set",
                         min_width=18 if col == "set" else None)
    notes = []
    for row in result["rows"]:
        p = row["pilot"]
        goal = (f"half-width ≤ {row['target']:g}" if row["goal"] == "half_width" else f"power ≥ {row['target']:g}")
        name = row["set"] if row["versus"] is None else f"{row['set']} vs {row['versus']}"
        text = row["note"] if row["status"] == "ok" else f"{row['status']}: {row['note']}"
        if text:
            notes.append(f"[{len(notes) + 1}] {name}, R = {row['replicates']}: {text}")
        table.add_row(escape(name), goal, str(row["replicates"]) + (" *" if row["cheapest"] else ""),
                      "—" if row["n_prompts"] is None else str(row["n_prompts"]),
                      "" if row["responses"] is None else str(row["responses"]),
                      "" if row["achieved"] is None else f"{row['achieved']:.3f}",
                      f"{p['n_prompts']}×{p['replicates']}: {p['mean']:.3f}" + ("" if p["sd"] is None else f" ± {p['sd']:.3f}"),
                      f"[{len(notes)}]" if text else "")
    table.caption = "\n".join(["* the R needing the fewest responses (prompts × R × K) for that goal",
                               *map(escape, notes)])
    table.caption_justify = "left"
    return table
