"""The package layout rules hold: no import cycle, no upward import, no module over 400 lines."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "scripts" / "check-layout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layout"] = module
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_layout_problem() -> None:
    assert _checker().check() == []


def test_the_checker_finds_a_cycle_an_upward_import_and_a_long_module(tmp_path, monkeypatch) -> None:
    checker = _checker()
    package = tmp_path / "si_toolkit"
    (package / "rank").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "rank" / "__init__.py").write_text("")
    (package / "rank" / "a.py").write_text("from si_toolkit.rank import b\n")
    (package / "rank" / "b.py").write_text("import si_toolkit.rank.a\n")  # a <-> b
    (package / "report.py").write_text("from si_toolkit.rank.a import x\n")  # report is below rank
    (package / "errors.py").write_text("x = 1\n" * 401)
    monkeypatch.setattr(checker, "ROOT", package)
    problems = checker.check()
    assert any(p.startswith("import cycle: si_toolkit.rank.a -> si_toolkit.rank.b -> si_toolkit.rank.a") for p in problems)
    assert any("report.py: imports si_toolkit.rank.a, which is above it" in p for p in problems)
    assert any("errors.py: 401 lines" in p for p in problems)
