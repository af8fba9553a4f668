"""Tests of si_toolkit.rank.estimation: the estimate stage and the estimates.json structure."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from si_toolkit import estimators as est
from si_toolkit.errors import SIError
from si_toolkit.rank.estimation import estimate_run

N_BOOT = 400  # enough resamples for the assertions below, fast enough for the suite

SET_KEYS = {
    "K", "n_prompts", "replicates", "log_K", "chance", "si", "si_ci", "mi_col_nats", "mi_col_ci",
    "mi_col_bits", "mi_row_nats", "mi_sym_nats", "accuracy", "accuracy_ci", "cot_share",
    "cot_share_ci", "format_rate", "per_principle", "per_variant", "confusion", "spans", "per_prompt_si",
}
SUMMARY_KEYS = {"mi_col_nats", "mi_row_nats", "mi_sym_nats", "accuracy", "si"}
RANK_KEYS = {"rank", "set", "si", "si_ci", "delta_to_leader", "delta_ci", "p_value", "p_floor", "p_at_floor",
             "tied_with_leader", "rank_interval", "p_rank1"}
RELIABILITY_KEYS = {"rho", "rho_sb", "n_prompts", "n_sets", "n_splits", "level", "reading"}


def channel_scores(p_y_given_c: np.ndarray, n: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """L[x, i, j, r] = log p(y_{j,r} | c_i) for responses drawn from p(y | c_j)."""
    k, m = p_y_given_c.shape
    y = np.stack([rng.choice(m, size=(n, r), p=p_y_given_c[j]) for j in range(k)], axis=1)  # (n, K, R)
    return np.transpose(np.log(p_y_given_c)[:, y], (1, 0, 2, 3))


def set_rows(name: str, cot: np.ndarray, answer: np.ndarray, prompt_ids: list[str],
             rng: np.random.Generator) -> list[dict[str, Any]]:
    """scores.parquet rows for one set; full = cot + answer, as scoring guarantees (§6.6)."""
    n, k, _, r = cot.shape
    n_cot, n_ans = rng.integers(1, 60, size=(n, k, r)), rng.integers(0, 10, size=(n, k, r))
    spans = {"cot": (cot, n_cot), "answer": (answer, n_ans), "full": (cot + answer, n_cot + n_ans)}
    return [
        {"set": name, "prompt_id": prompt_ids[x], "condition": i, "variant": j, "replicate": rr,
         "span": span, "logp_sum": float(L[x, i, j, rr]), "n_tokens": int(counts[x, j, rr])}
        for span, (L, counts) in spans.items()
        for x, i, j, rr in itertools.product(range(n), range(k), range(k), range(r))
    ]


def make_run(n: int = 24, r: int = 2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Two sets on the same prompts: `visible` (K = 3, informative CoT) and `null` (identical)."""
    rng = np.random.default_rng(seed)
    ids = [f"q-{x:03d}" for x in range(n)]
    channel = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]])
    visible = set_rows("visible", channel_scores(channel, n, r, rng),
                       channel_scores(channel[:, ::-1].copy(), n, r, rng) / 4, ids, rng)
    same = np.repeat(rng.uniform(-40, -1, size=(n, 1, 2, r)), 2, axis=1)  # equal under every condition
    null = set_rows("null", same, same / 3, ids, rng)
    scores = pd.DataFrame(visible + null)
    samples = pd.DataFrame({"set": ["visible"] * 4 + ["null"] * 2,
                            "format_ok": [True, False, False, False, True, True]})
    meta = {
        "visible": {"mode": "antithesis", "K": 3, "variant_labels": ["all", "flip-a", "flip-b"],
                    "principle_pairs": [["a", 0, 1], ["b", 0, 2]]},
        "null": {"mode": "alternatives", "K": 2, "variant_labels": ["x", "x-copy"], "principle_pairs": []},
    }
    return scores, samples, meta


@pytest.fixture(scope="module")
def run() -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any], dict[str, Any]]:
    scores, samples, meta = make_run()
    return scores, samples, meta, estimate_run(scores, samples, meta, n_bootstrap=N_BOOT)


def test_structure_matches_the_run_folder_schema(run: Any) -> None:
    _, _, _, out = run
    json.dumps(out, allow_nan=False)  # plain JSON: no numpy scalars, no NaN
    assert set(out) == {"schema", "settings", "sets", "ranking", "reliability"}
    assert set(out["reliability"]) == RELIABILITY_KEYS
    assert out["settings"] == {"span": "cot", "critic": "sum", "n_bootstrap": N_BOOT,
                               "confidence": 0.95, "seed": 0}
    for entry in out["sets"].values():
        assert set(entry) == SET_KEYS
        assert set(entry["spans"]) == {"cot", "answer", "full"}
        for by_critic in entry["spans"].values():
            assert set(by_critic) == {"sum", "mean"}
            assert all(set(summary) == SUMMARY_KEYS for summary in by_critic.values())
        assert all(set(v) == {"variant", "label", "si", "accuracy"} for v in entry["per_variant"])
        assert all(set(p) == {"id", "variants", "si", "si_ci"} for p in entry["per_principle"])
    assert all(set(row) == RANK_KEYS for row in out["ranking"])


def test_headline_numbers_come_from_the_estimators(run: Any) -> None:
    scores, _, _, out = run
    v = out["sets"]["visible"]
    assert (v["K"], v["n_prompts"], v["replicates"]) == (3, 24, 2)
    assert v["log_K"] == pytest.approx(math.log(3)) and v["chance"] == pytest.approx(1 / 3)
    assert v["si"] == pytest.approx(v["mi_col_nats"] / math.log(3))
    assert v["mi_col_bits"] == pytest.approx(v["mi_col_nats"] / math.log(2))
    assert v["mi_sym_nats"] == pytest.approx((v["mi_row_nats"] + v["mi_col_nats"]) / 2)
    assert v["spans"]["cot"]["sum"]["si"] == v["si"]
    assert v["si_ci"][0] < v["si"] < v["si_ci"][1] and v["si"] > 0.1
    assert np.mean(list(v["per_prompt_si"].values())) == pytest.approx(v["si"])
    assert np.mean([p["si"] for p in v["per_variant"]]) == pytest.approx(v["si"])
    np.testing.assert_allclose(np.sum(v["confusion"], axis=1), 1.0)
    # Chain rule: the CoT share is Î(cot) / Î(full), both from the same per-prompt estimator.
    share = v["spans"]["cot"]["sum"]["mi_col_nats"] / v["spans"]["full"]["sum"]["mi_col_nats"]
    assert v["cot_share"] == pytest.approx(share)
    assert [p["variants"] for p in v["per_principle"]] == [[0, 1], [0, 2]]
    assert v["format_rate"] == pytest.approx(0.25)


def test_identical_variants_estimate_zero(run: Any) -> None:
    null = run[3]["sets"]["null"]
    assert null["si"] == 0.0 and null["si_ci"] == [0.0, 0.0]  # CI covers 0 (invariant 2)
    assert null["accuracy"] == 0.5 and null["accuracy_ci"] == [0.5, 0.5]  # every response ties: 1/K
    assert null["cot_share"] is None and null["cot_share_ci"] is None  # 0 / 0 is undefined
    assert null["format_rate"] == 1.0 and null["per_principle"] == []


def test_ranking_puts_the_informative_set_first(run: Any) -> None:
    ranking = run[3]["ranking"]
    assert [row["set"] for row in ranking] == ["visible", "null"]
    leader, other = ranking
    assert leader["delta_to_leader"] == 0.0 and leader["p_value"] == 1.0 and leader["tied_with_leader"]
    assert other["delta_to_leader"] < 0 and other["delta_ci"][1] < 0 and not other["tied_with_leader"]
    visible = run[3]["sets"]["visible"]
    assert leader["si"] == visible["si"] and leader["si_ci"] == visible["si_ci"]
    # 24 prompts: no 1/n floor, only the bootstrap's resolution 1/B; the CI excludes 0, so p < 0.05.
    assert other["p_floor"] == pytest.approx(1 / N_BOOT) and other["p_value"] < 0.05
    assert leader["rank_interval"] == [1, 1] and other["rank_interval"] == [2, 2]
    assert leader["p_rank1"] == 1.0 and other["p_rank1"] == 0.0


def test_rank_uncertainty_and_reliability_come_from_the_estimators(run: Any) -> None:
    _, _, _, out = run
    per_prompt = {name: out["sets"][name]["per_prompt_si"] for name in ("visible", "null")}
    ids = sorted(per_prompt["visible"])
    matrix = np.array([[per_prompt[name][p] for p in ids] for name in ("visible", "null")])
    ranks = est.rank_uncertainty(matrix, n_resamples=N_BOOT, seed=0)
    assert [row["rank_interval"] for row in out["ranking"]] == [list(iv) for iv in ranks.rank_interval]
    assert [row["p_rank1"] for row in out["ranking"]] == list(ranks.p_rank1)
    # Two sets: a split-half Spearman ρ between two values is ±1 by construction, so undefined.
    rel = out["reliability"]
    assert rel["rho_sb"] is None and rel["level"] == "undefined" and "at least 3 sets" in rel["reading"]


def test_reliability_of_three_sets_and_a_few_prompts_floor() -> None:
    scores, samples, meta = make_run(n=8, r=1)
    third = scores[scores["set"] == "visible"].assign(set="visible-2")
    out = estimate_run(pd.concat([scores, third]), None, dict(meta, **{"visible-2": meta["visible"]}),
                       n_bootstrap=N_BOOT)
    rel = out["reliability"]
    assert rel["n_sets"] == 3 and rel["n_prompts"] == 8 and rel["reading"].startswith("With 8 prompts")
    # visible and its copy tie exactly in every half; the null set is below both.
    assert rel["rho"] == pytest.approx(est.split_half_reliability(np.array(
        [[out["sets"][n]["per_prompt_si"][p] for p in sorted(out["sets"][n]["per_prompt_si"])]
         for n in ("visible", "null", "visible-2")]), seed=0).rho)
    below = next(row for row in out["ranking"] if row["set"] == "null")
    assert below["p_floor"] == 1 / 8 and below["p_value"] >= 1 / 8  # 8 prompts resolve no finer p


def test_invariant_1_permuting_labels_in_the_tables(run: Any) -> None:
    scores, samples, meta, out = run
    perm = np.array([2, 0, 1])  # new index of old variant v is perm[v]
    visible = scores["set"] == "visible"
    shuffled = scores.copy()
    for col in ("condition", "variant"):
        shuffled.loc[visible, col] = perm[scores.loc[visible, col].to_numpy()]
    old = meta["visible"]
    labels = [old["variant_labels"][int(np.flatnonzero(perm == j)[0])] for j in range(3)]
    pairs = [[p, int(perm[a]), int(perm[b])] for p, a, b in old["principle_pairs"]]
    new_meta = dict(meta, visible=dict(old, variant_labels=labels, principle_pairs=pairs))
    again = estimate_run(shuffled.sample(frac=1.0, random_state=3), samples, new_meta, n_bootstrap=N_BOOT)
    a, b = out["sets"]["visible"], again["sets"]["visible"]
    for key in ("si", "mi_col_nats", "mi_row_nats", "mi_sym_nats", "accuracy", "cot_share"):
        assert b[key] == pytest.approx(a[key], abs=1e-12)
    for key in ("si_ci", "mi_col_ci", "accuracy_ci", "cot_share_ci"):
        assert b[key] == pytest.approx(a[key], abs=1e-9)
    assert [p["si"] for p in b["per_principle"]] == pytest.approx([p["si"] for p in a["per_principle"]])
    by_label = {p["label"]: p["si"] for p in a["per_variant"]}
    assert {p["label"]: p["si"] for p in b["per_variant"]} == pytest.approx(by_label)
    np.testing.assert_allclose(np.array(b["confusion"])[perm][:, perm], a["confusion"], atol=1e-12)


def test_span_and_critic_choose_the_headline(run: Any) -> None:
    scores, _, meta, _ = run
    out = estimate_run(scores, None, meta, span="full", critic="mean", n_bootstrap=N_BOOT)
    v = out["sets"]["visible"]
    chosen = v["spans"]["full"]["mean"]
    assert v["si"] == chosen["si"] and v["mi_row_nats"] == chosen["mi_row_nats"]
    assert v["format_rate"] is None
    assert out["settings"]["span"] == "full" and out["settings"]["critic"] == "mean"


def test_fewer_than_two_prompts_leaves_cis_null() -> None:
    scores, _, meta = make_run(n=1, r=1)
    out = estimate_run(scores, None, meta, n_bootstrap=N_BOOT)
    v = out["sets"]["visible"]
    assert v["si_ci"] is None and v["accuracy_ci"] is None and v["si"] is not None
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"span": "middle"}, "span = 'middle'"),
        ({"critic": "max"}, "critic = 'max'"),
        ({"n_bootstrap": 0}, "n_bootstrap = 0"),
        ({"confidence": 1.5}, "confidence = 1.5"),
    ],
    ids=["span", "critic", "n_bootstrap", "confidence"],
)
def test_bad_settings_are_refused(change: dict[str, Any], message: str) -> None:
    scores, _, meta = make_run(n=3, r=1)
    with pytest.raises(SIError, match=message):
        estimate_run(scores, None, meta, **change)


def test_scores_and_manifest_must_agree() -> None:
    scores, _, meta = make_run(n=3, r=1)
    with pytest.raises(SIError, match=r"\['null'\] that manifest.json"):
        estimate_run(scores, None, {"visible": meta["visible"]})
    with pytest.raises(SIError, match="no rows for set 'null'"):
        estimate_run(scores[scores["set"] == "visible"], None, meta)
    bad = dict(meta, null=dict(meta["null"], K=3))
    with pytest.raises(SIError, match="K = 3 but variant_labels has 2"):
        estimate_run(scores, None, bad)
    drop = (scores["set"] == "visible") & (scores["span"] == "answer") & (scores["prompt_id"] == "q-001")
    partial = scores[~drop]
    with pytest.raises(SIError, match="span 'answer' covers 2 prompts"):
        estimate_run(partial, None, meta)


def test_sets_must_cover_the_run_prompts_when_given() -> None:
    scores, _, meta = make_run(n=3, r=1)
    ids = ["q-000", "q-001", "q-002"]
    out = estimate_run(scores, None, meta, n_bootstrap=N_BOOT, prompt_ids=ids)
    assert out["sets"]["visible"]["n_prompts"] == 3
    with pytest.raises(SIError, match=r"set 'visible' do not cover.*missing \['q-003'\]"):
        estimate_run(scores, None, meta, n_bootstrap=N_BOOT, prompt_ids=[*ids, "q-003"])


def test_cot_share_is_undefined_when_no_response_has_an_answer() -> None:
    # Every response ran out of tokens inside its CoT: the answer span is empty (0 tokens, 0 nats),
    # so L_full = L_cot and "CoT share 1.00 [1.00, 1.00]" would be a tautology, not a finding.
    rng = np.random.default_rng(4)
    ids = [f"q-{x:03d}" for x in range(10)]
    channel = np.array([[0.7, 0.3], [0.2, 0.8]])
    cot = channel_scores(channel, 10, 1, rng)
    rows = set_rows("cut", cot, np.zeros_like(cot), ids, rng)
    for row in rows:
        if row["span"] == "answer":
            row["n_tokens"] = 0
    meta = {"cut": {"mode": "alternatives", "K": 2, "variant_labels": ["a", "b"], "principle_pairs": []}}
    entry = estimate_run(pd.DataFrame(rows), None, meta, n_bootstrap=N_BOOT)["sets"]["cut"]
    assert entry["si"] > 0 and entry["cot_share"] is None and entry["cot_share_ci"] is None
