"""Print the test-retest tables from the run folders (see README.md, "Analysis").

    PYTHONPATH=. python experiments/test-retest/analyse.py [--runs DIR]

Reads runs/{a-seed0,a-seed1,b-seed0}/estimates.json and manifest.json, and the `si plan --json`
answers saved in plan/ (see README.md for the commands). Agreement is
estimators.spearman_with_ci over the sets; reliability is estimators.split_half_reliability on
the pooled per-prompt SI of the two seed-0 halves; the prompts needed for a reliability of 0.8
follow from the Spearman–Brown prophecy formula.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from si_toolkit import estimators as est

HERE = Path(__file__).resolve().parent
RUNS = ("a-seed0", "a-seed1", "b-seed0")
TARGET = 0.8


def load(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    return (json.loads((run / "estimates.json").read_text(encoding="utf-8")),
            json.loads((run / "manifest.json").read_text(encoding="utf-8")))


def prophecy(reliability: float, n: int, target: float = TARGET) -> float:
    """Spearman–Brown prophecy: prompts needed for `target` given `reliability` at n prompts."""
    if reliability <= 0:
        return math.inf
    return n * target * (1.0 - reliability) / (reliability * (1.0 - target))


def fmt_rho(result: dict[str, Any]) -> str:
    if result["rho"] is None:
        return f"undefined (n = {result['n']})"
    ci = f"[{result['ci'][0]:.2f}, {result['ci'][1]:.2f}]" if result["ci"] else "[n/a]"
    return f"{result['rho']:.2f} {ci} (n = {result['n']} sets)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=HERE / "runs", help="folder holding the three run folders")
    args = parser.parse_args()
    data = {name: load(args.runs / name) for name in RUNS}
    sets = sorted(data["a-seed0"][0]["sets"])
    roles = {s: data["a-seed0"][1]["sets"][s].get("role") for s in sets}
    ordinary = [s for s in sets if roles[s] is None]
    ranks = {name: {row["set"]: row for row in est_json["ranking"]} for name, (est_json, _) in data.items()}

    print("| set | K | " + " | ".join(f"{r}: SI [95 % CI] (rank)" for r in RUNS) + " |")
    print("|---|---|" + "---|" * len(RUNS))
    order = sorted(sets, key=lambda s: -data["a-seed0"][0]["sets"][s]["si"])
    for s in order:
        cells = []
        for r in RUNS:
            x = data[r][0]["sets"][s]
            lo, hi = ranks[r][s]["rank_interval"]
            cells.append(f"{x['si']:.3f} [{x['si_ci'][0]:.2f}, {x['si_ci'][1]:.2f}] ({ranks[r][s]['rank']}; {lo}–{hi})")
        role = f" ({roles[s]})" if roles[s] else ""
        print(f"| {s}{role} | {data['a-seed0'][0]['sets'][s]['K']} | " + " | ".join(cells) + " |")
    print("\n(rank; 95 % rank interval from the run's joint paired prompt bootstrap)\n")

    def si_vector(run: str, names: list[str]) -> np.ndarray:
        return np.array([data[run][0]["sets"][s]["si"] for s in names])

    print("| comparison | what changes | ρ, all 7 sets [95 % CI] | ρ, 5 ordinary sets [95 % CI] |")
    print("|---|---|---|---|")
    for label, other, what in (("a-seed0 vs a-seed1", "a-seed1", "sampling seed (same 16 prompts)"),
                               ("a-seed0 vs b-seed0", "b-seed0", "prompts (disjoint 16-prompt halves)")):
        all7 = est.spearman_with_ci(si_vector("a-seed0", sets), si_vector(other, sets))
        five = est.spearman_with_ci(si_vector("a-seed0", ordinary), si_vector(other, ordinary))
        print(f"| {label} | {what} | {fmt_rho(all7)} | {fmt_rho(five)} |")

    print()
    for label, names in (("all 7 sets", sets), ("5 ordinary sets", ordinary)):
        pooled = []
        for s in names:
            values = []
            for r in ("a-seed0", "b-seed0"):
                ids = [p["id"] for p in data[r][1]["prompts"]]
                values += [data[r][0]["sets"][s]["per_prompt_si"][i] for i in ids]
            pooled.append(values)
        rel = est.split_half_reliability(np.array(pooled))
        halves = est.spearman_with_ci(si_vector("a-seed0", names), si_vector("b-seed0", names))
        print(f"- {label}: {est.describe_reliability(rel)}")
        if rel.rho_sb is not None:
            print(f"  Spearman–Brown prophecy from ρ_SB({rel.n_prompts}) = {rel.rho_sb:.2f}: "
                  f"≈ {math.ceil(prophecy(rel.rho_sb, rel.n_prompts))} prompts for ρ ≥ {TARGET}.")
        if halves["rho"] is not None:
            print(f"  From the one 16-vs-16 split (ρ = {halves['rho']:.2f}): "
                  f"≈ {math.ceil(prophecy(halves['rho'], 16))} prompts for ρ ≥ {TARGET}.")
    plan_table(HERE / "plan")


def plan_table(folder: Path) -> None:
    """The `si plan --json` answers saved in `folder`, one row per (pilot, goal)."""
    files = sorted(folder.glob("*.json"))
    if not files:
        return
    print("\n| pilot | goal | set | prompts (R = 1) | achieved | note |")
    print("|---|---|---|---|---|---|")
    for path in files:
        answer = json.loads(path.read_text(encoding="utf-8"))
        pilot = Path(answer["run"]).name
        for row in answer["rows"]:
            goal = (f"separate from {row['versus']} (power ≥ {row['target']:g})" if row["goal"] == "separate"
                    else f"CI half-width ≤ {row['target']:g}")
            n = row["n_prompts"] if row["n_prompts"] is not None else "—"
            achieved = f"{row['achieved']:.3f}" if row["achieved"] is not None else "—"
            print(f"| {pilot} | {goal} | {row['set']} | {n} | {achieved} | {row['note'] or ''} |")


if __name__ == "__main__":
    main()
