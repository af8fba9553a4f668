"""The report in a real browser: headless Chromium opens report.html from disk (file://).

Chromium comes from Debian's `chromium` package. When it is missing the fixture runs
scripts/install-chromium.sh, and fails with the install command if that does not work: this
test never skips. Console messages are read from Chromium's own log (--enable-logging=stderr
prints each console message, uncaught exception and Content-Security-Policy violation as a
`:CONSOLE` line); `test_console_check_catches_errors` shows that the check sees them.
"""

from __future__ import annotations

import importlib.util
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from si_toolkit.report import ReportPaths, build_report

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "scripts" / "install-chromium.sh"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]
WINDOW = (1280, 2400)  # screenshot size in CSS pixels: the headline, ranking and first set


def _load_fixture_module() -> object:
    """tests/test_report.py, loaded by path so it works under any pytest import mode."""
    spec = importlib.util.spec_from_file_location("_report_fixture", Path(__file__).with_name("test_report.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _find_chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _find_chromium()
    if found is None:
        result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=1200)
        found = _find_chromium()
        if found is None:
            pytest.fail(
                f"headless Chromium is required for the report's browser test, and {INSTALL_SCRIPT} could not "
                f"install it (exit {result.returncode}):\n{result.stderr[-2000:]}\n"
                "Install it as root with: apt-get update && apt-get install -y chromium",
                pytrace=False,
            )
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    make_run = getattr(_load_fixture_module(), "make_run")
    return build_report(make_run(tmp_path_factory.mktemp("browser")))


def run_chromium(binary: str, page: Path, workdir: Path, *extra: str) -> tuple[str, list[str]]:
    """Open `page` headless with a fresh profile; return (stdout, the console lines of its log)."""
    profile = tempfile.mkdtemp(dir=workdir, prefix="chromium-profile-")
    proc = subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


class _Dom(HTMLParser):
    """Counts what the test asserts on in the DOM that Chromium serialised."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.scripts = 0
        self.ranking_rows = 0
        self._table: list[str | None] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table.append(a.get("id"))
        elif tag == "tr" and self._table and self._table[-1] == "ranking-table":
            self.ranking_rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_console_check_catches_errors(chromium: str, tmp_path: Path) -> None:
    # A page with the report's CSP, a console.error and a blocked file image: both must be seen.
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"img-src data:\">"
        "</head><body><script>console.error('deliberate-error')</script><img src=\"missing.png\"></body></html>",
        encoding="utf-8",
    )
    _, console = run_chromium(chromium, page, tmp_path, "--dump-dom")
    assert any("deliberate-error" in line for line in console)
    assert any("missing.png" in line and "Content Security Policy" in line for line in console)


def test_report_loads_without_console_errors(chromium: str, report: ReportPaths, tmp_path: Path) -> None:
    dom, console = run_chromium(chromium, report.html, tmp_path, "--dump-dom")
    assert console == []
    parsed = _Dom()
    parsed.feed(dom)
    assert parsed.ranking_rows == 1 + 3  # header row + one per set
    assert len(parsed.images) == len(report.figures) == 8  # ranking, rank intervals, 2 per set
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert parsed.scripts == 0  # hostile <script> text stayed text
    text = "".join(parsed.text)
    assert '<script>alert("principle")</script>' in text
    assert "<img src=x onerror=alert('out')>" in text
    for heading in ("1. Headline", "2. Ranking", "3. Per set", "4. Evidence", "5. Method"):
        assert heading in text
    assert "ρSB = 1.00" in text  # the subscript is rendered as an element, not typed as "_SB"
    assert "Î_{" not in text and "Σ_{" not in text


def test_report_screenshot_is_a_real_picture(chromium: str, report: ReportPaths, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _, console = run_chromium(
        chromium, report.html, tmp_path, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--hide-scrollbars",
    )
    assert console == []
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR: the first chunk after the signature
    assert (width, height) == WINDOW
    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    ink = (pixels.mean(axis=2) < 0.9).mean()  # share of pixels darker than near-white
    assert 0.02 < ink < 0.9 and float(np.std(pixels)) > 0.05  # text and figures, not a blank page
