"""`si train`: run the ENIGMA trainer from the command line (thin: parse, call `train`, print).

Registered in the root app as `si train`; also runnable on its own, which is how torchrun
starts one copy per process:

    si train --principles principles/helpful-vs-harmless.yaml --set max_steps=50
    torchrun --nproc_per_node 2 -m si_toolkit.cli.train --principles FILE --config train.yaml

Settings resolve as: field defaults < preset < --config YAML < explicit options < --set.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from si_toolkit.cli.common import err, fail, out
from si_toolkit.errors import USER_FAILURES, SIError

__all__ = ["app", "train_command"]


PrinciplesOpt = Annotated[Path | None, typer.Option("--principles", help="Principle-set YAML to train on.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Training config YAML (keys = TrainConfig fields).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="embedded, a model folder, or a cached HF id.")]
PromptsOpt = Annotated[str | None, typer.Option("--prompts", help="builtin:mixed|arithmetic|open or a prompt file.")]
PresetOpt = Annotated[str | None, typer.Option("--preset", help="grpo | grpo+sami | grpo+ot | enigma.")]
StepsOpt = Annotated[int | None, typer.Option("--max-steps", help="Steps to train.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of prompts, variants and sampling.")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="float32 (default for training: bfloat16 weights would round lr-1e-6 updates away) or bfloat16.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run folder (default reports/train-<set>-<preset>).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its newest checkpoint.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override any config key: --set key=value (repeatable).")]
HelpConfigOpt = Annotated[bool, typer.Option("--help-config", help="List every config key with its default, then exit.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the last step's metrics as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bar or per-step lines.")]


def train_command(
    principles: PrinciplesOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    prompts: PromptsOpt = None,
    preset: PresetOpt = None,
    max_steps: StepsOpt = None,
    seed: SeedOpt = None,
    dtype: DtypeOpt = None,
    out_dir: OutOpt = None,
    resume: ResumeOpt = False,
    set_: SetOpt = None,
    help_config: HelpConfigOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a model with GRPO + SAMI + Sinkhorn (ENIGMA) on one principle set; writes HF checkpoints."""
    if help_config:
        _print_config_help()
        return
    from si_toolkit.train.distributed import init_distributed, shutdown

    ctx = None
    try:
        if principles is None:
            raise SIError("--principles FILE is required (the principle set to train on)")
        cfg = _build_config(config, model, prompts, preset, max_steps, seed, dtype, set_ or [])
        import torch

        ctx = init_distributed(os.environ, use_cuda=cfg.device != "cpu" and torch.cuda.is_available())
        result = _run(cfg, principles, out_dir, resume, ctx, quiet or not ctx.is_main)
        if ctx.is_main:
            _print_result(result, json_out)
    except USER_FAILURES as error:
        fail(error)
    finally:
        if ctx is not None:
            shutdown(ctx)


def _build_config(config: Path | None, model: str | None, prompts: str | None, preset: str | None,
                  max_steps: int | None, seed: int | None, dtype: str | None, items: list[str]) -> Any:
    from si_toolkit.train.config import load_train_config, parse_set_options

    explicit = {"model": model, "prompts": prompts, "preset": preset, "max_steps": max_steps, "seed": seed, "dtype": dtype}
    overrides: dict[str, Any] = {k: v for k, v in explicit.items() if v is not None}
    overrides.update(parse_set_options(items))
    return load_train_config(config, overrides)


def _run(cfg: Any, principles: Path, out_dir: Path | None, resume: bool, ctx: Any, quiet: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from si_toolkit.principles import load_principle_set
    from si_toolkit.train.trainer import train

    principle_set = load_principle_set(principles)
    folder = out_dir or Path("reports") / f"train-{principle_set.name}-{cfg.preset}"
    progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=err, disable=quiet, transient=False)

    def on_step(row: dict[str, Any]) -> None:
        progress.update(task, completed=row["step"])
        if row["step"] % cfg.log_every == 0:
            progress.console.print(_step_line(row, cfg.max_steps), highlight=False)

    with progress:
        task = progress.add_task("training", total=cfg.max_steps)
        return train(cfg, principle_set, folder, resume=resume, ctx=ctx, on_step=on_step)


def _step_line(row: dict[str, Any], max_steps: int) -> str:
    parts = [f"step {row['step']}/{max_steps}", f"reward {row['reward_mean']:.3f}", f"format {row['format_rate']:.2f}",
             f"loss {row['loss']:.4f}", f"entropy {row.get('entropy', float('nan')):.2f}"]
    if "sami_mi_bound" in row:
        parts.append(f"SAMI bound {row['sami_mi_bound']:.4f}")
    if "sinkhorn" in row:
        parts.append(f"sinkhorn {row['sinkhorn']:.4f}")
    parts.append(f"{row['step_time']:.1f} s")
    return "  ".join(parts)


def _print_result(result: Any, json_out: bool) -> None:
    last = result.rows[-1] if result.rows else {}
    if json_out:
        sys.stdout.write(json.dumps({"checkpoint": str(result.checkpoint), "last_step": result.last_step,
                                     "metrics": last}, default=str) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"si train — {result.out_dir} (step {result.last_step})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("reward_mean", "format_rate", "frac_zero_std_groups", "loss_grpo", "loss_sami", "sami_mi_bound",
                "sinkhorn", "kl", "entropy", "grad_norm"):
        if key in last and isinstance(last[key], float):
            table.add_row(key, f"{last[key]:.4f}")
    out.print(table)
    out.print(f"checkpoint: {result.checkpoint}", highlight=False)


def _print_config_help() -> None:
    from rich.markup import escape
    from rich.table import Table

    from si_toolkit.train.config import config_help

    table = Table(title="si train config keys (--config YAML or --set key=value)")
    for column in ("key", "default", "meaning"):
        table.add_column(column)
    for name, default, text in config_help():
        table.add_row(name, escape(default), escape(text))
    out.print(table)


app = typer.Typer(pretty_exceptions_show_locals=False)
app.command(name="train")(train_command)

if __name__ == "__main__":
    # Under torchrun every process runs this one command directly:
    # `python -m si_toolkit.cli.train --principles ...` (a one-command app needs no command name).
    app()
