"""The root `si` app: one typer app per job, merged here (typer's one-file-per-command layout)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from si_toolkit.cli import confirm, evolve, principles, rank, train
from si_toolkit.cli.common import err
from si_toolkit.errors import SIError

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts are plain: "[eval]" is an extra's name, not markup
    pretty_exceptions_show_locals=False,  # locals may hold configs or secrets
    help="Rank principle sets by the Sufficiency Index of a model's chain of thought.",
)
app.add_typer(rank.app)
app.add_typer(principles.app, name="principles")
app.add_typer(train.app)
app.add_typer(confirm.app)
app.add_typer(evolve.app)


def _print_version(value: bool) -> None:
    if value:
        from si_toolkit import __version__

        typer.echo(f"si-toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of every failure.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = {"debug": debug}


def main() -> None:
    """Console-script entry point."""
    debug = "--debug" in sys.argv[1:]
    try:
        app()
    except SIError as error:  # raised outside a command's own handler (should be rare)
        if debug:  # the traceback was asked for
            raise
        err.print(f"error: {error}", highlight=False)
        sys.exit(2)
