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

from si_toolkit.estimators import spearman_with_ci
from si_toolkit.report.document import Figure, Table
from si_toolkit.report.tables import fmt_p
from si_toolkit.report.page import Page, Paragraph, Section, render_page_html, render_page_markdown
from si_toolkit.safeio import atomic_write_bytes, atomic_write_text

__all__ = ["analyse", "verdict", "write_confirm_report"]

MIN_SETS_FOR_CLAIM = 4  # below this a rank correlation over sets cannot be told from chance
MIN_SEEDS_FOR_CLAIM = 2
OUTCOMES = {
    "accuracy_gain": "accuracy gain over base (enigma)",
    "adherence_gain": "adherence gain: SI(trained) − SI(base), held-out prompts",
    "reward_volatility": "reward volatility after warm-up (lower = steadier)",
    "final_reward": "final format reward (mean of last 10 % of steps)",
}


def analyse(config: Any, estimates: dict[str, Any], chosen: list[str], runs: list[dict[str, Any]],
            evals: dict[str, Any], adherence: dict[str, Any], geometry: dict[str, Any]) -> dict[str, Any]:
    from si_toolkit.confirm.evaluate import compare_items

    base_items = evals["base"]["items"]
    rows = []
    for run in runs:
        vs_base = compare_items(evals[run["name"]]["items"], base_items)["metrics"]["correct"]
        rows.append({
            "name": run["name"], "set": run["set"], "preset": run["preset"], "seed": run["seed"],
            "si": estimates["sets"][run["set"]]["si"], "accuracy": evals[run["name"]]["summary"]["accuracy"],
            "accuracy_gain": vs_base["delta"], "accuracy_gain_ci": vs_base["delta_ci"],
            "adherence": adherence[run["name"]], "adherence_gain": adherence[run["name"]] - adherence["base"][run["set"]],
            "reward_volatility": run["steadiness"]["reward_volatility"], "final_reward": run["steadiness"]["final_reward"],
            "steadiness": run["steadiness"],
        })
    ablation = _ablation(runs, evals)
    correlations = {}
    for key in OUTCOMES:
        per_set = [(estimates["sets"][name]["si"], _mean([r[key] for r in rows if r["set"] == name and r["preset"] == "enigma"]))
                   for name in chosen]
        x, y = np.array([p[0] for p in per_set], float), np.array([p[1] for p in per_set], float)
        correlations[key] = spearman_with_ci(x, y)
    result = {
        "schema": "si-toolkit/confirm/v1", "config": asdict(config), "sets": chosen,
        "si": {name: estimates["sets"][name]["si"] for name in chosen},
        "base": {"accuracy": evals["base"]["summary"]["accuracy"], "format_rate": evals["base"]["summary"]["format_rate"],
                 "adherence": adherence["base"]},
        "runs": rows, "ablation": ablation, "correlations": correlations,
        "geometry": {name: _geometry_summary(g) for name, g in geometry.items()},
    }
    result["verdict"] = verdict(result, n_seeds=config.seeds)
    return result


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
                    "format_delta": cmp["format_ok"]["delta"], "format_delta_ci": cmp["format_ok"]["delta_ci"]})
    return out


def _geometry_summary(result: dict[str, Any]) -> dict[str, Any]:
    last = result["layers"][-1]
    return {"layers": len(result["layers"]), "last_layer_sinkhorn": last.get("sinkhorn"),
            "effective_rank_base": last.get("effective_rank_base"),
            "effective_rank_trained": last.get("effective_rank_trained")}


def _ci_excludes_zero(ci: list[float] | None) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def verdict(result: dict[str, Any], *, n_seeds: int) -> str:
    """Plain-language verdict that never claims more than the data holds."""
    n_sets = len(result["sets"])
    acc = result["correlations"]["accuracy_gain"]
    lines = []
    if n_sets < MIN_SETS_FOR_CLAIM or n_seeds < MIN_SEEDS_FOR_CLAIM:
        lines.append(
            f"Inconclusive by design: {n_sets} set(s) × {n_seeds} seed(s) cannot support or refute the claim "
            f"(at least {MIN_SETS_FOR_CLAIM} sets and {MIN_SEEDS_FOR_CLAIM} seeds are needed for a rank correlation "
            "with a meaningful CI). The numbers below are descriptive only.")
    elif acc["rho"] is None:
        lines.append("Inconclusive: the outcomes did not vary across sets, so no correlation can be computed.")
    elif _ci_excludes_zero(acc["ci"]) and acc["rho"] > 0:
        lines.append(f"Supported: higher SI went with larger accuracy gains (Spearman ρ = {acc['rho']:.2f}, "
                     f"95 % CI [{acc['ci'][0]:.2f}, {acc['ci'][1]:.2f}], {n_sets} sets).")
    else:
        ci = f"[{acc['ci'][0]:.2f}, {acc['ci'][1]:.2f}]" if acc["ci"] else "undefined"
        lines.append(f"Not supported by this data: Spearman ρ(SI, accuracy gain) = {acc['rho']:.2f}, 95 % CI {ci}.")
    clear = [a for a in result["ablation"] if _ci_excludes_zero(a["delta_ci"])]
    lines.append(f"ENIGMA vs GRPO-only: {len(clear)} of {len(result['ablation'])} set/seed pairs show an accuracy "
                 "difference whose 95 % CI excludes 0" + (
                     " (" + ", ".join(f"{a['set']}: Δ = {a['delta']:+.2f}" for a in clear) + ")." if clear else "."))
    return " ".join(lines)


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
    runs = [(r["name"], _fmt(r["si"]), _fmt(r["accuracy"]), f"{_fmt(r['accuracy_gain'])} {_fmt(r['accuracy_gain_ci'])}",
             _fmt(r["adherence_gain"]), _fmt(r["reward_volatility"])) for r in result["runs"]]
    ablation = [(a["set"], str(a["seed"]), _fmt(a["enigma_accuracy"]), _fmt(a["grpo_accuracy"]),
                 f"{_fmt(a['delta'])} {_fmt(a['delta_ci'])}", fmt_p(a["p_value"], a.get("p_at_floor"))) for a in result["ablation"]]
    corr = [(OUTCOMES[k], _fmt(v["rho"]), _fmt(v["ci"]), str(v["n"])) for k, v in result["correlations"].items()]
    return [
        Table("Runs", ("run", "SI of its set", "accuracy", "gain vs base [95 % CI]", "adherence gain",
                       "reward volatility"), tuple(runs), (False, True, True, True, True, True)),
        Table("Ablation: ENIGMA − GRPO-only (paired on items)",
              ("set", "seed", "enigma acc.", "grpo acc.", "Δ [95 % CI]", "p"), tuple(ablation),
              (False, True, True, True, True, True)),
        Table("SI vs outcome across sets (Spearman ρ, bootstrap over sets)", ("outcome", "ρ", "95 % CI", "sets"),
              tuple(corr), (False, True, True, True)),
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
            Section("Verdict", "verdict", (Paragraph(result["verdict"]),
                                           Paragraph(f"Base model accuracy {_fmt(result['base']['accuracy'])}, format "
                                                     f"rate {_fmt(result['base']['format_rate'])}."))),
            *(Section(t.caption, f"table-{n}", (t,)) for n, t in enumerate(_tables(result), start=1)),
            Section("Training curves", "curves", (curves,)),
            Section("Geometry", "geometry", tuple(geometry) or (Paragraph("No geometry was computed."),)),
        ),
    )
    atomic_write_text(out / "confirm.md", render_page_markdown(page))
    atomic_write_text(out / "confirm.html", render_page_html(page))
