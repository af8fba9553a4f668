"""lineage.jsonl: one JSON record per measured candidate, in creation order.

A record holds how the candidate was made (parent, second parent for a merge, operator, a
detail quoting the clauses moved, whether any of its text is model-written), its full variant
texts and principle texts, its selection-prompt numbers (SI with CI and the number of prompts
it was measured on, seed fidelity per variant and overall, the seed's accuracy on the same
prompts, format rate), whether it is admissible and why not, how its race ended, and whether
it is the run's best. The file is rewritten atomically after every generation, so a killed run
leaves the last complete version; a resumed run rewrites it identically, then goes on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from si_toolkit.errors import SIError
from si_toolkit.evolve.search import Info, Result
from si_toolkit.safeio import atomic_write_text

__all__ = ["LINEAGE_FILE", "make_record", "write_lineage", "read_lineage", "lineage_frame"]

LINEAGE_FILE = "lineage.jsonl"
_REQUIRED = ("id", "generation", "parent", "operator", "variant_texts", "selection", "admissible", "status")


def make_record(info: Info, result: Result, *, user_clauses: set[str], best: bool) -> dict[str, Any]:
    m = result.measurement
    ci = None if result.si_ci.low is None else [result.si_ci.low, result.si_ci.high]
    principle_set = info.candidate.to_principle_set(f"candidate {info.id}")
    return {
        "id": info.id, "generation": info.generation, "parent": info.parent, "second_parent": info.second_parent,
        "operator": info.operator, "detail": info.detail,
        "model_written": bool(info.candidate.clauses() - user_clauses),
        "principles": info.candidate.to_mapping()["principles"],
        "variant_labels": [v.label for v in principle_set.variants],
        "variant_texts": list(info.texts),
        "selection": {"si": result.si, "si_ci": ci, "n_prompts": result.n_prompts,
                      "fidelity": result.admission.fidelity,
                      "fidelity_per_variant": [float(x) for x in m.fidelity_per_variant],
                      "seed_accuracy": result.admission.seed_accuracy, "format_rate": m.format_rate},
        "admissible": result.admission.admissible, "inadmissible_reason": result.admission.reason,
        "status": result.status, "status_reason": result.reason, "best": best,
    }


def write_lineage(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Write every record (one JSON object per line) atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records))


def read_lineage(path: Path) -> list[dict[str, Any]]:
    """The records of a lineage.jsonl, checked for the fields every record has."""
    path = Path(path)
    if not path.is_file():
        raise SIError(f"{path}: no lineage file; run `si evolve` first")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SIError(f"{path}: line {number} is not JSON ({err.msg}); rerun `si evolve` to rewrite it") from None
        missing = [k for k in _REQUIRED if not isinstance(record, dict) or k not in record]
        if missing:
            raise SIError(f"{path}: line {number} lacks {missing}; rerun `si evolve` to rewrite it")
        records.append(record)
    return records


def lineage_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per candidate with the selection numbers as columns (what `.lineage` shows)."""
    rows = []
    for r in records:
        sel = r["selection"]
        ci = sel.get("si_ci") or [None, None]
        rows.append({
            "id": r["id"], "generation": r["generation"], "parent": r["parent"],
            "second_parent": r.get("second_parent"), "operator": r["operator"], "detail": r.get("detail", ""),
            "model_written": r.get("model_written", False), "si": sel["si"], "si_low": ci[0], "si_high": ci[1],
            "n_prompts": sel["n_prompts"], "fidelity": sel["fidelity"], "seed_accuracy": sel["seed_accuracy"],
            "admissible": r["admissible"], "inadmissible_reason": r.get("inadmissible_reason"),
            "status": r["status"], "best": r.get("best", False), "variant_texts": r["variant_texts"],
        })
    return pd.DataFrame(rows)
