"""Read an estimates.json written before rank intervals existed with today's definitions.

Such a file (it has no top-level `reliability`) lacks the rank interval, P(rank 1), the
p-value floor and the reliability of the ordering; its p-values came from a recentred
bootstrap that could disagree with the CI beside them; it counted identification ties as
misses (so a null control read 0 % against 50 % chance); and it gave the CoT share as 1 when
the answer span was empty. The report recomputes what it can with the estimators themselves
(SI-SPEC §3-5), from the per-prompt SI the file stores and the cot scores of scores.parquet,
shows n/a for the rest, and says so in a note. The file itself is never changed.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pandas as pd

from si_toolkit import estimators as est
from si_toolkit.errors import SIError
from si_toolkit.tensors import score_tensor

__all__ = ["complete_estimates", "is_current"]


def is_current(estimates: dict[str, Any]) -> bool:
    """True for a file written with rank intervals and reliability (this version's estimate stage)."""
    return "reliability" in estimates


def complete_estimates(estimates: dict[str, Any], scores: pd.DataFrame | None) -> tuple[dict[str, Any], str]:
    """(estimates with every key the report shows, a note on what was recomputed or "").

    `scores` holds the cot rows of scores.parquet (None when the file is absent).
    """
    if is_current(estimates):
        return estimates, ""
    out = copy.deepcopy(estimates)
    settings = out.get("settings", {})
    n_boot = int(settings.get("n_bootstrap", est.DEFAULT_N_RESAMPLES))
    confidence = float(settings.get("confidence", est.DEFAULT_CONFIDENCE))
    seed = int(settings.get("seed", 0))
    done, missing = [], []
    per_prompt = _per_prompt_si(out)
    if per_prompt is not None:
        entries = est.rank_sets(per_prompt, n_resamples=n_boot, confidence=confidence, seed=seed)
        out["ranking"] = [_ranking_row(e) for e in entries]
        matrix = est.common_prompt_matrix(per_prompt, list(per_prompt))
        out["reliability"] = _reliability(est.split_half_reliability(matrix, seed=seed))
        done.append("ΔSI CIs, p-values, rank intervals and the reliability (from the per-prompt SI)")
    else:
        for row in out["ranking"]:
            row.update(p_value=None, p_floor=None, p_at_floor=None, rank_interval=None, p_rank1=None)
        out["reliability"] = None
        missing.append("p-values, rank intervals and reliability (the file has no per-prompt SI)")
    if _accuracy_from_scores(out, scores, n_boot, confidence, seed):
        done.append("identification accuracy with shared ties (from scores.parquet)")
    else:
        missing.append("accuracy with shared ties (needs scores.parquet with the cot span under the sum critic)")
    for entry in out["sets"].values():
        if entry.get("cot_share") == 1.0 and entry.get("cot_share_ci") == [1.0, 1.0]:
            # Exactly 1 with a zero-width CI: L_full = L_cot on every prompt, i.e. no answer span.
            entry["cot_share"], entry["cot_share_ci"] = None, None
    note = "estimates.json was written by an earlier version of si-toolkit. Recomputed here with the current definitions: "
    note += "; ".join(done) if done else "nothing"
    note += (". Not available: " + "; ".join(missing) if missing else "")
    return out, note + ". Run `si estimate` on the run folder to rewrite the file."


def _per_prompt_si(estimates: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    values: dict[str, dict[str, float]] = {}
    for name, entry in estimates["sets"].items():
        stored = entry.get("per_prompt_si")
        if not isinstance(stored, dict) or not stored:
            return None
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in stored.values()):
            return None
        values[name] = {str(k): float(v) for k, v in stored.items()}
    return values


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _interval(interval: est.Interval) -> list[float] | None:
    return None if interval.low is None or interval.high is None else [interval.low, interval.high]


def _ranking_row(e: est.RankEntry) -> dict[str, Any]:
    """The same keys and values as the estimate stage writes (checked by tests/test_report.py)."""
    c = e.comparison
    return {
        "rank": e.rank, "set": e.name, "si": _num(e.si), "si_ci": _interval(e.si_ci),
        "delta_to_leader": None if c is None else _num(c.delta),
        "delta_ci": None if c is None else _interval(c.ci),
        "p_value": None if c is None else _num(c.p_value),
        "p_floor": None if c is None else _num(c.p_floor),
        "p_at_floor": None if c is None else c.p_at_floor,
        "tied_with_leader": e.tied_with_leader,
        "rank_interval": None if e.rank_interval is None else list(e.rank_interval),
        "p_rank1": _num(e.p_rank1),
    }


def _reliability(rel: est.SplitHalfReliability) -> dict[str, Any]:
    return {"rho": _num(rel.rho), "rho_sb": _num(rel.rho_sb), "n_prompts": rel.n_prompts, "n_sets": rel.n_sets,
            "n_splits": rel.n_splits, "level": rel.level, "reading": est.describe_reliability(rel)}


def _accuracy_from_scores(estimates: dict[str, Any], scores: pd.DataFrame | None, n_boot: int,
                          confidence: float, seed: int) -> bool:
    """Replace accuracy, its CI and per-variant accuracy with shared-tie values; False if impossible."""
    settings = estimates.get("settings", {})
    if scores is None or settings.get("span", "cot") != "cot" or settings.get("critic", "sum") != "sum":
        return False
    updates = {}
    try:
        for name, entry in estimates["sets"].items():
            L = score_tensor(scores, name, "cot", k=int(entry["K"])).L
            updates[name] = (est.accuracy_per_prompt(L), est.per_variant_accuracy(L))
    except SIError:
        return False  # an incomplete score grid: keep the stored numbers, say they were not updated
    for name, (per_prompt, per_variant) in updates.items():
        entry = estimates["sets"][name]
        entry["accuracy"] = float(per_prompt.mean())
        entry["accuracy_ci"] = _interval(est.bootstrap_mean_ci(per_prompt, n_resamples=n_boot,
                                                               confidence=confidence, seed=seed))
        for item in entry.get("per_variant") or []:
            j = item.get("variant")
            if isinstance(j, int) and 0 <= j < len(per_variant):
                item["accuracy"] = float(per_variant[j])
        cot_sum = entry.get("spans", {}).get("cot", {}).get("sum")
        if isinstance(cot_sum, dict):
            cot_sum["accuracy"] = entry["accuracy"]
    return True
