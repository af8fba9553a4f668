"""`build_report`: write report.html, report.md, si.csv and figures/*.png into a run folder."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from si_toolkit.report.assemble import assemble_report
from si_toolkit.report.flags import set_role
from si_toolkit.report.html import render_html
from si_toolkit.report.load import load_run
from si_toolkit.report.markdown import render_markdown
from si_toolkit.report.tables import si_csv
from si_toolkit.report.upgrade import complete_estimates
from si_toolkit.safeio import atomic_write_bytes, atomic_write_text

__all__ = ["ReportPaths", "build_report"]


@dataclass(frozen=True)
class ReportPaths:
    """Where `build_report` wrote the report, all inside the run folder."""

    html: Path
    markdown: Path
    csv: Path
    figures: tuple[Path, ...]


def build_report(run_dir: Path) -> ReportPaths:
    """Write the report of the run folder `run_dir` from its files alone (no model is loaded).

    Reads manifest.json, estimates.json, samples.parquet and scores.parquet (the last two are
    optional: without them the evidence section says what is missing), and writes
    report.html (self-contained, figures embedded), report.md, si.csv and figures/*.png, each
    atomically. Everything is computed before the first write, so a malformed input leaves an
    earlier report untouched. An estimates.json written by an earlier version is read with the
    current definitions where the run folder allows it (`upgrade.complete_estimates`; the
    report says what was recomputed) and is not rewritten.

    Raises
    ------
    SIError
        When the folder, manifest.json or estimates.json is missing or malformed; the message
        names the file and the fix (e.g. "run `si estimate RUN_DIR` first").
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    estimates, note = complete_estimates(run.estimates, run.scores)
    run = replace(run, estimates=estimates)
    report = assemble_report(run, (note,))
    page = render_html(report)
    markdown = render_markdown(report)
    table = si_csv(run.estimates, run.manifest, {name: set_role(name, run.manifest) for name in run.estimates["sets"]})
    figures_dir = run_dir / "figures"
    ranking_figures = (report.ranking_figure,) if report.rank_figure is None else (report.ranking_figure,
                                                                                   report.rank_figure)
    figures = (*ranking_figures, *(f for s in report.sets for f in s.figures))
    figure_paths = []
    for fig in figures:
        path = figures_dir / fig.filename
        atomic_write_bytes(path, fig.png)
        figure_paths.append(path)
    paths = ReportPaths(
        html=run_dir / "report.html",
        markdown=run_dir / "report.md",
        csv=run_dir / "si.csv",
        figures=tuple(figure_paths),
    )
    atomic_write_text(paths.csv, table)
    atomic_write_text(paths.markdown, markdown)
    atomic_write_text(paths.html, page)
    return paths
