"""Render a `Report` as one self-contained HTML file (figures as base64 PNG data URIs).

Every piece of text goes through `_e` (html.escape, quotes included) at the point where it
enters the page, so user text (principles, prompts, model output, set names, the command) is
always text, never markup. The page has no script, and its Content-Security-Policy forbids
scripts and any non-inline resource, a second guard should escaping ever be missed.
"""

from __future__ import annotations

import base64
import html
import math
import re

from si_toolkit.report.document import Figure, Report, SetSection, Table
from si_toolkit.report.evidence import Evidence
from si_toolkit.report.summary import NO_FLAGS
from si_toolkit.report.tables import fmt

__all__ = ["render_html", "formula_html", "CSP"]

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
:root { --ink: #1b1b1b; --muted: #555; --rule: #c8c8c8; --band: #f3f3f3; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.35em; border-bottom: 2px solid var(--ink); padding-bottom: 3px; margin-top: 2.2em; }
h3 { font-size: 1.12em; margin-top: 1.8em; }
nav { color: var(--muted); font-size: 0.92em; margin-bottom: 8px; }
nav a { color: inherit; margin-right: 14px; }
.headline { font-size: 1.12em; background: var(--band); border-left: 6px solid var(--ink); padding: 12px 16px; }
.reliability { font-weight: 600; }
.verdict { font-weight: 600; }
.flags { border: 2px dashed #8a5a00; background: #fff8e6; padding: 8px 16px; margin: 14px 0; }
.flags h3 { margin: 4px 0; font-size: 1em; }
.flags li { margin: 3px 0; }
table { border-collapse: collapse; margin: 10px 0 4px; font-size: 0.88em; min-width: 50%; }
.wide { overflow-x: auto; }
#ranking-table, table.kv { width: 100%; }
#ranking-table { font-size: 0.8em; }
caption { caption-side: bottom; text-align: left; color: var(--muted); font-size: 0.88em; padding-top: 4px; }
th, td { border: 1px solid var(--rule); padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #e6e6e6; }
tbody tr:nth-child(even) { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv td:first-child { white-space: nowrap; font-weight: 600; width: 14em; }
figure { margin: 16px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { color: var(--muted); font-size: 0.88em; }
.figs { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.figs figure { flex: 1 1 420px; margin: 8px 0; }
pre { white-space: pre-wrap; word-break: break-word; background: var(--band); border: 1px solid var(--rule);
  padding: 8px 10px; font: 13px/1.45 ui-monospace, "DejaVu Sans Mono", monospace; }
pre.cot { max-height: 18em; overflow: auto; }
article.ev { border: 1px solid var(--rule); border-left-width: 6px; padding: 6px 12px; margin: 10px 0; }
article.ev.most { border-left-style: solid; border-left-color: #222; }
article.ev.least { border-left-style: dotted; border-left-color: #777; }
.evhead { font-size: 0.92em; }
.prompt { color: var(--muted); font-size: 0.9em; margin: 4px 0; }
.note { color: var(--muted); font-style: italic; }
dl.defs dt { font-weight: 600; margin-top: 8px; }
dl.defs dd { margin-left: 1.2em; }
details { margin: 8px 0; }
footer { margin-top: 3em; color: var(--muted); font-size: 0.85em; border-top: 1px solid var(--rule); padding-top: 8px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_SUB = re.compile(r"_\{([^{}]*)\}")
_SUP = re.compile(r"\^\{([^{}]*)\}")


def formula_html(text: object) -> str:
    """Toolkit text with formula markup, escaped, then `_{x}` -> <sub>x</sub>, `^{x}` -> <sup>x</sup>.

    Escaping comes first, so the only tags in the result are the sub/sup the markup asked for.
    Never used on user text (set names, principles, prompts, model output).
    """
    escaped = _e(text)
    return _SUP.sub(r"<sup>\1</sup>", _SUB.sub(r"<sub>\1</sub>", escaped))


def render_html(report: Report) -> str:
    """The whole page as a string (UTF-8 when written)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(report.title)}</title><style>{_CSS}</style></head>",
        "<body><main>",
        f"<h1>{_e(report.title)}</h1>",
        '<nav><a href="#headline">1 Headline</a><a href="#ranking">2 Ranking</a><a href="#sets">3 Per set</a>'
        '<a href="#evidence">4 Evidence</a><a href="#method">5 Method</a></nav>',
        _headline(report),
        '<section id="ranking"><h2>2. Ranking</h2>',
        f'<p class="reliability">{_reliability(report.reliability)}</p>',
        _table(report.ranking, "ranking-table"),
        _figure(report.ranking_figure),
        _figure(report.rank_figure) if report.rank_figure is not None else "",
        "<h3>Racing: which ranks are decided</h3>" + _table(report.racing, "racing-table") if report.racing else "",
        "</section>",
        '<section id="sets"><h2>3. Per set</h2>',
        *(_set(s) for s in report.sets),
        "</section>",
        '<section id="evidence"><h2>4. Evidence: chains of thought</h2>',
        "<p>For each variant, the responses whose chain of thought the estimator attributed to the true "
        "variant most surely (solid bar) and least surely (dotted bar): ℓ = L[j,(j,r)] − logsumexp<sub>i</sub> "
        "L[i,(j,r)] on the cot span with the summed critic, and exp(ℓ) = p(true variant | CoT).</p>",
        *(_evidence_block(s) for s in report.sets),
        "</section>",
        _method(report),
        f"<footer>{_e(report.footer)}</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _headline(report: Report) -> str:
    if report.flags:
        items = "".join(f"<li>{_e(f)}</li>" for f in report.flags)
        flags = f'<div class="flags" id="flags"><h3>⚠ Flags raised for this run</h3><ul>{items}</ul></div>'
    else:
        flags = f'<p class="note" id="flags">{_e(NO_FLAGS)}</p>'
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in report.extra_notes)
    return (
        '<section id="headline"><h2>1. Headline</h2>'
        f'<p class="headline">{_e(report.headline)}</p>'
        f'<p class="reliability" id="reliability">{_reliability(report.reliability)}</p>{notes}{flags}'
        f"{_table(report.run_details, 'run-details', kv=True)}</section>"
    )


def _reliability(text: str) -> str:
    """The reliability sentence, with ρ_SB written as ρ<sub>SB</sub> (the sentence holds no user text)."""
    return formula_html(text.replace("ρ_SB", "ρ_{SB}"))


def _table(table: Table, table_id: str, kv: bool = False) -> str:
    numeric = table.numeric or (False,) * len(table.columns)
    formula = table.formula or (False,) * len(table.columns)
    head = "".join(f"<th>{formula_html(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if num else ''}>{formula_html(cell) if fx else _e(cell)}</td>"
                         for cell, num, fx in zip(row, numeric, formula)) + "</tr>"
        for row in table.rows
    )
    cls = ' class="kv"' if kv else ""
    # The wrapper scrolls sideways on a narrow window instead of pushing the page wider.
    return (
        f'<div class="wide"><table id="{_e(table_id)}"{cls}><caption>{formula_html(table.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _figure(fig: Figure) -> str:
    data = base64.b64encode(fig.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(fig.alt)}">'
        f"<figcaption>{formula_html(fig.caption)} (figures/{_e(fig.filename)})</figcaption></figure>"
    )


def _set(s: SetSection) -> str:
    rank = f"rank {s.rank}" if s.rank is not None else "unranked"
    role = f", {s.role.replace('-', ' ')}" if s.role else ""
    parts = [
        f'<section id="{_e(s.anchor)}"><h3>{_e(s.name)} <small>({_e(rank)}, mode {_e(s.mode)}{_e(role)})</small></h3>',
        f"<p>{_e(s.description)}</p>" if s.description else "",
        _table(s.summary, f"{s.anchor}-summary"),
        _table(s.breakdown, f"{s.anchor}-breakdown") if s.breakdown is not None else "",
        '<div class="figs">' + "".join(_figure(f) for f in s.figures) + "</div>",
    ]
    if s.variants:
        items = "".join(f"<dt>{_e(label)}</dt><dd><pre>{_e(text)}</pre></dd>" for label, text in s.variants)
        parts.append(
            f"<details><summary>The {len(s.variants)} variant texts (system prompts)</summary>"
            f'<dl class="defs">{items}</dl></details>'
        )
    parts.append("</section>")
    return "".join(parts)


def _evidence_block(s: SetSection) -> str:
    note = f'<p class="note">{_e(s.evidence_note)}</p>' if s.evidence_note else ""
    cards = "".join(_evidence_card(ev) for ev in s.evidence)
    return f'<section class="evset"><h3>{_e(s.name)}</h3>{note}{cards}</section>'


def _evidence_card(ev: Evidence) -> str:
    kind = "most surely identified" if ev.kind == "most" else "least surely identified"
    fmt_flag = "format ok" if ev.format_ok else "format broken"
    head = (
        f'<div class="evhead"><strong>{_e(ev.label)}</strong> (variant {ev.variant}) · {kind} · '
        f"p(true variant | CoT) = {math.exp(ev.log_post):.3f} (ℓ = {fmt(ev.log_post)} nats) · "
        f"prompt <code>{_e(ev.prompt_id)}</code>, replicate {ev.replicate} · {fmt_flag}</div>"
    )
    prompt = f'<p class="prompt">Prompt: {_e(ev.prompt)}</p>' if ev.prompt else ""
    cut = (
        f'<p class="note">Shown: the first {len(ev.cot)} of {ev.cot_chars} characters.</p>'
        if ev.cot_chars > len(ev.cot)
        else ""
    )
    return f'<article class="ev {_e(ev.kind)}">{head}{prompt}<pre class="cot">{_e(ev.cot)}</pre>{cut}</article>'


def _method(report: Report) -> str:
    defs = "".join(f"<dt>{formula_html(term)}</dt><dd>{formula_html(text)}</dd>" for term, text in report.method)
    return (
        '<section id="method"><h2>5. Method</h2>'
        f'<dl class="defs">{defs}</dl>'
        "<h3>Reproduce this run</h3>"
        f'<pre id="command"><code>{_e(report.command)}</code></pre></section>'
    )
