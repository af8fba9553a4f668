"""`si evolve`: search for a principle set with a higher held-out SI than a seed set.

Thin: parse options, call `si_toolkit.evolve.evolve`, print progress on stderr and the verdict
(one line, last) on stdout.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from si_toolkit.cli.common import BackendOpt, DtypeOpt, JsonOpt, ModelOpt, PromptsOpt, QuietOpt, err, failures, out

__all__ = ["app"]

app = typer.Typer()

DEFAULT_BUDGET_MINUTES = 18.0  # with the held-out comparison after it, under 30 min on a busy 2-core CPU


@app.command()
def evolve(
    seed_set: Annotated[Path, typer.Argument(help="The seed principle-set YAML file.", show_default=False)],
    pool: Annotated[Path | None, typer.Option("--pool", help="Text or YAML file of user-written sentences the "
                                                             "operators may add or swap in.")] = None,
    proposer: Annotated[str, typer.Option("--proposer", help="none (pool operators only), embedded, or a model "
                                                             "that rewrites principles (marked model-written).")] = "none",
    population: Annotated[int, typer.Option("--population", help="New candidates per generation.")] = 8,
    generations: Annotated[int, typer.Option("--generations", help="Generations of the search.")] = 4,
    selection_prompts: Annotated[int, typer.Option("--selection-prompts", help="Prompts the search may use.")] = 48,
    holdout_prompts: Annotated[int, typer.Option("--holdout-prompts", help="Prompts only the final comparison "
                                                                           "uses (disjoint from selection).")] = 48,
    budget_minutes: Annotated[float, typer.Option("--budget-minutes", help="Stop the search after this many "
                                                  "minutes (between candidates); the held-out comparison runs "
                                                  "after it.")] = DEFAULT_BUDGET_MINUTES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the prompt split, operators, sampling and "
                                                     "bootstrap.")] = 0,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Seed fidelity a candidate may lose against the "
                                                                 "seed's own accuracy and stay admissible.")] = 0.1,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default reports/evolve-<set>).")] = None,
    prompts: PromptsOpt = "builtin:mixed",
    model: ModelOpt = "embedded",
    backend: BackendOpt = "hf",
    dtype: DtypeOpt = "bfloat16",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens per response.")] = 48,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create a principle set with a higher held-out SI than SEED_SET; rerun the same command to resume."""
    from si_toolkit.evolve import EvolveConfig, evolve as run_evolve

    with failures():
        config = EvolveConfig(model=model, backend=backend, dtype=dtype, prompts=prompts,
                              selection_prompts=selection_prompts, holdout_prompts=holdout_prompts,
                              population=population, generations=generations, proposer=proposer,
                              tolerance=tolerance, max_new_tokens=max_new_tokens, seed=seed)
        command = _command(seed_set, pool, config, out_dir)
        result = run_evolve(seed_set, pool=pool, config=config, budget_minutes=budget_minutes, out=out_dir,
                            progress=None if quiet else _say, command=command)
        if not quiet:
            err.print(f"report: {result.out_dir / 'report.html'}", highlight=False)
            err.print(f"best set: {result.best_path}", highlight=False)
        _print(result.summary, json_out)


def _say(message: str) -> None:
    err.print(message, highlight=False, markup=False)


def _command(seed_set: Path, pool: Path | None, config: Any, out_dir: Path | None) -> str:
    """A command that reproduces the run (every option that changes results, spelled out)."""
    args = ["si", "evolve", str(seed_set)]
    if pool is not None:
        args += ["--pool", str(pool)]
    for name in ("proposer", "population", "generations", "selection_prompts", "holdout_prompts", "seed",
                 "tolerance", "prompts", "model", "backend", "dtype", "max_new_tokens"):
        args += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    if out_dir is not None:
        args += ["--out", str(out_dir)]
    return shlex.join(args)


def _print(summary: dict[str, Any], json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    out.print(summary["verdict"], highlight=False, markup=False, soft_wrap=True)
