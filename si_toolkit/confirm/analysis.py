"""Analysis and report of `si confirm`: SI vs outcomes, the ablation table, the verdict.

Every number here is computed from the step outputs by functions defined elsewhere
(estimators, evaluate.compare_items, steadiness); this module only combines and presents them.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from si_toolkit.estimators import detectable_spearman, spearman_permutation_p, spearman_with_ci
from si_toolkit.report.document import Figure, Table
from si_toolkit.report.tables import fmt_p
from si_toolkit.report.page import Page, Paragraph, Section, render_page_html, render_page_markdown
from si_toolkit.safeio import atomic_write_bytes, atomic_write_text

__all__ = ["OUTCOMES", "analyse", "power_statement", "verdict", "write_confirm_report"]

MIN_SETS_FOR_CLAIM = 4  # below this a rank correlation over sets cannot be told from chance
MIN_SEEDS_FOR_CLAIM = 2
ALPHA = 0.05  # level of the one-sided test of the primary outcome
POWER = 0.8  # power at which the smallest detectable ρ is stated
# Every outcome of a run, defined once (docs/evaluation.md, "si confirm"). Gains are trained
# model minus base model on held-out prompts; steadiness numbers come from metrics.jsonl.
OUTCOMES = {
    "adherence_gain": "adherence gain: SI(trained) − SI(base) on its set, held-out prompts",
    "graded_format_gain": "graded-format gain: graded format reward of held-out answers, trained − base",
    "accuracy_gain": "held-out accuracy gain over base",
    "reward_volatility": "reward volatility after warm-up (lower = steadier)",
    "kl_drift": "KL drift from the reference over the run",
    "sinkhorn_drift": "Sinkhorn drift of hidden states over the run",
    "entropy_slope": "entropy slope (nats per step)",
    "final_reward": "final format reward (mean of the last 10 % of steps)",
}
# Per set, an outcome is summarised three ways: the enigma runs' mean over seeds, the grpo
# runs' mean, and their difference (what the SAMI and OT terms added).
CONTRASTS = ("enigma", "grpo", "difference")


def analyse(config: Any, estimates: dict[str, Any], chosen: list[str], runs: list[dict[str, Any]],
            evals: dict[str, Any], adherence: dict[str, Any], geometry: dict[str, Any],
            primary: tuple[str, str] = ("adherence_gain", "difference")) -> dict[str, Any]:
    """Combine the step outputs: per-run outcomes, per-set contrasts, SI correlations, verdict.

    primary: (outcome, contrast) the verdict is about, e.g. ("adherence_gain", "difference"):
    Spearman ρ between a set's SI and its ENIGMA − GRPO adherence gain, one-sided permutation
    test at ALPHA.
    """
    rows = [_run_row(run, estimates, evals, adherence) for run in runs]
    per_set = {name: _set_contrasts([r for r in rows if r["set"] == name]) for name in chosen}
    si = np.array([estimates["sets"][name]["si"] for name in chosen], float)
    correlations = {key: {c: _correlation(si, np.array([_nan(per_set[n][key][c]) for n in chosen], float))
                          for c in CONTRASTS} for key in OUTCOMES}
    outcome, contrast = primary
    detectable = detectable_spearman(len(chosen), alpha=ALPHA, power=POWER) if len(chosen) >= 3 else None
    result = {
        "schema": "si-toolkit/confirm/v2", "config": asdict(config), "sets": chosen,
        "si": {name: estimates["sets"][name]["si"] for name in chosen},
        "base": {"accuracy": evals["base"]["summary"]["accuracy"], "format_rate": evals["base"]["summary"]["format_rate"],
                 "graded_format_mean": evals["base"]["summary"].get("graded_format_mean"), "adherence": adherence["base"]},
        "runs": rows, "per_set": per_set, "ablation": _ablation(runs, evals), "correlations": correlations,
        "primary": {"outcome": outcome, "contrast": contrast, **correlations[outcome][contrast], "alpha": ALPHA,
                    "power": POWER, "detectable_rho": detectable},
        "geometry": {name: _geometry_summary(g) for name, g in geometry.items()},
    }
    result["power_statement"] = power_statement(result["primary"])
    result["verdict"] = verdict(result, n_seeds=config.seeds)
    return result


def _run_row(run: dict[str, Any], estimates: dict[str, Any], evals: dict[str, Any], adherence: dict[str, Any]) -> dict[str, Any]:
    from si_toolkit.confirm.evaluate import compare_items

    vs_base = compare_items(evals[run["name"]]["items"], evals["base"]["items"])["metrics"]
    steady = run["steadiness"]
    return {
        "name": run["name"], "set": run["set"], "preset": run["preset"], "seed": run["seed"],
        "si": estimates["sets"][run["set"]]["si"], "accuracy": evals[run["name"]]["summary"]["accuracy"],
        "accuracy_gain": vs_base["correct"]["delta"], "accuracy_gain_ci": vs_base["correct"]["delta_ci"],
        "graded_format_gain": vs_base["graded_format"]["delta"],
        "graded_format_gain_ci": vs_base["graded_format"]["delta_ci"],
        "adherence": adherence[run["name"]], "adherence_gain": adherence[run["name"]] - adherence["base"][run["set"]],
        **{key: steady.get(key) for key in ("reward_volatility", "kl_drift", "sinkhorn_drift", "entropy_slope",
                                            "final_reward")},
        "steadiness": steady,
    }


def _set_contrasts(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{outcome: {"enigma": mean over seeds, "grpo": mean, "difference": enigma − grpo}} for one set."""
    out = {}
    for key in OUTCOMES:
        enigma = _mean([r[key] for r in rows if r["preset"] == "enigma"])
        grpo = _mean([r[key] for r in rows if r["preset"] == "grpo"])
        out[key] = {"enigma": _finite(enigma), "grpo": _finite(grpo), "difference": _finite(enigma - grpo)}
    return out


def _finite(value: float) -> float | None:
    """None for an undefined number (an outcome no run of the set logged): JSON has no NaN."""
    return value if np.isfinite(value) else None


def _correlation(si: np.ndarray, outcome: np.ndarray) -> dict[str, Any]:
    """Spearman ρ with its bootstrap CI over sets and the one-sided permutation p (ρ > 0)."""
    return {**spearman_with_ci(si, outcome), "p_value": spearman_permutation_p(si, outcome, alternative="greater"),
            "p_value_less": spearman_permutation_p(si, outcome, alternative="less")}


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _mean(values: list[Any]) -> float:
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _ablation(runs: list[dict[str, Any]], evals: dict[str, Any]) -> list[dict[str, Any]]:
    """enigma vs grpo (paired on items) for each set and seed."""
    from si_toolkit.confirm.evaluate import compare_items

    out = []
    for run in runs:
        if run["preset"] != "enigma":
            continue
        twin = next(r for r in runs if r["set"] == run["set"] and r["seed"] == run["seed"] and r["preset"] == "grpo")
        cmp = compare_items(evals[run["name"]]["items"], evals[twin["name"]]["items"])["metrics"]
        out.append({"set": run["set"], "seed": run["seed"], "enigma_accuracy": cmp["correct"]["a"],
                    "grpo_accuracy": cmp["correct"]["b"], "delta": cmp["correct"]["delta"],
                    "delta_ci": cmp["correct"]["delta_ci"], "p_value": cmp["correct"]["p_value"],
                    "p_at_floor": cmp["correct"].get("p_at_floor", False),
                    "format_delta": cmp["format_ok"]["delta"], "format_delta_ci": cmp["format_ok"]["delta_ci"],
                    "graded_format_delta": cmp["graded_format"]["delta"],
                    "graded_format_delta_ci": cmp["graded_format"]["delta_ci"]})
    return out


def _geometry_summary(result: dict[str, Any]) -> dict[str, Any]:
    last = result["layers"][-1]
    return {"layers": len(result["layers"]), "last_layer_sinkhorn": last.get("sinkhorn"),
            "effective_rank_base": last.get("effective_rank_base"),
            "effective_rank_trained": last.get("effective_rank_trained")}


def _describe_primary(primary: dict[str, Any]) -> str:
    contrast = {"difference": "ENIGMA − GRPO", "enigma": "ENIGMA", "grpo": "GRPO-only"}[primary["contrast"]]
    return f"{contrast} {OUTCOMES[primary['outcome']].split(':')[0]}"


def power_statement(primary: dict[str, Any]) -> str:
    """What the design could detect: the smallest ρ found with 80 % power by the primary test."""
    n, detectable = primary["n"], primary["detectable_rho"]
    test = (f"a one-sided permutation test of Spearman ρ at α = {primary['alpha']:g} over {n} sets")
    if detectable is None:
        return f"Power: with {n} sets, {test} cannot reach {primary['power'] * 100:.0f} % power for any ρ."
    return (f"Power: {test} detects a population correlation of ρ ≥ {detectable:.2f} between SI and the per-set "
            f"outcome (measurement noise included) with {primary['power'] * 100:.0f} % power (simulation, bivariate normal); "
            f"weaker relations can be missed, so a null result here rules out only relations about that strong.")


def verdict(result: dict[str, Any], *, n_seeds: int) -> str:
    """Plain-language verdict on the primary outcome that never claims more than the data holds.

    Supported: p(ρ > 0) ≤ α. Against: p(ρ < 0) ≤ α (SI predicts the opposite), or the CI's upper
    bound falls below the detectable ρ (a relation the design could detect is ruled out).
    Otherwise not supported, and a weak test: the power statement says how weak.
    """
    n_sets = len(result["sets"])
    primary = result["primary"]
    what = _describe_primary(primary)
    lines = []
    if n_sets < MIN_SETS_FOR_CLAIM or n_seeds < MIN_SEEDS_FOR_CLAIM:
        lines.append(
            f"Inconclusive by design: {n_sets} set(s) × {n_seeds} seed(s) cannot support or refute the claim "
            f"(at least {MIN_SETS_FOR_CLAIM} sets and {MIN_SEEDS_FOR_CLAIM} seeds are needed for a rank correlation "
            "with a meaningful CI). The numbers below are descriptive only.")
    elif primary["rho"] is None:
        lines.append(f"Inconclusive: the {what} did not vary across sets, so no correlation can be computed.")
    else:
        rho, p, p_less, ci = primary["rho"], primary["p_value"], primary["p_value_less"], primary["ci"]
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "undefined"
        stats_text = f"Spearman ρ(SI, {what}) = {rho:.2f}, 95 % CI {ci_text}, one-sided p = {p:.3g}, {n_sets} sets"
        detectable = primary["detectable_rho"]
        if p <= primary["alpha"]:
            lines.append(f"Supported: higher SI went with a larger {what} ({stats_text}).")
        elif p_less <= primary["alpha"]:
            lines.append(f"Against the claim: higher SI went with a smaller {what} ({stats_text}; p(ρ < 0) = {p_less:.3g}).")
        elif ci and detectable is not None and ci[1] < detectable:
            lines.append(f"Not supported, and evidence against a strong relation: {stats_text}; the CI excludes the "
                         f"ρ ≥ {detectable:.2f} this design could detect.")
        else:
            lines.append(f"Not supported by this data, and a weak test: {stats_text}.")
    clear = [a for a in result["ablation"] if _ci_excludes_zero(a["delta_ci"])]
    lines.append(f"ENIGMA vs GRPO-only on held-out accuracy: {len(clear)} of {len(result['ablation'])} set/seed pairs "
                 "show a difference whose 95 % CI excludes 0" + (
                     " (" + ", ".join(f"{a['set']}: Δ = {a['delta']:+.2f}" for a in clear) + ")." if clear else "."))
    return " ".join(lines)


def _ci_excludes_zero(ci: list[float] | None) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


# ------------------------------------------------------------------------------------ report

def _curves_png(runs: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    keys = [("reward_mean", "format reward"), ("format_rate", "strict format rate"), ("entropy", "entropy (nats/token)"),
            ("sami_mi_bound", "SAMI bound (nats)")]
    fig = Figure(figsize=(10, 6))
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "x"]
    for k, (key, label) in enumerate(keys):
        ax = fig.add_subplot(2, 2, k + 1)
        for n, run in enumerate(runs):
            points = [(r["step"], r[key]) for r in run["rows"] if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), linestyle=styles[n % 4], marker=markers[n % 6], markersize=3,
                        color=str(0.1 + 0.6 * (n % 4) / 3), label=run["name"])
        ax.set(xlabel="step", ylabel=label)
    fig.axes[0].legend(fontsize="x-small", frameon=False)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, list) and len(value) == 2:
        return f"[{_fmt(value[0])}, {_fmt(value[1])}]"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _tables(result: dict[str, Any]) -> list[Table]:
    runs = [(r["name"], _fmt(r["si"]), _fmt(r["adherence_gain"]), _fmt(r["graded_format_gain"]),
             f"{_fmt(r['accuracy_gain'])} {_fmt(r['accuracy_gain_ci'])}", _fmt(r["reward_volatility"]),
             _fmt(r["kl_drift"], 4), _fmt(r["sinkhorn_drift"], 4)) for r in result["runs"]]
    per_set = [(name, _fmt(result["si"][name]),
                *(_fmt(result["per_set"][name][key][c]) for key in ("adherence_gain", "graded_format_gain")
                  for c in CONTRASTS)) for name in result["sets"]]
    ablation = [(a["set"], str(a["seed"]), _fmt(a["enigma_accuracy"]), _fmt(a["grpo_accuracy"]),
                 f"{_fmt(a['delta'])} {_fmt(a['delta_ci'])}", fmt_p(a["p_value"], a.get("p_at_floor")),
                 _fmt(a.get("graded_format_delta"))) for a in result["ablation"]]
    primary = (result["primary"]["outcome"], result["primary"]["contrast"])
    corr = [(OUTCOMES[k].split(":")[0] + (" (primary)" if (k, c) == primary else ""),
             {"difference": "ENIGMA − GRPO", "enigma": "ENIGMA", "grpo": "GRPO"}[c], _fmt(v["rho"]), _fmt(v["ci"]),
             _fmt(v.get("p_value")), str(v["n"]))
            for k, by_contrast in result["correlations"].items() for c, v in by_contrast.items() if c != "grpo"]
    return [
        Table("Runs (gains: trained − base, held-out prompts)",
              ("run", "SI of its set", "adherence gain", "graded-format gain", "accuracy gain [95 % CI]",
               "reward volatility", "KL drift", "Sinkhorn drift"), tuple(runs), (False, *[True] * 7)),
        Table("Per set: mean over seeds of ENIGMA, GRPO-only and ENIGMA − GRPO",
              ("set", "SI", "adherence: ENIGMA", "GRPO", "ENIGMA − GRPO", "graded format: ENIGMA", "GRPO",
               "ENIGMA − GRPO"), tuple(per_set), (False, *[True] * 7)),
        Table("SI vs outcome across sets (Spearman ρ, bootstrap CI over sets, one-sided permutation p for ρ > 0)",
              ("outcome", "contrast", "ρ", "95 % CI", "p", "sets"), tuple(corr), (False, False, True, True, True, True)),
        Table("Ablation: ENIGMA − GRPO-only on held-out items (paired)",
              ("set", "seed", "enigma acc.", "grpo acc.", "Δ acc. [95 % CI]", "p", "Δ graded format"), tuple(ablation),
              (False, True, True, True, True, True, True)),
    ]


def write_confirm_report(result: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> None:
    """confirm.md and confirm.html (the report package's page writers: self-contained, user text
    escaped) plus figures/: the training curves and a copy of each run's geometry figures."""
    curves = Figure("training_curves.png", "training curves", "Training curves of every run", _curves_png(runs))
    geometry = [Figure(f"geometry-{p.parent.parent.name}-{p.name}", p.stem, f"{p.parent.parent.name}: {p.stem}",
                       p.read_bytes()) for p in sorted((out / "geometry").glob("*/figures/*.png"))]
    for figure in (curves, *geometry):
        atomic_write_bytes(out / "figures" / figure.filename, figure.png)
    page = Page(
        title="Confirmation run",
        sections=(
            Section("Verdict", "verdict", (Paragraph(result["verdict"]), Paragraph(result["power_statement"]),
                                           Paragraph(f"Base model: held-out accuracy {_fmt(result['base']['accuracy'])}, "
                                                     f"strict format rate {_fmt(result['base']['format_rate'])}, graded "
                                                     f"format {_fmt(result['base']['graded_format_mean'])}."))),
            *(Section(t.caption, f"table-{n}", (t,)) for n, t in enumerate(_tables(result), start=1)),
            Section("Training curves", "curves", (curves,)),
            Section("Geometry", "geometry", tuple(geometry) or (Paragraph("No geometry was computed."),)),
        ),
    )
    atomic_write_text(out / "confirm.md", render_page_markdown(page))
    atomic_write_text(out / "confirm.html", render_page_html(page))
