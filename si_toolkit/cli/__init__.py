"""The `si` command line: thin typer apps over the Python API, one per job.

    app.py         the root app (--debug, --version) merging the jobs' apps
    common.py      consoles, the one failure path (exit 2 / 1 / 130), shared options
    rank.py        si rank, sample, score, estimate, report
    principles.py  si principles validate / show
    train.py       si train (also `python -m si_toolkit.cli.train` under torchrun)
    confirm.py     si confirm, eval, geometry, steadiness
"""

from si_toolkit.cli.app import app, main

__all__ = ["app", "main"]
