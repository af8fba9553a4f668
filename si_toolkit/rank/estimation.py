"""The estimate stage: scores (+ samples, manifest sets) -> the `estimates.json` structure.

Every number comes from one function of `estimators.py` (SI-SPEC §3-5); this module only
arranges the score tables into tensors (`tensors.py`), calls those functions per set, span and
critic, and lays the results out as docs/run-folder.md specifies. It does no I/O: the caller
reads the run folder and writes `estimates.json`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from si_toolkit import estimators as est
from si_toolkit.errors import SIError
from si_toolkit.tensors import SPANS, ScoreTensor, score_tensor

__all__ = ["ESTIMATES_SCHEMA", "estimate_run"]

ESTIMATES_SCHEMA = "si-toolkit/estimates/v1"


@dataclass(frozen=True)
class _Settings:
    span: str
    critic: str
    n_bootstrap: int
    confidence: float
    seed: int

    def ci(self, values: np.ndarray) -> list[float] | None:
        """Prompt-level bootstrap CI of the mean of per-prompt values, as JSON."""
        return _interval(est.bootstrap_mean_ci(
            values, n_resamples=self.n_bootstrap, confidence=self.confidence, seed=self.seed))


def _num(value: float | None) -> float | None:
    """A plain JSON float, or None where the value is undefined (None, NaN, inf)."""
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _interval(interval: est.Interval) -> list[float] | None:
    if interval.low is None or interval.high is None:
        return None
    return [float(interval.low), float(interval.high)]


def _check_settings(span: str, critic: str, n_bootstrap: int, confidence: float) -> None:
    if n_bootstrap < 1:
        raise SIError(f"estimate: n_bootstrap = {n_bootstrap}; it must be >= 1 (default 2000)")
    if not 0.0 < confidence < 1.0:
        raise SIError(f"estimate: confidence = {confidence}; it must be in (0, 1) (default 0.95)")
    if span not in SPANS:
        raise SIError(f"estimate: span = {span!r} is not one of {list(SPANS)}")
    if critic not in est.CRITICS:
        raise SIError(f"estimate: critic = {critic!r} is not one of {sorted(est.CRITICS)}")


def _set_k(name: str, meta: Mapping[str, Any]) -> int:
    labels = meta.get("variant_labels")
    if not isinstance(labels, list) or len(labels) < 2:
        raise SIError(f"manifest.json: sets.{name}.variant_labels must list the K >= 2 variant labels")
    k = int(meta.get("K", len(labels)))
    if k != len(labels):
        raise SIError(f"manifest.json: sets.{name}.K = {k} but variant_labels has {len(labels)} entries")
    return k


def _tensors(scores: pd.DataFrame, name: str, k: int) -> dict[str, ScoreTensor]:
    """One tensor per span; every span must cover the same prompts and replicates."""
    tensors = {span: score_tensor(scores, name, span, k=k) for span in SPANS}
    ref = tensors[SPANS[0]]
    for span, t in tensors.items():
        if t.prompt_ids != ref.prompt_ids or t.L.shape != ref.L.shape:
            raise SIError(
                f"scores of set {name!r}: span {span!r} covers {len(t.prompt_ids)} prompts x "
                f"{t.L.shape[3]} replicates but span {SPANS[0]!r} covers {len(ref.prompt_ids)} x "
                f"{ref.L.shape[3]}; rerun `si score` to finish the run"
            )
    return tensors


def _critic_L(t: ScoreTensor, critic: str) -> np.ndarray:
    return est.critic_scores(t.L, t.n_tokens, critic)


def _span_summary(L: np.ndarray) -> dict[str, float | None]:
    """Means over prompts of the §3 quantities for one span and critic."""
    return {
        "mi_col_nats": _num(float(est.mi_col_per_prompt(L).mean())),
        "mi_row_nats": _num(float(est.mi_row_per_prompt(L).mean())),
        "mi_sym_nats": _num(float(est.mi_sym_per_prompt(L).mean())),
        "accuracy": _num(float(est.accuracy_per_prompt(L).mean())),
        "si": _num(float(est.si_per_prompt(L).mean())),
    }


def _headline(L: np.ndarray, s: _Settings) -> dict[str, Any]:
    """si, MI bounds and accuracy (with CIs) on the chosen span and critic."""
    si = est.si_per_prompt(L)
    mi_col = est.mi_col_per_prompt(L)
    accuracy = est.accuracy_per_prompt(L)
    mi_col_mean = float(mi_col.mean())
    return {
        "si": _num(float(si.mean())), "si_ci": s.ci(si),
        "mi_col_nats": _num(mi_col_mean), "mi_col_ci": s.ci(mi_col),
        "mi_col_bits": _num(est.nats_to_bits(mi_col_mean)),
        "mi_row_nats": _num(float(est.mi_row_per_prompt(L).mean())),
        "mi_sym_nats": _num(float(est.mi_sym_per_prompt(L).mean())),
        "accuracy": _num(float(accuracy.mean())), "accuracy_ci": s.ci(accuracy),
    }


def _per_principle(L: np.ndarray, name: str, meta: Mapping[str, Any], s: _Settings) -> list[dict[str, Any]]:
    out = []
    for entry in meta.get("principle_pairs") or []:
        if not isinstance(entry, Sequence) or len(entry) != 3:
            raise SIError(f"manifest.json: sets.{name}.principle_pairs entries must be "
                          f"[principle_id, variant_a, variant_b], got {entry!r}")
        pid, a, b = str(entry[0]), int(entry[1]), int(entry[2])
        si = est.per_principle_si_per_prompt(L, (a, b))
        out.append({"id": pid, "variants": [a, b], "si": _num(float(si.mean())), "si_ci": s.ci(si)})
    return out


def _per_variant(L: np.ndarray, labels: list[Any]) -> list[dict[str, Any]]:
    si = est.per_variant_si_per_prompt(L).mean(axis=0)  # (K,)
    accuracy = est.per_variant_accuracy(L)  # (K,)
    return [{"variant": j, "label": str(labels[j]), "si": _num(float(si[j])),
             "accuracy": _num(float(accuracy[j]))} for j in range(len(labels))]


def _format_rate(samples: pd.DataFrame | None, name: str) -> float | None:
    if samples is None:
        return None
    if "set" not in samples.columns or "format_ok" not in samples.columns:
        raise SIError("samples: columns 'set' and 'format_ok' are required (docs/run-folder.md); "
                      "rerun `si sample`")
    rows = samples.loc[samples["set"] == name, "format_ok"]
    return _num(float(rows.astype(bool).mean())) if len(rows) else None


def _check_prompts(name: str, scored: Mapping[str, float], expected: Sequence[str]) -> None:
    missing = sorted(set(expected) - set(scored))
    extra = sorted(set(scored) - set(expected))
    if missing or extra:
        raise SIError(f"scores of set {name!r} do not cover the run's prompts: missing "
                      f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
                      f"{' ...' if len(extra) > 5 else ''}; rerun `si score` to finish the run")


def _estimate_set(name: str, scores: pd.DataFrame, samples: pd.DataFrame | None,
                  meta: Mapping[str, Any], s: _Settings) -> tuple[dict[str, Any], dict[str, float]]:
    """The estimates.json entry of one set, and its per-prompt SI for the ranking."""
    k = _set_k(name, meta)
    tensors = _tensors(scores, name, k)
    head = tensors[s.span]
    L = _critic_L(head, s.critic)
    mi_cot = est.mi_col_per_prompt(_critic_L(tensors["cot"], s.critic))
    mi_full = est.mi_col_per_prompt(_critic_L(tensors["full"], s.critic))
    share = est.cot_share(mi_cot, mi_full, n_resamples=s.n_bootstrap, confidence=s.confidence, seed=s.seed)
    si_per_prompt = est.si_per_prompt(L)
    per_prompt = {pid: float(v) for pid, v in zip(head.prompt_ids, si_per_prompt, strict=True)}
    entry: dict[str, Any] = {
        "K": k, "n_prompts": len(head.prompt_ids), "replicates": int(head.L.shape[3]),
        "log_K": math.log(k), "chance": 1.0 / k,
        **_headline(L, s),
        "cot_share": _num(share.value), "cot_share_ci": _interval(share.ci),
        "format_rate": _format_rate(samples, name),
        "per_principle": _per_principle(L, name, meta, s),
        "per_variant": _per_variant(L, list(meta["variant_labels"])),
        "confusion": [[float(p) for p in row] for row in est.confusion_matrix(L)],
        "spans": {span: {critic: _span_summary(_critic_L(t, critic)) for critic in est.CRITICS}
                  for span, t in tensors.items()},
        "per_prompt_si": {pid: _num(v) for pid, v in per_prompt.items()},
    }
    return entry, per_prompt


def reliability_entry(rel: est.SplitHalfReliability) -> dict[str, Any]:
    """The `reliability` object of estimates.json from an estimators.SplitHalfReliability."""
    return {"rho": _num(rel.rho), "rho_sb": _num(rel.rho_sb), "n_prompts": rel.n_prompts, "n_sets": rel.n_sets,
            "n_splits": rel.n_splits, "level": rel.level, "reading": est.describe_reliability(rel)}


def _ranking(si_by_set: dict[str, dict[str, float]], s: _Settings) -> list[dict[str, Any]]:
    entries = est.rank_sets(si_by_set, n_resamples=s.n_bootstrap, confidence=s.confidence, seed=s.seed)
    return [e.to_record() for e in entries]


def _reliability(si_by_set: dict[str, dict[str, float]], seed: int) -> dict[str, Any]:
    matrix = est.common_prompt_matrix(si_by_set, list(si_by_set))
    return reliability_entry(est.split_half_reliability(matrix, seed=seed))


def estimate_run(
    scores: pd.DataFrame,
    samples: pd.DataFrame | None,
    sets_meta: Mapping[str, Mapping[str, Any]],
    *,
    span: str = "cot",
    critic: str = "sum",
    n_bootstrap: int = est.DEFAULT_N_RESAMPLES,
    confidence: float = est.DEFAULT_CONFIDENCE,
    seed: int = 0,
    prompt_ids: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Compute every SI-SPEC quantity per set and the ranking: the `estimates.json` structure.

    scores: the `scores.parquet` table; samples: the `samples.parquet` table (for the format
    rate; None leaves format_rate null); sets_meta: manifest["sets"] (K, variant_labels,
    principle_pairs per set). span/critic pick the headline si/mi_*/accuracy/per-variant/
    per-principle/confusion/ranking numbers; the default cot/sum is SI as SI-SPEC §4 defines it.
    `spans` always holds every span x critic. All values are plain floats/lists; null where
    undefined (a CI with < 2 prompts, the CoT share when the full-span MI is ~0 or the answer
    span is empty). The ranking carries, per set, ΔSI = SI(set) − SI(leader) with its paired CI
    and test-inversion p-value, the rank interval and P(rank 1) from the joint prompt
    bootstrap (on the prompts every set has); `reliability` is the split-half reliability of
    the ordering with its one-line reading (SI-SPEC §5).
    prompt_ids: the run's prompts (manifest["prompts"] ids), or set name -> its prompt ids when
    sets have different prompts (`si rank --until-decided`); when given, every set must have
    scores for exactly these, so a set whose scoring stopped early is refused, not estimated
    on fewer prompts.
    """
    _check_settings(span, critic, n_bootstrap, confidence)
    s = _Settings(span, critic, n_bootstrap, confidence, seed)
    if not sets_meta:
        raise SIError("manifest.json: 'sets' is empty; nothing to estimate (run `si sample` first)")
    unknown = sorted(set(scores["set"].astype(str)) - set(sets_meta)) if "set" in scores.columns else []
    if unknown:
        raise SIError(f"scores hold set(s) {unknown} that manifest.json 'sets' does not list; "
                      "the run folder mixes runs: rerun into a fresh folder")
    sets: dict[str, Any] = {}
    si_by_set: dict[str, dict[str, float]] = {}
    for name, meta in sets_meta.items():
        sets[name], si_by_set[name] = _estimate_set(name, scores, samples, meta, s)
        if prompt_ids is not None:
            expected = prompt_ids[name] if isinstance(prompt_ids, Mapping) else prompt_ids
            _check_prompts(name, si_by_set[name], expected)
    return {
        "schema": ESTIMATES_SCHEMA,
        "settings": {"span": span, "critic": critic, "n_bootstrap": n_bootstrap,
                     "confidence": confidence, "seed": seed},
        "sets": sets,
        "ranking": _ranking(si_by_set, s),
        "reliability": _reliability(si_by_set, seed),
    }
