"""Render a `Report` as GitHub-flavoured Markdown (report.md), figures linked from figures/.

User text reaches the file in one of two ways only: inline, through `md_text`, which folds it
to one line and backslash-escapes every character Markdown or HTML could read as syntax
(CommonMark treats a backslash-escaped ASCII punctuation character as a literal); or as a
fenced code block, through `fenced`, whose fence is longer than any backtick run in the text,
so nothing inside can close it. Either way `<script>` shows as text, never as markup.
"""

from __future__ import annotations

import math
import re

from si_toolkit.report.document import Figure, Report, SetSection, Table
from si_toolkit.report.evidence import Evidence
from si_toolkit.report.summary import NO_FLAGS
from si_toolkit.report.tables import fmt

__all__ = ["render_markdown", "md_text", "md_formula", "fenced"]

# Characters that start Markdown syntax (emphasis, code, links, tables, strikethrough) or HTML
# (tags, entities). Escaping these is enough: line-start syntax (#, >, -, 1.) cannot occur
# because user text is never put at the start of a line by itself.
_SPECIAL = re.compile(r"([\\`*_\[\]<>&|~])")


def md_text(text: object) -> str:
    """`text` on one line with Markdown/HTML syntax characters backslash-escaped."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


_SUB = re.compile(r"\\_\{([^{}]*)\}")  # `_{x}` after md_text escaped the underscore
_SUP = re.compile(r"\^\{([^{}]*)\}")


def md_formula(text: object) -> str:
    """Toolkit text with formula markup: escaped like `md_text`, then `_{x}` -> <sub>x</sub> and
    `^{x}` -> <sup>x</sup> (inline HTML that GitHub renders). Never used on user text."""
    return _SUP.sub(r"<sup>\1</sup>", _SUB.sub(r"<sub>\1</sub>", md_text(text)))


def fenced(text: str, info: str = "text") -> str:
    """`text` as a fenced code block whose backtick fence no run in `text` can match."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip()}\n{fence}"


def render_markdown(report: Report) -> str:
    """The whole report as Markdown text."""
    blocks = [
        f"# {md_text(report.title)}",
        "Contents: 1 Headline · 2 Ranking · 3 Per set · 4 Evidence · 5 Method",
        "## 1. Headline",
        f"**{md_text(report.headline)}**",
        md_formula(report.reliability.replace("ρ_SB", "ρ_{SB}")),
        *(f"*{md_text(n)}*" for n in report.extra_notes),
        _flags(report),
        _table(report.run_details),
        "## 2. Ranking",
        md_formula(report.reliability.replace("ρ_SB", "ρ_{SB}")),
        _table(report.ranking),
        _figure(report.ranking_figure),
        _figure(report.rank_figure) if report.rank_figure is not None else "",
        f"### Racing: which ranks are decided\n\n{_table(report.racing)}" if report.racing else "",
        "## 3. Per set",
        *(_set(s) for s in report.sets),
        "## 4. Evidence: chains of thought",
        "For each variant, the responses whose chain of thought the estimator attributed to the true "
        "variant most and least surely: ℓ = L\\[j,(j,r)\\] − logsumexp\\_i L\\[i,(j,r)\\] on the cot "
        "span with the summed critic; exp(ℓ) = p(true variant \\| CoT).",
        *(_evidence_block(s) for s in report.sets),
        "## 5. Method",
        "\n".join(f"- **{md_formula(term)}**: {md_formula(text)}" for term, text in report.method),
        "### Reproduce this run",
        fenced(report.command, "sh"),
        f"*{md_text(report.footer)}*",
    ]
    return "\n\n".join(b for b in blocks if b) + "\n"


def _flags(report: Report) -> str:
    if not report.flags:
        return md_text(NO_FLAGS)
    return "**Flags raised for this run**\n\n" + "\n".join(f"- ⚠ {md_text(f)}" for f in report.flags)


def _table(table: Table) -> str:
    numeric = table.numeric or (False,) * len(table.columns)
    formula = table.formula or (False,) * len(table.columns)
    lines = [
        "| " + " | ".join(md_formula(c) for c in table.columns) + " |",
        "| " + " | ".join("---:" if num else "---" for num in numeric) + " |",
        *("| " + " | ".join((md_formula(cell) if fx else md_text(cell)) or " " for cell, fx in zip(row, formula))
          + " |" for row in table.rows),
    ]
    return "\n".join(lines) + f"\n\n*{md_formula(table.caption)}*"


def _figure(fig: Figure) -> str:
    # The file name is built by the toolkit (set index, never the set name), so it needs no escaping.
    return f"![{md_text(fig.alt)}](figures/{fig.filename})\n\n*{md_formula(fig.caption)}*"


def _set(s: SetSection) -> str:
    rank = f"rank {s.rank}" if s.rank is not None else "unranked"
    role = f", {s.role.replace('-', ' ')}" if s.role else ""
    parts = [f"### {md_text(s.name)} ({md_text(rank)}, mode {md_text(s.mode)}{md_text(role)})"]
    if s.description:
        parts.append(md_text(s.description))
    parts.append(_table(s.summary))
    if s.breakdown is not None:
        parts.append(_table(s.breakdown))
    parts.extend(_figure(f) for f in s.figures)
    if s.variants:
        texts = "\n\n".join(f"**{md_text(label)}**\n\n{fenced(text)}" for label, text in s.variants)
        parts.append(
            f"<details><summary>The {len(s.variants)} variant texts (system prompts)</summary>\n\n{texts}\n\n</details>"
        )
    return "\n\n".join(parts)


def _evidence_block(s: SetSection) -> str:
    parts = [f"### {md_text(s.name)}"]
    if s.evidence_note:
        parts.append(f"*{md_text(s.evidence_note)}*")
    parts.extend(_evidence_item(ev) for ev in s.evidence)
    return "\n\n".join(parts)


def _evidence_item(ev: Evidence) -> str:
    kind = "most surely identified" if ev.kind == "most" else "least surely identified"
    head = (
        f"**{md_text(ev.label)}** (variant {ev.variant}) · {kind} · p(true variant \\| CoT) = "
        f"{math.exp(ev.log_post):.3f} (ℓ = {fmt(ev.log_post)} nats) · prompt {md_text(ev.prompt_id)}, "
        f"replicate {ev.replicate} · {'format ok' if ev.format_ok else 'format broken'}"
    )
    parts = [head]
    if ev.prompt:
        parts.append(f"Prompt: {md_text(ev.prompt)}")
    parts.append(fenced(ev.cot))
    if ev.cot_chars > len(ev.cot):
        parts.append(f"*Shown: the first {len(ev.cot)} of {ev.cot_chars} characters.*")
    return "\n\n".join(parts)
