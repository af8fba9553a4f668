"""Print the dose-response tables from the run folders (see README.md, "Analysis").

    PYTHONPATH=. python experiments/dose-response/analyse.py [--runs DIR]

Reads runs/<family>/estimates.json, manifest.json and samples.parquet only. Every statistic comes
from si_toolkit.estimators: the per-prompt SI written by `si rank`, paired_comparison for ΔSI
between doses, spearman_with_ci for the dose-SI rank correlation.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from si_toolkit import estimators as est

HERE = Path(__file__).resolve().parent
FAMILIES: dict[str, list[tuple[str, float, str]]] = {  # family -> (set, dose value, dose label)
    "blend": [(f"blend-{25 * k:03d}", 0.25 * k, f"{25 * k} %") for k in range(5)],
    "examples": [(f"examples-{k}", float(k), f"{k} example{'s' if k != 1 else ''}") for k in range(5)],
}
MOVING = {"blend": "blend", "examples": "pirate"}  # the variant whose text changes with the dose
PIRATE = re.compile(r"\b(arr+|matey|doubloons?|shipmates?|yo ho)\b", re.IGNORECASE)
FRENCH = re.compile(r"\b(je|le|la|les|est|et|une|des|pour|donc|alors|voilà|bonjour|nous|vous|réponse)\b",
                    re.IGNORECASE)
FRENCH_MIN_HITS = 3


def is_pirate(text: str) -> bool:
    return PIRATE.search(text) is not None


def is_french(text: str) -> bool:
    return len(FRENCH.findall(text)) >= FRENCH_MIN_HITS


def fmt_ci(ci: Any, digits: int = 3) -> str:
    if ci is None or ci[0] is None:
        return "n/a"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def per_prompt(est_json: dict[str, Any], name: str, prompt_ids: list[str]) -> np.ndarray:
    values = est_json["sets"][name]["per_prompt_si"]
    return np.array([values[p] for p in prompt_ids], dtype=np.float64)


def family_report(family: str, run: Path) -> list[str]:
    estimates = json.loads((run / "estimates.json").read_text(encoding="utf-8"))
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    samples = pd.read_parquet(run / "samples.parquet", columns=["set", "variant_label", "text"])
    prompt_ids = [p["id"] for p in manifest["prompts"]]
    ranking = {row["set"]: row for row in estimates["ranking"]}
    doses = FAMILIES[family]
    values = [per_prompt(estimates, name, prompt_ids) for name, _, _ in doses]
    lines = [f"### {family} (run {run.relative_to(HERE)}; n = {len(prompt_ids)} prompts, "
             f"K = 2, R = {estimates['sets'][doses[0][0]]['replicates']})", "",
             "| dose | set | SI | 95 % CI | accuracy | rank interval | ΔSI to previous dose [95 % CI] | "
             f"pirate marker ({MOVING[family]} / other) | French marker ({MOVING[family]} / other) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, (name, _, label) in enumerate(doses):
        s = estimates["sets"][name]
        step = "—"
        if i > 0:
            pc = est.paired_comparison(values[i], values[i - 1])
            step = f"{pc.delta:+.3f} {fmt_ci((pc.ci.low, pc.ci.high))}"
        texts = samples[samples["set"] == name]
        moving = texts[texts["variant_label"] == MOVING[family]]["text"]
        other = texts[texts["variant_label"] != MOVING[family]]["text"]
        marks = [f"{moving.map(f).mean():.2f} / {other.map(f).mean():.2f}" for f in (is_pirate, is_french)]
        lo, hi = ranking[name]["rank_interval"]
        lines.append(f"| {label} | {name} | {s['si']:.3f} | {fmt_ci(s['si_ci'])} | {s['accuracy']:.2f} | "
                     f"{lo}–{hi} | {step} | {marks[0]} | {marks[1]} |")
    si = np.array([estimates["sets"][name]["si"] for name, _, _ in doses])
    dose_values = np.array([d for _, d, _ in doses])
    rho = est.spearman_with_ci(dose_values, si)
    top = est.paired_comparison(values[-1], values[0])
    monotone = bool(np.all(np.diff(si) >= 0))
    reversals = [doses[i][2] for i in range(1, len(doses))
                 if (pc := est.paired_comparison(values[i], values[i - 1])).ci.high is not None and pc.ci.high < 0]
    # ρ over five doses takes the values 1 − 6Σd²/120; one adjacent swap gives 0.9 up to rounding.
    rises = rho["rho"] is not None and rho["rho"] >= 0.9 - 1e-9 and top.ci.low is not None and top.ci.low > 0
    lines += ["",
              f"- Spearman ρ(dose, SI) = {rho['rho']:.3f}, 95 % CI {fmt_ci(rho['ci'])} "
              f"(bootstrap over the {rho['n']} doses)." if rho["rho"] is not None else "- Spearman ρ undefined.",
              f"- Monotone (non-decreasing point estimates): {'yes' if monotone else 'no'}.",
              f"- ΔSI(top − bottom dose) = {top.delta:+.3f}, 95 % CI {fmt_ci((top.ci.low, top.ci.high))}, "
              f"p {'≤' if top.p_at_floor else '='} {top.p_value:.3g}.",
              f"- Resolved reversals (a step whose paired CI lies below 0): {', '.join(reversals) or 'none'}.",
              f"- Verdict by the plan: {'rises with the dose' if rises and not reversals else 'FAILS the plan'}"
              f"{' and monotone' if rises and monotone and not reversals else ''}."]
    accuracy = np.array([estimates["sets"][name]["accuracy"] for name, _, _ in doses])
    rho_acc = est.spearman_with_ci(dose_values, accuracy)
    tails = ", ".join(f"{label}: {int((v < -0.5).sum())}" for (_, _, label), v in zip(doses, values, strict=True))
    lines += ["", "Exploratory (not in the plan):",
              f"- Spearman ρ(dose, identification accuracy) = "
              + (f"{rho_acc['rho']:.3f}, 95 % CI {fmt_ci(rho_acc['ci'])}." if rho_acc["rho"] is not None else "undefined."),
              f"- Prompts whose SI is below −0.5 (the scorer confidently preferred the other variant): {tails}."]
    if family == "blend":
        null = estimates["sets"]["blend-000"]
        covers = null["si_ci"][0] <= 0 <= null["si_ci"][1]
        lines.append(f"- Null control blend-000 (identical variants): SI {null['si']:.3f} {fmt_ci(null['si_ci'])}, "
                     f"accuracy {null['accuracy']:.3f}; CI covers 0: {'yes' if covers else 'NO (failure)'}.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=HERE / "runs", help="folder holding runs/<family>/")
    args = parser.parse_args()
    for family in FAMILIES:
        run = args.runs / family
        if not (run / "estimates.json").exists():
            print(f"### {family}: no finished run in {run}\n")
            continue
        print("\n".join(family_report(family, run)) + "\n")


if __name__ == "__main__":
    main()
