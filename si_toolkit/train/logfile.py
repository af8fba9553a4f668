"""Read a training run's metrics.jsonl (no torch: `si steadiness` and reports use it too)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from si_toolkit.errors import SIError

__all__ = ["read_metrics"]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl: one JSON object per line, each with an integer ``step``.

    A run killed while writing leaves a truncated last line: it is dropped with a warning. A
    malformed line anywhere else means the file is corrupt: SIError naming the line. When a
    resumed run logged a step again, the later row wins. Rows come back sorted by step.
    """
    path = Path(path)
    if not path.is_file():
        raise SIError(f"{path}: metrics file not found; give the metrics.jsonl of a training run")
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    by_step: dict[int, dict[str, Any]] = {}
    for k, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if k == len(numbered) - 1:
                warnings.warn(f"{path}: line {lineno} is truncated (a killed run?); ignoring it", RuntimeWarning, stacklevel=2)
                break
            raise SIError(f"{path}: line {lineno}: malformed JSON ({err.msg}); the file is corrupt, "
                          "restore it or delete that line") from None
        step = row.get("step") if isinstance(row, dict) else None
        if isinstance(step, bool) or not isinstance(step, int):
            raise SIError(f"{path}: line {lineno}: expected a JSON object with an integer 'step', got {line[:80]!r}")
        by_step[step] = row
    return [by_step[s] for s in sorted(by_step)]
