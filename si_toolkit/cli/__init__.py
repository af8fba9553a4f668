"""The `si` command line. Thin: parse options, call one stage function, print with rich.

User mistakes (SIError) print one line on stderr and exit 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from si_toolkit.errors import USER_FAILURES as _USER_FAILURES
from si_toolkit.errors import SIError

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,  # locals may hold configs or secrets
    help="Rank principle sets by the Sufficiency Index of a model's chain of thought.",
)
principles_app = typer.Typer(no_args_is_help=True, help="Validate and inspect principle-set files.")
app.add_typer(principles_app, name="principles")
err = Console(stderr=True)
# A pipe or a log file gets 120 columns (rich's default of 80 would cut the ranking table).
out = Console(width=None if sys.stdout.isatty() else 120)

_STATE = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _STATE["debug"] = debug


# Options shared by rank / sample ------------------------------------------------------------
FilesArg = Annotated[list[Path], typer.Argument(help="Principle-set YAML files.", show_default=False)]
PromptsOpt = Annotated[str, typer.Option("--prompts", help="builtin:mixed|arithmetic|open or a JSONL/CSV/Parquet file.")]
ModelOpt = Annotated[str, typer.Option("--model", help="embedded, a model folder, or an HF id in the local cache.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="hf, vllm, or auto (vllm when importable).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32 or bfloat16.")]
ProfileOpt = Annotated[str, typer.Option("--profile", help="quick (minutes on a CPU) or standard (GPU host).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run folder (default reports/<set names>-<profile>).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the estimates as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
ShardOpt = Annotated[str | None, typer.Option("--shard", help="I/N: do only units u with u % N == I (sampling: unit groups; multi-GPU).")]


def _fail(error: BaseException) -> None:
    """Print a user-facing failure as one line and exit: 2 for bad input, 1 for the system
    (disk full, permission denied), 130 for Ctrl-C. Finished shards are never touched."""
    if _STATE["debug"]:
        raise error
    if isinstance(error, KeyboardInterrupt):
        err.print("interrupted: finished work is saved in the run folder; rerun the same command to resume",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(code=130)
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        err.print(f"[bold red]error:[/] cannot write or read{escape(where)}: {escape(str(error.strerror or error))}; free disk space or "
                  "fix permissions, then rerun the same command to resume", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)
    err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)




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
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model folder.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample, score and estimate SI for each principle set; print the ranking (resumes a killed run)."""
    try:
        run = _create_run(files, prompts, model, backend, dtype, profile, n_prompts, replicates, max_new_tokens,
                          seed, out, force_new, no_prefill)
        if prepare_only:
            err.print(f"run folder ready: {run.path}")
            return
        estimates = _run_all(run, trust_remote_code, quiet)
        if not no_report:
            _write_report(run.path, quiet)
        _print_estimates(estimates, run.path, json_out)
    except _USER_FAILURES as error:
        _fail(error)


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


def _progress_factory(quiet: bool) -> Any:
    """A pipeline.ProgressFactory drawing one rich progress bar per stage on stderr."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    @contextmanager
    def bar(stage: str, total: int) -> Any:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=err, disable=quiet) as progress:
            task = progress.add_task({"sample": "sampling", "score": "scoring"}.get(stage, stage), total=total)
            yield lambda n: progress.advance(task, n)

    return bar


def _run_all(run: Any, trust_remote_code: bool, quiet: bool, shard_text: str | None = None) -> dict[str, Any]:
    from si_toolkit.rank.pipeline import run_rank
    from si_toolkit.rank.runs import parse_shard

    return run_rank(run, trust_remote_code=trust_remote_code, shard=parse_shard(shard_text),
                    progress=_progress_factory(quiet))


def _write_report(run_dir: Path, quiet: bool) -> None:
    from si_toolkit.report import build_report

    paths = build_report(run_dir)
    if not quiet:
        err.print(f"report: {paths.html}")


def _print_estimates(estimates: dict[str, Any], run_dir: Path, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(estimates, indent=2) + "\n")
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


@app.command()
def sample(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (made by `si rank` or an earlier `si sample`).")],
    shard: ShardOpt = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Sample responses for a run folder (resumes; --shard I/N splits the work across processes)."""
    _stage_command(run_dir, "sample", shard, trust_remote_code, quiet)


@app.command()
def score(
    run_dir: Annotated[Path, typer.Argument(help="Run folder with samples.parquet.")],
    shard: ShardOpt = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code")] = False,
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
        with _progress_factory(quiet)(stage, left) as advance:
            complete = work(run, backend, shard, advance)
        where = f"shard {shard_text}" if shard_text else stage
        err.print(f"{where}: done; {stage} {'complete' if complete else 'waiting for other shards'}")
    except _USER_FAILURES as error:
        _fail(error)
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

    try:
        if not source.exists():
            raise SIError(f"{source}: no such run folder or scores file")
        is_default = span == "cot" and critic == "sum"
        result = estimate_stage(source, span=span, critic=critic, n_bootstrap=n_bootstrap, seed=seed,
                                write=source.is_dir() and is_default)
        _print_estimates(result, source, json_out)
    except _USER_FAILURES as error:
        _fail(error)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run folder with estimates.json.")]) -> None:
    """(Re)build report.html, report.md, si.csv and figures/ from a run folder alone."""
    try:
        _write_report(run_dir, quiet=False)
    except _USER_FAILURES as error:
        _fail(error)


@principles_app.command("validate")
def principles_validate(files: FilesArg) -> None:
    """Check principle-set files; prints one line per file and exits 2 on the first bad one."""
    from si_toolkit.principles import load_principle_set

    try:
        for path in files:
            s = load_principle_set(path)
            out.print(f"ok  {path}  ({s.name}: mode {s.mode}, K = {s.K})", highlight=False)
    except _USER_FAILURES as error:
        _fail(error)


@principles_app.command("show")
def principles_show(file: Annotated[Path, typer.Argument(help="A principle-set YAML file.")]) -> None:
    """Print a set's variants exactly as they go into the system prompt."""
    from rich.markup import escape

    from si_toolkit.principles import load_principle_set

    try:
        s = load_principle_set(file)
    except _USER_FAILURES as error:
        _fail(error)
        return
    out.print(f"[bold]{escape(s.name)}[/] — mode {s.mode}" + (f", design {s.design}" if s.design else "") + f", K = {s.K}")
    if s.description:
        out.print(escape(s.description))
    for i, v in enumerate(s.variants):
        out.print(f"\n[bold]variant {i}: {escape(v.label)}[/]")
        out.print(escape(v.text))


@app.command()
def confirm(
    files: FilesArg,
    top: Annotated[int, typer.Option("--top", help="Train the k highest-SI sets.")] = 1,
    bottom: Annotated[int, typer.Option("--bottom", help="Train the k lowest-SI sets.")] = 1,
    profile: ProfileOpt = "quick",
    seeds: Annotated[int, typer.Option("--seeds", help="Training seeds per set and preset.")] = 1,
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
    except _USER_FAILURES as error:
        _fail(error)
        return
    if json_out:
        sys.stdout.write(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2, default=str) + "\n")
    else:
        from rich.markup import escape

        err.print(f"report: {out_dir / 'confirm.html'}")
        out.print(escape(result["verdict"]))


def _register_subcommands() -> None:
    """Commands that live in their own modules (imported lazily: they pull in no torch at import)."""
    from si_toolkit.cli.confirm import eval_command, geometry_command, steadiness_command
    from si_toolkit.cli.train import train_command

    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.command("geometry")(geometry_command)
    app.command("steadiness")(steadiness_command)


_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SIError as error:  # raised outside a command's own handler (should be rare)
        err.print(f"error: {error}", highlight=False)
        sys.exit(2)
