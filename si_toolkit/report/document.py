"""The report as data: what the HTML and Markdown renderers lay out.

Every string here is plain, unescaped text (it may hold user text: principle wording, prompts,
model output, set names). Each renderer escapes it for its own format in one place, so the
content is assembled once and cannot reach a page as markup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from si_toolkit.report.evidence import Evidence

__all__ = ["Table", "Figure", "SetSection", "Report"]


@dataclass(frozen=True)
class Table:
    """A table of formatted cells; `numeric[c]` right-aligns column c.

    Captions and column headers are toolkit text and may hold formula markup (`_{sub}`,
    `^{sup}`); so may the cells of columns with `formula[c]` true. Other cells (set names,
    labels) are shown exactly as written.
    """

    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...] = ()
    formula: tuple[bool, ...] = ()


@dataclass(frozen=True)
class Figure:
    """A PNG figure: saved as figures/<filename> and embedded in the HTML."""

    filename: str
    alt: str
    caption: str
    png: bytes


@dataclass(frozen=True)
class SetSection:
    """Everything the report shows about one principle set."""

    name: str
    anchor: str  # a safe HTML id ("set-1"), never derived from user text
    rank: int | None
    mode: str
    role: str | None  # "null-control", "positive-control" or None
    description: str
    summary: Table
    breakdown: Table | None
    variants: tuple[tuple[str, str], ...]  # (label, system-prompt text)
    figures: tuple[Figure, ...]
    evidence: tuple[Evidence, ...]
    evidence_note: str  # why evidence is missing or partial, "" when complete


@dataclass(frozen=True)
class Report:
    """The whole report, in reading order (headline, ranking, per set, evidence, method).

    headline, flags and extra_notes may hold user text (set names) and never formula markup;
    method terms and definitions are toolkit text with formula markup.
    """

    title: str
    headline: str
    lead_clear: bool | None  # None when there is a single set
    reliability: str  # one sentence: how reproducible the ordering is with this many prompts
    flags: tuple[str, ...]
    run_details: Table
    ranking: Table
    ranking_figure: Figure
    rank_figure: Figure | None  # rank intervals; None when the estimates have none
    sets: tuple[SetSection, ...]
    method: tuple[tuple[str, str], ...]  # (term, definition)
    command: str
    footer: str
    extra_notes: tuple[str, ...] = field(default=())  # e.g. what was recomputed for an older estimates.json
    racing: Table | None = None  # `si rank --until-decided`: prompts per set, decisions, calls saved
