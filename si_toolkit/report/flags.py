"""Warnings shown beside the headline: sampling, model, size and format, and sets that behave
against their role (SI-SPEC §1, §5).

A control set says what it is with `role:` in its YAML (recorded in manifest.json), or by its
name when the run predates that field. A null control must not be separated from 0; a positive
control must be above 0 and above every null control. A set whose whole SI CI lies below 0 is
flagged with what that means.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from si_toolkit import estimators
from si_toolkit.principles import ROLES
from si_toolkit.report.tables import fmt, fmt_ci, fmt_pct, ordered_sets

__all__ = ["run_flags", "control_flags", "negative_si_flags", "set_role", "MIN_PROMPTS", "MIN_FORMAT_RATE"]

MIN_PROMPTS = estimators.MIN_PROMPTS  # SI-SPEC §5: warn below 20 prompts
MIN_FORMAT_RATE = 0.5  # SI-SPEC §5: warn when fewer than half the responses follow the format
# Set names that mark a control in runs written before `role:` existed (first match wins).
_NAME_ROLES = (("null-control", "null-control"), ("negative-control", "null-control"),
               ("positive-control", "positive-control"), ("strong-control", "positive-control"))


def set_role(name: str, manifest: dict[str, Any]) -> str | None:
    """"null-control", "positive-control" or None: the set's `role:`, else what its name says."""
    sets = manifest.get("sets") if isinstance(manifest.get("sets"), dict) else {}
    meta = sets.get(name) if isinstance(sets.get(name), dict) else {}
    if meta.get("role") in ROLES:
        return str(meta["role"])
    lowered = name.lower()
    return next((role for marker, role in _NAME_ROLES if marker in lowered), None)


def run_flags(manifest: dict[str, Any], est: dict[str, Any]) -> list[str]:
    """Warnings a reader must see next to the headline (SI-SPEC §1 and §5)."""
    flags = _sampling_flags(manifest)
    model = manifest.get("model", {}) if isinstance(manifest.get("model"), dict) else {}
    sampler, scorer = model.get("name"), model.get("scoring_model")
    if sampler and scorer and scorer != sampler:
        flags.append(
            f"The scoring model ({scorer}) is not the sampling model ({sampler}): the numbers are "
            "contrastive scores, not the sampling model's mutual information (SI-SPEC §1)."
        )
    names = ordered_sets(est)
    few = [f"{n} (n = {int(est['sets'][n]['n_prompts'])})" for n in names if est["sets"][n]["n_prompts"] < MIN_PROMPTS]
    if few:
        flags.append(
            f"Few prompts (n < {MIN_PROMPTS}): {', '.join(few)}. The CIs are wide, the ranking may "
            "change with more prompts, and no p-value finer than 1/n is shown (SI-SPEC §5)."
        )
    low = [
        f"{n} ({fmt_pct(est['sets'][n]['format_rate'])})"
        for n in names
        if est["sets"][n].get("format_rate") is not None and est["sets"][n]["format_rate"] < MIN_FORMAT_RATE
    ]
    if low:
        flags.append(
            f"Low format rate (< {fmt_pct(MIN_FORMAT_RATE)}): {', '.join(low)}. For a broken response "
            "the cot span is the text up to the answer tag, or all of it (SI-SPEC §1)."
        )
    settings = est.get("settings", {})
    if settings.get("span", "cot") != "cot" or settings.get("critic", "sum") != "sum":
        flags.append(
            f"Estimated with span = {settings.get('span')}, critic = {settings.get('critic')}; SI as "
            "SI-SPEC §4 defines it uses span cot with the summed critic."
        )
    stages = manifest.get("stages", {}) if isinstance(manifest.get("stages"), dict) else {}
    unfinished = [
        f"{k} ({v.get('status')})" for k, v in stages.items() if isinstance(v, dict) and v.get("status") != "done"
    ]
    if unfinished:
        flags.append(f"Unfinished stages in manifest.json: {', '.join(unfinished)}; the report may be partial.")
    return flags + control_flags(manifest, est) + negative_si_flags(est)


def _sampling_flags(manifest: dict[str, Any]) -> list[str]:
    config = manifest.get("config", {}) if isinstance(manifest.get("config"), dict) else {}
    sampling = config.get("sampling", {}) if isinstance(config.get("sampling"), dict) else {}
    # (key, value that means "no change to the model's distribution")
    neutral = (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0))
    off = [
        f"{key} = {sampling[key]}"
        for key, ok in neutral
        if sampling.get(key) is not None and not (key == "top_k" and sampling[key] in (0, -1)) and sampling[key] != ok
    ]
    if not off:
        return []
    return [
        f"Sampling was not T = 1 without truncation ({', '.join(off)}): the estimates are then not "
        "the model's mutual information, only a contrastive score (SI-SPEC §1)."
    ]


def control_flags(manifest: dict[str, Any], est_json: dict[str, Any]) -> list[str]:
    """Controls behaving against their role (SI-SPEC §6.2 for the null control)."""
    sets, conf = est_json["sets"], _conf(est_json)
    roles = {name: set_role(name, manifest) for name in ordered_sets(est_json)}
    nulls = [n for n, r in roles.items() if r == "null-control"]
    flags = []
    for name in nulls:
        ci = sets[name].get("si_ci")
        if ci is not None and not ci[0] <= 0.0 <= ci[1]:
            flags.append(
                f"Null control {name} is separated from 0 (SI = {fmt(sets[name]['si'])}, {conf} CI {fmt_ci(ci)}): "
                "its variants cannot differ, so the measurement itself is off (for example different seeds or "
                "padding per variant), or the variants are not identical."
            )
    for name in (n for n, r in roles.items() if r == "positive-control"):
        ci = sets[name].get("si_ci")
        problems = []
        if ci is None or ci[0] <= 0.0:
            problems.append(f"its {conf} CI {fmt_ci(ci)} covers 0")
        for null in nulls:
            delta, dci = _paired(est_json, name, null)
            if delta <= 0.0 or dci is None or dci[0] <= 0.0:
                problems.append(f"it is tied with or below null control {null} (ΔSI = SI({name}) − SI({null}) = "
                                f"{fmt(delta)}, {conf} CI {fmt_ci(dci)})")
        if problems:
            flags.append(
                f"Positive control {name} (SI = {fmt(sets[name]['si'])}) does not behave as one: "
                f"{'; '.join(problems)}. With this model, these prompts and this token budget the run cannot tell "
                "even deliberately different principles apart, so the ranking of the other sets says little."
            )
    return flags


def negative_si_flags(est_json: dict[str, Any]) -> list[str]:
    """Sets whose whole SI CI lies below 0, with what that means."""
    flags = []
    for name in ordered_sets(est_json):
        entry = est_json["sets"][name]
        ci = entry.get("si_ci")
        if ci is not None and ci[1] < 0.0:
            flags.append(
                f"{name} has SI = {fmt(entry['si'])} with its whole {_conf(est_json)} CI {fmt_ci(ci)} below 0: the "
                "scorer prefers the other variants' wording for these responses (the true variant's posterior is "
                "below chance on average). The mutual information itself cannot be negative, so this is noise or a "
                f"sampling/scoring mismatch, usually too few prompts (n = {int(entry['n_prompts'])}) or responses too "
                "short for the principle to show; it does not mean the principle is present in reverse."
            )
    return flags


def _conf(est_json: dict[str, Any]) -> str:
    return f"{100.0 * float(est_json.get('settings', {}).get('confidence', 0.95)):g} %"


def _paired(est_json: dict[str, Any], a: str, b: str) -> tuple[float, list[float] | None]:
    """ΔSI = SI(a) − SI(b) with its paired CI (from per-prompt SI), or the plain difference and None."""
    sets, settings = est_json["sets"], est_json.get("settings", {})
    pa, pb = sets[a].get("per_prompt_si"), sets[b].get("per_prompt_si")
    common = sorted(set(pa) & set(pb)) if isinstance(pa, dict) and isinstance(pb, dict) else []
    if not common or any(pa[p] is None or pb[p] is None for p in common):
        return float(sets[a]["si"]) - float(sets[b]["si"]), None
    cmp = estimators.paired_comparison(
        np.array([pa[p] for p in common], dtype=float), np.array([pb[p] for p in common], dtype=float),
        n_resamples=int(settings.get("n_bootstrap", estimators.DEFAULT_N_RESAMPLES)),
        confidence=float(settings.get("confidence", estimators.DEFAULT_CONFIDENCE)), seed=int(settings.get("seed", 0)),
    )
    ci = None if cmp.ci.low is None or cmp.ci.high is None else [cmp.ci.low, cmp.ci.high]
    return cmp.delta, ci
