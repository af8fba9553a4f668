"""`si principles validate` and `si principles show`: check and inspect principle-set files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from si_toolkit.cli.common import FilesArg, failures, out

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Validate and inspect principle-set files.")


@app.command("validate")
def principles_validate(files: FilesArg) -> None:
    """Check principle-set files; prints one line per file and exits 2 on the first bad one."""
    from si_toolkit.principles import load_principle_set

    with failures():
        for path in files:
            s = load_principle_set(path)
            out.print(f"ok  {path}  ({s.name}: mode {s.mode}, K = {s.K})", highlight=False)


@app.command("show")
def principles_show(file: Annotated[Path, typer.Argument(help="A principle-set YAML file.")]) -> None:
    """Print a set's variants exactly as they go into the system prompt."""
    from si_toolkit.principles import load_principle_set

    with failures():
        s = load_principle_set(file)
    out.print(f"[bold]{escape(s.name)}[/] — mode {s.mode}" + (f", design {s.design}" if s.design else "") + f", K = {s.K}")
    if s.description:
        out.print(escape(s.description))
    for i, v in enumerate(s.variants):
        out.print(f"\n[bold]variant {i}: {escape(v.label)}[/]")
        out.print(escape(v.text))
