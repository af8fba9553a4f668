"""The held-out comparison, the flags and the one-line verdict of an evolve run.

Numbers come from `si_toolkit.estimators` (SI-SPEC §4, §5, §7): SI of the best and of the
seed with prompt-level bootstrap CIs, and the paired bootstrap ΔSI = SI(best) − SI(seed) on the
held-out prompts no selection step saw. The selection SI of the winner is biased upward (it
won because its noise was favourable), so it is shown only beside the held-out numbers.
"""

from __future__ import annotations

from typing import Any

from si_toolkit import estimators as est
from si_toolkit.evolve.fidelity import Admission
from si_toolkit.evolve.measure import Measurement

__all__ = ["held_out_numbers", "verdict_line", "flags_for", "FEW_PROMPTS", "LOW_FORMAT_RATE"]

FEW_PROMPTS = 20  # SI-SPEC §5: below this many prompts CIs are rough and the report says so
LOW_FORMAT_RATE = 0.5  # SI-SPEC §5: warn when fewer than half the responses follow the format


def _ci(interval: est.Interval) -> list[float] | None:
    return None if interval.low is None or interval.high is None else [interval.low, interval.high]


def held_out_numbers(best: Measurement, seed: Measurement, best_admission: Admission, *, n_bootstrap: int,
                     bootstrap_seed: int) -> dict[str, Any]:
    """SI of best and seed with CIs, ΔSI with its paired CI and p, and the best's fidelity."""
    kw: dict[str, Any] = {"n_resamples": n_bootstrap, "seed": bootstrap_seed}
    comparison = est.paired_comparison(best.si, seed.si, **kw)
    return {
        "n_prompts": len(best.prompt_ids),
        "best": {"si": float(best.si.mean()), "si_ci": _ci(est.bootstrap_mean_ci(best.si, **kw)),
                 "fidelity": best_admission.fidelity,
                 "fidelity_per_variant": [float(x) for x in best.fidelity_per_variant],
                 "format_rate": best.format_rate},
        "seed": {"si": float(seed.si.mean()), "si_ci": _ci(est.bootstrap_mean_ci(seed.si, **kw)),
                 "accuracy": best_admission.seed_accuracy, "format_rate": seed.format_rate},
        "delta_si": comparison.delta, "delta_ci": _ci(comparison.ci), "p_value": comparison.p_value,
        "admissible": best_admission.admissible, "inadmissible_reason": best_admission.reason,
    }


def _fmt_ci(ci: list[float] | None, signed: bool = False) -> str:
    if ci is None:
        return "[n/a]"
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if signed else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def verdict_line(summary: dict[str, Any]) -> str:
    """One line: held-out SI of best and seed, ΔSI with CI, and the best's fidelity."""
    h = summary["held_out"]
    b, s, n = h["best"], h["seed"], h["n_prompts"]
    if summary["best"] == "seed":
        return (f"best: the seed itself (no admissible candidate beat it on the selection prompts); "
                f"SI {s['si']:.2f} {_fmt_ci(s['si_ci'])} on {n} held-out prompts; accuracy {s['accuracy']:.2f}")
    return (f"best: SI {b['si']:.2f} {_fmt_ci(b['si_ci'])} vs seed {s['si']:.2f} {_fmt_ci(s['si_ci'])} on {n} "
            f"held-out prompts; ΔSI {h['delta_si']:+.2f} {_fmt_ci(h['delta_ci'], signed=True)}; "
            f"fidelity {b['fidelity']:.2f} (seed {s['accuracy']:.2f})")


def flags_for(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    """Every caveat a reader of the result needs, in plain words."""
    flags: list[str] = []
    h, best = summary["held_out"], summary["best"]
    if summary["stopped_by_budget"]:
        flags.append(f"The search stopped when the time budget ran out, after {len(records)} candidates were "
                     "measured; the best is chosen from what finished (rerun the same command to continue).")
    if best != "seed" and not summary["best_on_all_selection_prompts"]:
        flags.append("No candidate reached every selection prompt before the search stopped: the best was chosen "
                     f"on {summary['best_selection']['n_prompts']} prompts.")
    if best == "seed":
        flags.append("The best is the seed itself: no admissible candidate had a higher SI on the selection prompts.")
    else:
        delta_ci = h["delta_ci"]
        if delta_ci is None or delta_ci[0] <= 0.0 <= delta_ci[1]:
            flags.append(f"The held-out ΔSI CI includes 0: on {h['n_prompts']} held-out prompts the gain cannot be "
                         "told from noise.")
        selection_si = summary["best_selection"]["si"]
        flags.append(f"The best's SI on the selection prompts ({selection_si:.2f}) is not its gain: the largest of "
                     "many noisy estimates is biased upward (winner's curse). Its SI on the held-out prompts is "
                     f"{h['best']['si']:.2f}; only the held-out ΔSI is the gain.")
        if not h["admissible"]:
            flags.append(f"On the held-out prompts the best is not admissible: {h['inadmissible_reason']}; it may no "
                         "longer say what the seed meant.")
    best_record = next((r for r in records if r["id"] == best), None)
    if best_record is not None and best_record.get("model_written"):
        flags.append("The best holds model-written text (the rewrite operator): read its diff against the seed "
                     "before using it.")
    rejected = [r["id"] for r in records if not r["admissible"]]
    if rejected:
        flags.append(f"{len(rejected)} candidate(s) were inadmissible (seed fidelity below the seed's accuracy "
                     f"minus {summary['tolerance']}): {', '.join(rejected[:8])}{' ...' if len(rejected) > 8 else ''}; "
                     "they stay in the lineage and never win.")
    if h["n_prompts"] < FEW_PROMPTS:
        flags.append(f"Only {h['n_prompts']} held-out prompts (fewer than {FEW_PROMPTS}): the CIs are wide.")
    rate = min(h["best"]["format_rate"], h["seed"]["format_rate"])
    if rate < LOW_FORMAT_RATE:
        flags.append(f"Only {rate:.0%} of held-out responses follow the <think>/<answer> format; the cot span is "
                     "then the whole response up to any answer tag (SI-SPEC §1).")
    return flags
