"""A general report page: titled sections of paragraphs, lists, tables, figures and text blocks.

For reports that are not a ranking (e.g. `si evolve`): the content is assembled as plain,
unescaped text in a `Page`, and `render_page_html` / `render_page_markdown` escape it with the
same rules, styles and Content-Security-Policy as the SI report (`html.py`, `markdown.py`), so
user text (principles, model output) is always text, never markup, and the page has no script.
"""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib.figure import Figure as MplFigure

from si_toolkit.report import html as _html
from si_toolkit.report import markdown as _md
from si_toolkit.report.document import Figure, Table
from si_toolkit.report.figures import _png

__all__ = ["Paragraph", "Bullets", "Preformatted", "Block", "Section", "Page", "render_page_html",
           "render_page_markdown", "figure_from_matplotlib"]


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    """A list; `warn` styles it as the report's flag box."""

    items: tuple[str, ...]
    title: str = ""
    warn: bool = False


@dataclass(frozen=True)
class Preformatted:
    """Text shown verbatim (a diff, a principle set); `title` goes above it."""

    text: str
    title: str = ""


Block = Paragraph | Bullets | Preformatted | Table | Figure


@dataclass(frozen=True)
class Section:
    title: str
    anchor: str  # a safe HTML id chosen by the caller, never derived from user text
    blocks: tuple[Block, ...]


@dataclass(frozen=True)
class Page:
    title: str
    sections: tuple[Section, ...]
    footer: str = ""


def figure_from_matplotlib(fig: MplFigure, *, filename: str, alt: str, caption: str) -> Figure:
    """A report Figure (PNG bytes without metadata, as every report figure) from a matplotlib Figure."""
    return Figure(filename=filename, alt=alt, caption=caption, png=_png(fig))


def _html_block(block: Block, anchor: str, n: int) -> str:
    e = _html._e
    if isinstance(block, Paragraph):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Bullets):
        items = "".join(f"<li>{e(item)}</li>" for item in block.items)
        title = f"<h3>{e(block.title)}</h3>" if block.title else ""
        return f'<div class="flags">{title}<ul>{items}</ul></div>' if block.warn else f"{title}<ul>{items}</ul>"
    if isinstance(block, Preformatted):
        title = f'<p class="prompt">{e(block.title)}</p>' if block.title else ""
        return f"{title}<pre>{e(block.text)}</pre>"
    if isinstance(block, Table):
        return _html._table(block, f"{anchor}-table-{n}")
    return _html._figure(block)


def render_page_html(page: Page) -> str:
    """The page as one self-contained HTML document (figures as data URIs, no script)."""
    e = _html._e
    nav = "".join(f'<a href="#{e(s.anchor)}">{n} {e(s.title)}</a>' for n, s in enumerate(page.sections, start=1))
    sections = "".join(
        f'<section id="{e(s.anchor)}"><h2>{n}. {e(s.title)}</h2>'
        + "".join(_html_block(b, s.anchor, k) for k, b in enumerate(s.blocks)) + "</section>"
        for n, s in enumerate(page.sections, start=1))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{e(_html.CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(page.title)}</title><style>{_html._CSS}</style></head>",
        f"<body><main><h1>{e(page.title)}</h1><nav>{nav}</nav>",
        sections,
        f"<footer>{e(page.footer)}</footer>" if page.footer else "",
        "</main></body></html>",
    ]) + "\n"


def _md_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return _md.md_text(block.text)
    if isinstance(block, Bullets):
        head = f"**{_md.md_text(block.title)}**\n\n" if block.title else ""
        mark = "- ⚠ " if block.warn else "- "
        return head + "\n".join(f"{mark}{_md.md_text(item)}" for item in block.items)
    if isinstance(block, Preformatted):
        head = f"{_md.md_text(block.title)}\n\n" if block.title else ""
        return head + _md.fenced(block.text, "diff" if block.text.startswith("---") else "text")
    if isinstance(block, Table):
        return _md._table(block)
    return _md._figure(block)


def render_page_markdown(page: Page) -> str:
    """The page as GitHub-flavoured Markdown (figures linked from figures/)."""
    blocks = [f"# {_md.md_text(page.title)}",
              "Contents: " + " · ".join(f"{n} {_md.md_text(s.title)}" for n, s in enumerate(page.sections, start=1))]
    for n, s in enumerate(page.sections, start=1):
        blocks.append(f"## {n}. {_md.md_text(s.title)}")
        blocks.extend(_md_block(b) for b in s.blocks)
    if page.footer:
        blocks.append(f"*{_md.md_text(page.footer)}*")
    return "\n\n".join(b for b in blocks if b) + "\n"
