"""The general report page (si_toolkit.report.page): every piece of user text is escaped."""

from __future__ import annotations

from matplotlib.figure import Figure as MplFigure

from si_toolkit.report import (Bullets, Page, Paragraph, Preformatted, Section, Table,
                               figure_from_matplotlib, render_page_html, render_page_markdown)

EVIL = '<script>alert("x")</script> *bold* [link](http://e) | pipe `tick` & amp'


def _page() -> Page:
    fig = MplFigure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [0, 1])
    figure = figure_from_matplotlib(fig, filename="f.png", alt=EVIL, caption=EVIL)
    table = Table(caption=EVIL, columns=("name", "value"), rows=((EVIL, "1.0"),), numeric=(False, True))
    return Page(title=EVIL, footer=EVIL, sections=(
        Section("One " + EVIL, "one", (Paragraph(EVIL), Bullets((EVIL, "plain"), EVIL, warn=True), table)),
        Section("Two", "two", (Preformatted("--- a\n+++ b\n+" + EVIL + "\n```\n", EVIL), figure)),
    ))


def test_html_escapes_everything_and_has_no_script() -> None:
    page = render_page_html(_page())
    assert "<script" not in page
    assert page.count("&lt;script&gt;") >= 8
    assert 'http-equiv="Content-Security-Policy" content="default-src &#x27;none&#x27;' in page
    assert '<section id="one">' in page and '<div class="flags">' in page and "<pre>" in page
    assert "data:image/png;base64," in page
    assert '<td class=num>1.0</td>' in page


def test_markdown_escapes_inline_text_and_fences_verbatim_text() -> None:
    md = render_page_markdown(_page())
    fence = ""  # the open fence, "" outside one
    for line in md.splitlines():
        if not fence and line.startswith("```"):
            fence = line[: len(line) - len(line.lstrip("`"))]
        elif fence and line == fence:
            fence = ""
        elif not fence:
            assert "<script>" not in line, line  # outside a fence, user text is backslash-escaped
    assert "\\<script\\>" in md
    assert "````diff" in md  # the fence is longer than any backtick run inside the text
    assert "![" in md and "(figures/f.png)" in md
    assert md.startswith("# ")
