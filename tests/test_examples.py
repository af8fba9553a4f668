"""The examples run as a user runs them (embedded model, small sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_and_prints_the_ranking(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--n-prompts", "3", "--max-new-tokens", "12",
         "--out", str(tmp_path / "qs")], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["rank", "set", "K", "si"]
    assert {line.split()[1] for line in lines[1:4]} == {"strong-control", "null-control", "tone"}
    assert "leader:" in result.stdout and (tmp_path / "qs" / "report.html").is_file()
    assert "reproduce from the command line: si rank" in result.stdout
