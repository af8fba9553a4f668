"""Copy the record of a `si confirm --profile cpu` run into this folder (no checkpoints).

    python experiments/confirm-cpu/collect.py reports/confirm-cpu

Writes confirm.md / confirm.html / confirm.json and figures/ as the run wrote them, each run's
metrics.jsonl, the benchmark summaries, the ranking (ranking.csv: SI with its CI), and two tables:
runs.csv (one row per training run, every outcome) and sets.csv (per set: SI and the
enigma / grpo / ENIGMA − GRPO mean of every outcome).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_COLUMNS = ("name", "set", "preset", "seed", "si", "adherence", "adherence_gain", "graded_format_gain",
               "accuracy", "accuracy_gain", "reward_volatility", "kl_drift", "sinkhorn_drift", "entropy_slope",
               "final_reward")


def main(source: Path) -> None:
    result = json.loads((source / "confirm.json").read_text())
    for name in ("confirm.md", "confirm.html", "confirm.json"):
        shutil.copy2(source / name, HERE / name)
    shutil.copytree(source / "figures", HERE / "figures", dirs_exist_ok=True)
    estimates = json.loads((source / "ranking" / "estimates.json").read_text())
    with (HERE / "ranking.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "set", "K", "n_prompts", "si", "si_lo", "si_hi"])
        for entry in sorted(estimates["ranking"], key=lambda e: e["rank"]):
            est = estimates["sets"][entry["set"]]
            low, high = est["si_ci"] if est.get("si_ci") else (None, None)
            writer.writerow([entry["rank"], entry["set"], est["K"], est["n_prompts"], est["si"], low, high])
    for folder in sorted((source / "train").iterdir()):
        target = HERE / "runs" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / "metrics.jsonl", target / "metrics.jsonl")
    for folder in sorted((source / "eval").iterdir()):
        target = HERE / "eval" / folder.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / "summary.json", target / "summary.json")
    with (HERE / "runs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RUN_COLUMNS)
        for row in result["runs"]:
            writer.writerow([row[c] for c in RUN_COLUMNS])
    outcomes = list(next(iter(result["per_set"].values())))
    with (HERE / "sets.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["set", "si", *(f"{o}_{c}" for o in outcomes for c in ("enigma", "grpo", "difference"))])
        for name in result["sets"]:
            per = result["per_set"][name]
            writer.writerow([name, result["si"][name], *(per[o][c] for o in outcomes for c in ("enigma", "grpo", "difference"))])
    print(f"copied {source} -> {HERE}; verdict: {result['verdict']}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "reports/confirm-cpu"))
