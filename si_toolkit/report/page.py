"""A plain page of sections (text, tables, figures, preformatted blocks) for the other reports.

`si confirm` and `si evolve` write their reports as a `Page`; `render_page_html` and
`render_page_markdown` lay it out with the SI report's own table, figure and escaping code (one
stylesheet, one Content-Security-Policy without scripts, every string escaped in one place).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from si_toolkit.report.document import Figure, Table
from si_toolkit.report.html import _CSS, CSP, _e, _figure, _table
from si_toolkit.report.markdown import _figure as _md_figure
from si_toolkit.report.markdown import _table as _md_table
from si_toolkit.report.markdown import fenced, md_text

__all__ = ["Block", "Section", "Page", "render_page_html", "render_page_markdown"]


@dataclass(frozen=True)
class Block:
    """One piece of a section: exactly one of text, table, figure or preformatted text.

    `emphasis` shows text in bold (a verdict); `preformatted` keeps line breaks (diffs, commands).
    """

    text: str | None = None
    table: Table | None = None
    figure: Figure | None = None
    preformatted: str | None = None
    emphasis: bool = False


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    subsections: tuple[Section, ...] = ()


@dataclass(frozen=True)
class Page:
    """A titled page of sections; `flags` are shown first, in a warning box."""

    title: str
    sections: tuple[Section, ...]
    flags: tuple[str, ...] = field(default=())
    footer: str = ""


def render_page_html(page: Page) -> str:
    """The page as one self-contained HTML document (figures embedded, no scripts)."""
    flags = ""
    if page.flags:
        items = "".join(f"<li>{_e(f)}</li>" for f in page.flags)
        flags = f'<div class="flags" id="flags"><h3>⚠ Flags</h3><ul>{items}</ul></div>'
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(page.title)}</title><style>{_CSS}</style></head>",
        f"<body><main><h1>{_e(page.title)}</h1>{flags}",
        *(_html_section(s, level=2, anchor=f"s{n}") for n, s in enumerate(page.sections, start=1)),
        f"<footer>{_e(page.footer)}</footer>" if page.footer else "",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def _html_section(section: Section, level: int, anchor: str) -> str:
    body = "".join(_html_block(b, f"{anchor}-t{k}") for k, b in enumerate(section.blocks))
    subs = "".join(_html_section(s, level + 1, f"{anchor}-{k}") for k, s in enumerate(section.subsections, start=1))
    return f'<section id="{anchor}"><h{level}>{_e(section.title)}</h{level}>{body}{subs}</section>'


def _html_block(block: Block, table_id: str) -> str:
    if block.table is not None:
        return _table(block.table, table_id)
    if block.figure is not None:
        return _figure(block.figure)
    if block.preformatted is not None:
        return f"<pre>{_e(block.preformatted)}</pre>"
    text = _e(block.text or "")
    return f"<p><strong>{text}</strong></p>" if block.emphasis else f"<p>{text}</p>"


def render_page_markdown(page: Page) -> str:
    """The page as Markdown (figures referenced as figures/<filename>)."""
    blocks = [f"# {md_text(page.title)}"]
    if page.flags:
        blocks.append("**Flags**\n\n" + "\n".join(f"- ⚠ {md_text(f)}" for f in page.flags))
    blocks += [_md_section(s, level=2) for s in page.sections]
    if page.footer:
        blocks.append(f"*{md_text(page.footer)}*")
    return "\n\n".join(blocks) + "\n"


def _md_section(section: Section, level: int) -> str:
    parts = [f"{'#' * level} {md_text(section.title)}", *(_md_block(b) for b in section.blocks)]
    parts += [_md_section(s, level + 1) for s in section.subsections]
    return "\n\n".join(parts)


def _md_block(block: Block) -> str:
    if block.table is not None:
        return _md_table(block.table)
    if block.figure is not None:
        return _md_figure(block.figure)
    if block.preformatted is not None:
        return fenced(block.preformatted)
    text = md_text(block.text or "")
    return f"**{text}**" if block.emphasis else text
