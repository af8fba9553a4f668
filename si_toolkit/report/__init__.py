"""The SI report: a page a reviewer can open, read and cite.

`build_report(run_dir)` reads a run folder (docs/run-folder.md) and writes into it
`report.html` (one self-contained file, figures embedded), `report.md`, `si.csv` and
`figures/*.png`. It needs no model and imports no torch.

Modules: `load` (read and check the run folder), `evidence` (per-response log posteriors and
the chains of thought shown), `tables` and `summary` (tables, headline, flags, method text),
`figures` (matplotlib, Agg), `assemble` (the content as a `Report`), `html` and `markdown`
(renderers that escape all user text), `build` (writes the files), `page` (a general page of
sections, rendered by the same writers, for reports that are not a ranking).
"""

from si_toolkit.report.build import ReportPaths, build_report
from si_toolkit.report.document import Figure, Report, SetSection, Table
from si_toolkit.report.evidence import Evidence, response_log_posteriors, select_evidence
from si_toolkit.report.html import render_html
from si_toolkit.report.load import RunData, load_run, validate_estimates
from si_toolkit.report.markdown import render_markdown
from si_toolkit.report.page import (Bullets, Page, Paragraph, Preformatted, Section, figure_from_matplotlib,
                                    render_page_html, render_page_markdown)

__all__ = [
    "build_report",
    "ReportPaths",
    "load_run",
    "validate_estimates",
    "RunData",
    "Report",
    "SetSection",
    "Table",
    "Figure",
    "Evidence",
    "response_log_posteriors",
    "select_evidence",
    "render_html",
    "render_markdown",
    "Page",
    "Section",
    "Paragraph",
    "Bullets",
    "Preformatted",
    "render_page_html",
    "render_page_markdown",
    "figure_from_matplotlib",
]
