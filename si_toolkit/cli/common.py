"""What every `si` command shares: the consoles, the one failure path, and common options.

The failure contract (the same for every command, `si train` included):
- bad input (SIError): one line on stderr, exit 2;
- the system (OSError: disk full, permission denied): one line naming the path, exit 1;
- Ctrl-C: one line with the resume hint, exit 130;
- `si --debug ...`: the traceback instead, for every one of these.

The `--debug` flag travels in the root command's `ctx.obj` (typer's way), not a module global.
"""

from __future__ import annotations

import sys
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from si_toolkit.errors import USER_FAILURES

__all__ = ["err", "out", "fail", "failures", "debug_enabled", "progress_factory", "terminal_text", "FilesArg", "PromptsOpt",
           "ModelOpt", "BackendOpt", "DtypeOpt", "ProfileOpt", "OutOpt", "JsonOpt", "QuietOpt", "ShardOpt",
           "TrustOpt", "DTYPE_HELP"]

err = Console(stderr=True, soft_wrap=True)
# A pipe or a log file gets 120 columns (rich's default of 80 would cut the ranking table);
# soft_wrap keeps long paths on one line there, so they can be copied.
out = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=not sys.stdout.isatty())

# One dtype default for every command that loads a model: bfloat16 halves memory and, on CPUs
# with AVX-512-BF16 and on GPUs, doubles speed; tests that need exact numbers pass float32.
DTYPE_HELP = "float32 or bfloat16 (default bfloat16: half the memory, faster on GPUs and recent CPUs)."

FilesArg = Annotated[list[Path], typer.Argument(help="Principle-set YAML files.", show_default=False)]
PromptsOpt = Annotated[str, typer.Option("--prompts", help="builtin:mixed|arithmetic|open or a JSONL/CSV/Parquet file (fields: docs/prompts.md).")]
ModelOpt = Annotated[str, typer.Option("--model", help="embedded, a model folder, or an HF id in the local cache.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="hf, vllm, or auto (vllm when importable).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help=DTYPE_HELP)]
ProfileOpt = Annotated[str, typer.Option("--profile", help="quick (minutes on a CPU) or standard (GPU host).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Run folder (default reports/<set names>-<profile>, or -n<N>-r<R>-t<T> when the sizes are no profile's).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
ShardOpt = Annotated[str | None, typer.Option("--shard", help="I/N: do only units u with u % N == I (sampling: unit groups; multi-GPU).")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow model code from the model folder.")]


def terminal_text(text: str) -> str:
    """User text made safe to print with rich: markup escaped, invisible characters made visible.

    Control characters other than newline and tab (an ESC could recolour or move the cursor) and
    Unicode format characters (a right-to-left override reorders what is shown) are written as
    Python escapes, e.g. `\\x1b` or `\\u202e`, so the terminal shows every character that is there.
    """
    shown = "".join(
        ch if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf") else ascii(ch)[1:-1] for ch in text
    )
    return escape(shown)


def _current_context() -> Any:
    """The running command's context: typer >= 0.20 keeps its own copy of click, older ones use click."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # typer < 0.20 runs on the click package
        from click import get_current_context
    return get_current_context(silent=True)


def debug_enabled() -> bool:
    """Whether the root command was given --debug (False outside a command, e.g. under torchrun)."""
    ctx = _current_context()
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and isinstance(root.obj, dict) and root.obj.get("debug"))


def fail(error: BaseException) -> None:
    """Print a user-facing failure as one line and exit (see the module docstring for codes)."""
    if debug_enabled():
        raise error
    if isinstance(error, KeyboardInterrupt):
        err.print("interrupted: finished work is saved in the run folder; rerun the same command to resume",
                  highlight=False)
        raise typer.Exit(code=130)
    if isinstance(error, OSError):
        where = f" {error.filename}" if error.filename else ""
        err.print(f"[bold red]error:[/] cannot write or read{escape(where)}: {escape(str(error.strerror or error))}; "
                  "free disk space or fix permissions, then rerun the same command to resume", highlight=False)
        raise typer.Exit(code=1)
    err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
    raise typer.Exit(code=2)


@contextmanager
def failures() -> Iterator[None]:
    """`with failures():` around a command's work routes every user failure through `fail`."""
    try:
        yield
    except USER_FAILURES as error:
        fail(error)


def progress_factory(quiet: bool) -> Any:
    """A pipeline.ProgressFactory drawing one rich progress bar per stage on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    @contextmanager
    def bar(stage: str, total: int) -> Iterator[Any]:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=err, disable=quiet) as progress:
            task = progress.add_task({"sample": "sampling", "score": "scoring"}.get(stage, stage), total=total)
            yield lambda n: progress.advance(task, n)

    return bar
