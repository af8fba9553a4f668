"""Tests of si_toolkit.estimators: SI-SPEC §6 invariants, hand-worked values, bootstrap, ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from si_toolkit import estimators as est
from si_toolkit.errors import SIError

LOG2 = math.log(2.0)


# ---------------------------------------------------------------- helpers


def hand_tensor() -> np.ndarray:
    """n = 1 prompt, K = 2, R = 1. Columns are responses (variant j), rows conditions i:

                 j=0   j=1
        i=0  [   -1,   -3 ]
        i=1  [   -2,   -3 ]
    """
    L = np.zeros((1, 2, 2, 1))
    L[0, :, 0, 0] = [-1.0, -2.0]
    L[0, :, 1, 0] = [-3.0, -3.0]
    return L


def channel_tensor(p_y_given_c: np.ndarray, n: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """Responses y_{j,r} ~ p(y | c_j) for n prompts; L[x, i, j, r] = log p(y_{j,r} | c_i) exactly."""
    k, m = p_y_given_c.shape
    y = np.stack([rng.choice(m, size=(n, r), p=p_y_given_c[j]) for j in range(k)], axis=1)  # (n, K, R)
    log_p = np.log(p_y_given_c)  # (K, M)
    return np.transpose(log_p[:, y], (1, 0, 2, 3))  # (K_i, n, K_j, R) -> (n, K_i, K_j, R)


def analytic_mi(p_y_given_c: np.ndarray) -> float:
    """I(C; Y) = Σ_c p(c) Σ_y p(y|c) log(p(y|c) / p(y)), uniform p(c)."""
    k = p_y_given_c.shape[0]
    p_y = p_y_given_c.mean(axis=0)
    return float((p_y_given_c * np.log(p_y_given_c / p_y)).sum() / k)


CHANNEL = np.array([[0.6, 0.2, 0.1, 0.05, 0.05], [0.1, 0.5, 0.2, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])


@st.composite
def score_tensors(draw: st.DrawFn, dyadic: bool = False) -> np.ndarray:
    """Random (n, K, K, R) tensors; dyadic values (multiples of 1/4) make shifts exact."""
    n, k, r = draw(st.integers(1, 4)), draw(st.integers(2, 4)), draw(st.integers(1, 3))
    if dyadic:
        ints = draw(hnp.arrays(np.int64, (n, k, k, r), elements=st.integers(-400, 0)))
        return ints / 4.0
    return draw(hnp.arrays(np.float64, (n, k, k, r), elements=st.floats(-300.0, 0.0)))


# ---------------------------------------------------------------- hand-worked values


def test_hand_worked_column_row_and_accuracy() -> None:
    L = hand_tensor()
    # Column: response (0,0) posterior of c_0 = e^-1 / (e^-1 + e^-2), so ℓ = -log(1 + e^-1) = -0.3133;
    # response (1,0) ties, ℓ = -log 2 = -0.6931. Î_col = log 2 + (-0.3133 - 0.6931)/2 = 0.1899.
    l0, l1 = -math.log(1 + math.exp(-1)), -LOG2
    assert est.mi_col_per_prompt(L)[0] == pytest.approx(LOG2 + (l0 + l1) / 2)
    assert est.mi_col_per_prompt(L)[0] == pytest.approx(0.18994, abs=1e-5)
    # Row: i=0: L[0,0] - lse(L[0,0], L[0,1]) = -1 - lse(-1,-3) = -log(1 + e^-2) = -0.1269;
    # i=1: L[1,1] - lse(L[1,0], L[1,1]) = -3 - lse(-2,-3) = -log(1 + e) = -1.3133.
    # Î_row = log 2 + (-0.1269 - 1.3133)/2 = -0.0270 (a bound: may be negative).
    r0, r1 = -math.log(1 + math.exp(-2)), -math.log(1 + math.e)
    assert est.mi_row_per_prompt(L)[0] == pytest.approx(LOG2 + (r0 + r1) / 2)
    assert est.mi_sym_per_prompt(L)[0] == pytest.approx((LOG2 + (r0 + r1) / 2 + LOG2 + (l0 + l1) / 2) / 2)
    # Response (0,0) is identified (-1 > -2): credit 1. Response (1,0) ties between the 2
    # conditions (-3 = -3): credit 1/2. Accuracy = (1 + 1/2) / 2 = 0.75.
    assert est.identification_credit(L)[0, :, 0].tolist() == [1.0, 0.5]
    assert est.identification_hits(L)[0, :, 0].tolist() == [True, False]
    assert est.accuracy_per_prompt(L)[0] == 0.75
    assert est.per_variant_accuracy(L).tolist() == [1.0, 0.5]
    assert est.si_per_prompt(L)[0] == pytest.approx((LOG2 + (l0 + l1) / 2) / LOG2)
    # Per-variant SI: variant 0 → (log 2 + ℓ0)/log 2; variant 1 → (log 2 - log 2)/log 2 = 0.
    assert est.per_variant_si_per_prompt(L)[0] == pytest.approx([(LOG2 + l0) / LOG2, 0.0])


def test_hand_worked_confusion() -> None:
    # Row j=0: posterior (e^-1, e^-2)/(e^-1 + e^-2) = (0.7311, 0.2689); row j=1: (0.5, 0.5).
    conf = est.confusion_matrix(hand_tensor())
    p = 1 / (1 + math.exp(-1))
    np.testing.assert_allclose(conf, [[p, 1 - p], [0.5, 0.5]])


def test_mean_critic_divides_by_tokens_and_zero_token_spans_score_zero() -> None:
    L = hand_tensor()
    n_tokens = np.array([[[2], [0]]])  # response (0,0) has 2 tokens, (1,0) none
    out = est.critic_scores(L, n_tokens, "mean")
    # -1/2, -2/2 for response 0; 0-token response scores 0 under both conditions.
    np.testing.assert_array_equal(out[0, :, 0, 0], [-0.5, -1.0])
    np.testing.assert_array_equal(out[0, :, 1, 0], [0.0, 0.0])
    np.testing.assert_array_equal(est.critic_scores(L, n_tokens, "sum"), L)
    with pytest.raises(SIError, match="critic"):
        est.critic_scores(L, n_tokens, "median")


def test_bits_are_nats_over_ln2() -> None:
    assert est.nats_to_bits(LOG2) == pytest.approx(1.0)


# ---------------------------------------------------------------- SI-SPEC §6 invariants


@settings(max_examples=60, deadline=None)
@given(L=score_tensors(), seed=st.integers(0, 2**32 - 1))
def test_invariant_1_permuting_variant_labels(L: np.ndarray, seed: int) -> None:
    perm = np.random.default_rng(seed).permutation(L.shape[1])
    P = L[:, perm][:, :, perm]  # relabel conditions and variants consistently
    for f in (est.mi_col_per_prompt, est.mi_row_per_prompt, est.mi_sym_per_prompt, est.si_per_prompt):
        np.testing.assert_allclose(f(P), f(L), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(est.accuracy_per_prompt(P), est.accuracy_per_prompt(L))  # exact sums
    np.testing.assert_allclose(est.confusion_matrix(P), est.confusion_matrix(L)[perm][:, perm], atol=1e-12)
    np.testing.assert_allclose(est.per_variant_si_per_prompt(P), est.per_variant_si_per_prompt(L)[:, perm],
                               atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(L=score_tensors())
def test_invariant_4_bounds(L: np.ndarray) -> None:
    log_k = math.log(L.shape[1])
    assert (est.mi_col_per_prompt(L) <= log_k + 1e-12).all()
    assert (est.mi_row_per_prompt(L) <= log_k + 1e-12).all()
    assert (est.si_per_prompt(L) <= 1 + 1e-12).all()
    acc = est.accuracy_per_prompt(L)
    assert ((acc >= 0) & (acc <= 1)).all()
    np.testing.assert_allclose(est.confusion_matrix(L).sum(axis=1), 1.0)


@settings(max_examples=60, deadline=None)
@given(L=score_tensors(dyadic=True), data=st.data())
def test_invariant_5_shifting_one_response(L: np.ndarray, data: st.DataObject) -> None:
    n, k, _, r = L.shape
    shift = data.draw(hnp.arrays(np.int64, (n, k, r), elements=st.integers(-400, 400))) / 4.0
    S = L + shift[:, None, :, :]  # the same constant under every condition i for response (j, r)
    np.testing.assert_allclose(est.log_posterior(S), est.log_posterior(L), atol=1e-9)
    np.testing.assert_allclose(est.mi_col_per_prompt(S), est.mi_col_per_prompt(L), atol=1e-9)
    np.testing.assert_allclose(est.confusion_matrix(S), est.confusion_matrix(L), atol=1e-12)
    np.testing.assert_array_equal(est.accuracy_per_prompt(S), est.accuracy_per_prompt(L))


def test_invariant_2_identical_variants_give_zero() -> None:
    rng = np.random.default_rng(1)
    per_response = rng.uniform(-80, -5, size=(30, 1, 3, 2))  # (n, 1, K, R)
    L = np.repeat(per_response, 3, axis=1)  # every condition gives the same log-prob
    mi = est.mi_col_per_prompt(L)
    assert (mi == 0.0).all()
    ci = est.bootstrap_mean_ci(mi, seed=0)
    assert ci.contains(0.0)
    assert (est.accuracy_per_prompt(L) == 1 / 3).all()  # every response is a 3-way tie: 1/3 each


def test_invariant_3_known_channel_converges_within_ci() -> None:
    truth = analytic_mi(CHANNEL)
    rng = np.random.default_rng(3)
    mi = est.mi_col_per_prompt(channel_tensor(CHANNEL, 600, 2, rng))
    ci = est.bootstrap_mean_ci(mi, seed=0)
    assert ci.contains(truth), (truth, ci)

    def mean_abs_error(n: int) -> float:
        errors = [est.mi_col_per_prompt(channel_tensor(CHANNEL, n, 1, np.random.default_rng(s))).mean()
                  - truth for s in range(30)]
        return float(np.mean(np.abs(errors)))

    # The error shrinks like 1/sqrt(n): 64x more prompts, about 8x smaller error.
    assert mean_abs_error(640) < mean_abs_error(10) / 4


def test_analytic_mi_of_a_noiseless_channel_is_log_k() -> None:
    # Sanity of the reference itself: a deterministic, injective channel carries H(C) = log K.
    assert analytic_mi(np.eye(3) * (1 - 2e-12) + 1e-12) == pytest.approx(math.log(3), abs=1e-9)


# ---------------------------------------------------------------- per-principle and cot share


def test_per_principle_restricts_to_two_variants() -> None:
    rng = np.random.default_rng(5)
    L = rng.normal(-20, 3, size=(6, 3, 3, 2))
    L[:, 2, :, :] = L[:, 0, :, :]  # variant 2 scores exactly like variant 0 ...
    L[:, :, 2, :] = L[:, :, 0, :]  # ... and its responses like variant 0's
    np.testing.assert_allclose(est.per_principle_si_per_prompt(L, (0, 2)), 0.0, atol=1e-12)
    sub = L[:, [0, 1]][:, :, [0, 1]]
    np.testing.assert_allclose(est.per_principle_si_per_prompt(L, (0, 1)), est.si_per_prompt(sub))
    with pytest.raises(SIError, match="distinct"):
        est.restrict_variants(L, (1, 1))
    with pytest.raises(SIError, match="0..2"):
        est.restrict_variants(L, (0, 3))


def test_cot_share_is_a_ratio_of_means() -> None:
    cot, full = np.array([0.1, 0.3, 0.2]), np.array([0.2, 0.4, 0.6])
    share = est.cot_share(cot, full, n_resamples=500)
    assert share.value == pytest.approx(0.6 / 1.2)  # (0.1+0.3+0.2) / (0.2+0.4+0.6)
    assert share.ci.contains(0.5)


def test_cot_share_undefined_when_full_mi_is_zero() -> None:
    share = est.cot_share(np.zeros(5), np.zeros(5))
    assert share.value is None and share.ci.low is None


def test_cot_share_undefined_when_the_answer_span_is_empty() -> None:
    # An empty answer span scores 0 under every condition, so L_full = L_cot and the per-prompt
    # MI of both spans are equal: the share would read 1 [1, 1] with no answer to compare to.
    mi = np.array([0.2, 0.5, 0.1, 0.4])
    share = est.cot_share(mi, mi.copy())
    assert share.value is None and share.ci == est.Interval(None, None, "undefined")
    assert est.cot_share(mi, mi + 1e-3, n_resamples=200).value == pytest.approx(1.2 / 1.204)


def test_constant_ratio_falls_back_to_percentile() -> None:
    # Every resample has ratio 0.5, so BCa's bias correction is undefined.
    full = np.array([0.2, 0.4, 0.9, 1.3])
    share = est.cot_share(full / 2, full, n_resamples=300)
    assert share.ci.method == "percentile"
    assert share.ci.low == pytest.approx(0.5) and share.ci.high == pytest.approx(0.5)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_coverage_is_near_nominal() -> None:
    rng = np.random.default_rng(11)
    hits = sum(est.bootstrap_mean_ci(rng.normal(0.3, 1.0, 40), n_resamples=500, seed=s).contains(0.3)
               for s in range(200))
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_is_seeded_and_bca_by_default() -> None:
    x = np.random.default_rng(2).exponential(size=25)
    a, b = est.bootstrap_mean_ci(x, seed=7), est.bootstrap_mean_ci(x, seed=7)
    assert a == b and a.method == "BCa"
    assert est.bootstrap_mean_ci(x, seed=8) != a
    assert a.low is not None and a.high is not None and a.low < x.mean() < a.high


def test_bootstrap_degenerate_inputs() -> None:
    assert est.bootstrap_mean_ci(np.full(6, 0.25)) == est.Interval(0.25, 0.25, "constant")
    assert est.bootstrap_mean_ci(np.array([0.4])) == est.Interval(None, None, "undefined")
    with pytest.raises(SIError, match="n_bootstrap"):
        est.bootstrap_mean_ci(np.arange(5.0), n_resamples=0)
    with pytest.raises(SIError, match="confidence"):
        est.bootstrap_mean_ci(np.arange(5.0), confidence=95)


# ---------------------------------------------------------------- paired comparison and ranking


def test_paired_comparison_detects_a_shift() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(0.4, 0.3, 50)  # prompt difficulty, shared by both sets
    better = base + 0.1 + rng.normal(0, 0.05, 50)
    cmp = est.paired_comparison(better, base, n_resamples=1000)
    assert cmp.delta == pytest.approx(float((better - base).mean()))
    assert cmp.ci.low is not None and cmp.ci.low > 0
    assert cmp.p_value is not None and cmp.p_value < 0.01
    # Unpaired, the prompt noise (0.3) would swamp 0.1; paired, it cancels.
    back = est.paired_comparison(base, better, n_resamples=1000)
    assert back.delta == pytest.approx(-cmp.delta) and back.p_value == pytest.approx(cmp.p_value)


def test_paired_comparison_of_equal_sets() -> None:
    x = np.random.default_rng(0).normal(size=20)
    cmp = est.paired_comparison(x, x.copy())
    assert cmp.delta == 0.0 and cmp.ci.contains(0.0) and cmp.p_value == 1.0


def test_paired_comparison_without_effect_is_not_significant() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.normal(0.5, 0.2, 60), rng.normal(0.5, 0.2, 60)
    cmp = est.paired_comparison(a, b, n_resamples=1000)
    assert cmp.ci.contains(0.0) and cmp.p_value is not None and cmp.p_value > 0.05


def test_ranking_marks_ties_with_the_leader() -> None:
    rng = np.random.default_rng(6)
    prompts = [f"p{i}" for i in range(30)]
    base = rng.normal(0.5, 0.2, 30)
    si = {
        "twin": dict(zip(prompts, base + rng.normal(0, 0.05, 30))),  # indistinguishable from best
        "best": dict(zip(prompts, base + 0.01)),
        "weak": dict(zip(prompts, base - 0.3 + rng.normal(0, 0.05, 30))),
    }
    rows = est.rank_sets(si, n_resamples=500)
    assert [r.rank for r in rows] == [1, 2, 3]
    assert [r.name for r in rows][2] == "weak"
    leader = rows[0]
    assert leader.tied_with_leader and leader.comparison is not None
    assert leader.comparison.delta == 0.0 and leader.comparison.p_value == 1.0
    assert rows[1].tied_with_leader and not rows[2].tied_with_leader
    assert rows[0].si >= rows[1].si >= rows[2].si
    assert rows[2].comparison is not None and rows[2].comparison.delta < 0
    # Rank intervals from the same resamples: the two near-equal sets swap ranks, weak is last.
    assert rows[0].rank_interval == (1, 2) and rows[1].rank_interval == (1, 2) and rows[2].rank_interval == (3, 3)
    assert rows[0].p_rank1 is not None and rows[1].p_rank1 is not None
    assert rows[0].p_rank1 + rows[1].p_rank1 == pytest.approx(1.0) and rows[2].p_rank1 == 0.0
    matrix = est.common_prompt_matrix(si, [r.name for r in rows])
    assert est.rank_uncertainty(matrix, n_resamples=500).rank_interval == tuple(r.rank_interval for r in rows)


def test_ranking_uses_common_prompts_only() -> None:
    si = {"a": {"p1": 0.9, "p2": 0.8, "p3": 0.7}, "b": {"p2": 0.5, "p3": 0.5, "p4": 0.0}}
    rows = est.rank_sets(si, n_resamples=200)
    assert rows[1].name == "b" and rows[1].comparison is not None
    assert rows[1].comparison.n_prompts == 2  # p2 and p3
    assert rows[1].comparison.delta == pytest.approx(((0.5 - 0.8) + (0.5 - 0.7)) / 2)
    # Disjoint prompts: nothing to pair, so the data cannot separate the sets.
    assert est.common_prompt_matrix(si, ["b", "a"]).tolist() == [[0.5, 0.5], [0.8, 0.7]]  # p2, p3
    rows = est.rank_sets({"a": {"p1": 0.9}, "b": {"q1": 0.1}})
    assert rows[1].comparison is None and rows[1].tied_with_leader
    assert rows[0].rank_interval == (1, 2) and rows[0].p_rank1 is None  # no common prompt to resample
    assert est.rank_sets({}) == []


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_scores_are_refused_with_their_cells(bad: float) -> None:
    L = np.full((3, 2, 2, 2), -5.0)
    L[1, 0, 1, 0] = bad
    with pytest.raises(SIError, match=r"prompt index 1, condition 0, variant 1, replicate 0.*si score"):
        est.mi_col_per_prompt(L)


def test_fewer_than_two_variants_is_refused() -> None:
    with pytest.raises(SIError, match="K >= 2"):
        est.mi_col_per_prompt(np.zeros((2, 1, 1, 1)))


# ---------------------------------------------------------------- identification ties (§3)


def test_a_tie_among_m_conditions_earns_one_over_m() -> None:
    # K = 4, one response per variant. Column j lists L[i, j] over conditions i = 0..3.
    L = np.zeros((1, 4, 4, 1))
    L[0, :, 0, 0] = [-1.0, -1.0, -1.0, -5.0]  # true 0 ties with 1 and 2: credit 1/3
    L[0, :, 1, 0] = [-2.0, -1.0, -1.0, -3.0]  # true 1 ties with 2: credit 1/2
    L[0, :, 2, 0] = [-1.0, -1.0, -2.0, -3.0]  # max {0, 1} tie, true 2 not in it: credit 0
    L[0, :, 3, 0] = [-9.0, -9.0, -9.0, -1.0]  # true 3 alone: credit 1
    np.testing.assert_array_equal(est.identification_credit(L)[0, :, 0], [1 / 3, 1 / 2, 0.0, 1.0])
    assert est.accuracy_per_prompt(L)[0] == pytest.approx((1 / 3 + 1 / 2 + 0 + 1) / 4)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), k=st.integers(2, 6), r=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_identical_variants_give_exactly_chance_accuracy(n: int, k: int, r: int, seed: int) -> None:
    per_response = np.random.default_rng(seed).uniform(-200, -1, size=(n, 1, k, r))
    L = np.repeat(per_response, k, axis=1)  # every condition gives each response the same score
    assert (est.accuracy_per_prompt(L) == 1 / k).all()
    assert (est.per_variant_accuracy(L) == 1 / k).all()


# ---------------------------------------------------------------- p-value by test inversion (§5)


def _random_differences(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(3)
    shift = rng.normal(0, 0.3)
    if kind == 0:
        return rng.normal(shift, 1.0, n)
    if kind == 1:
        return rng.exponential(1.0, n) - 1.0 + shift  # skewed: BCa differs from percentile
    return rng.choice([-1.0, 0.0, 0.5, 2.0], n) + shift  # ties in the bootstrap distribution


def test_p_value_and_ci_agree_over_random_inputs() -> None:
    # SI-SPEC §5: "CI excludes 0" ⇔ p < 1 − confidence, at every level, for n ≥ 20 (no 1/n floor).
    rng = np.random.default_rng(20)
    checked = {True: 0, False: 0}
    for case in range(150):
        n = int(rng.integers(20, 60))
        d = _random_differences(rng, n)
        for confidence in (0.8, 0.9, 0.95, 0.99):
            cmp = est.paired_comparison(d, np.zeros(n), n_resamples=500, confidence=confidence, seed=case)
            assert cmp.p_value is not None
            excludes = not cmp.ci.contains(0.0)
            assert excludes == (cmp.p_value < 1 - confidence), (case, confidence, cmp)
            checked[excludes] += 1
    assert min(checked.values()) > 50  # both outcomes were exercised


def test_p_value_is_the_level_where_the_interval_reaches_zero() -> None:
    # Bisect on the confidence level with the CI alone; the boundary must be 1 − p.
    rng = np.random.default_rng(8)
    for seed in range(6):
        d = rng.exponential(1.0, 30) - 0.75
        p = est.paired_comparison(d, np.zeros(30), n_resamples=800, seed=seed).p_value
        assert p is not None and 1 / 800 < p < 1

        def excludes(confidence: float) -> bool:
            ci = est.paired_comparison(d, np.zeros(30), n_resamples=800, confidence=confidence, seed=seed).ci
            return not ci.contains(0.0)

        low, high = 1e-6, 1 - 1e-6  # excludes(low) is True, excludes(high) is False
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if excludes(mid) else (low, mid)
        assert 1 - low == pytest.approx(p, abs=1e-6)


def test_p_value_floor_below_twenty_prompts() -> None:
    # Four prompts that all favour a: the interval excludes 0, but 4 prompts cannot resolve
    # p below 1/4, so p is reported at the floor, flagged as such ("p ≤ 0.25").
    a, b = np.array([0.9, 0.8, 0.7, 0.95]), np.array([0.1, 0.2, 0.15, 0.05])
    cmp = est.paired_comparison(a, b, n_resamples=1000)
    assert cmp.ci.low is not None and cmp.ci.low > 0
    assert cmp.p_floor == 0.25 and cmp.p_value == 0.25 and cmp.p_at_floor
    assert est.p_value_floor(4, 1000) == 0.25
    assert est.p_value_floor(19, 2000) == pytest.approx(1 / 19)
    assert est.p_value_floor(20, 2000) == pytest.approx(1 / 2000)  # from 20 prompts on: 1/B only
    rng = np.random.default_rng(3)
    for seed in range(40):
        n = int(rng.integers(2, est.MIN_PROMPTS))
        d = rng.normal(0.2, 1.0, n)
        cmp = est.paired_comparison(d, np.zeros(n), n_resamples=300, seed=seed)
        assert cmp.p_value is not None and cmp.p_value >= 1 / n
        if cmp.ci.contains(0.0):
            assert cmp.p_value >= 0.05 and not (cmp.p_at_floor and cmp.p_floor < 0.05)
        else:
            assert cmp.p_value < 0.05 or cmp.p_at_floor


def test_constant_differences() -> None:
    cmp = est.paired_comparison(np.full(25, 0.3), np.full(25, 0.1), n_resamples=400)
    assert cmp.ci == est.Interval(pytest.approx(0.2), pytest.approx(0.2), "constant")
    assert cmp.p_value == 1 / 400 and cmp.p_at_floor  # every resample excludes 0


# ---------------------------------------------------------------- rank uncertainty (§5)


def test_rank_intervals_hand_worked() -> None:
    # Two prompts. Set a = (1, 0), set b = (0.4, 0.4). A resample of 2 prompts gives a the mean
    # 1 (p = 1/4), 0.5 (p = 1/2) or 0 (p = 1/4); b is always 0.4, so a ranks first with
    # probability 3/4 and either set can rank 1 or 2.
    res = est.rank_uncertainty(np.array([[1.0, 0.0], [0.4, 0.4]]), n_resamples=4000, seed=1)
    assert res.p_rank1[0] == pytest.approx(0.75, abs=0.03)
    assert res.p_rank1[1] == pytest.approx(0.25, abs=0.03)
    assert res.rank_interval == ((1, 2), (1, 2)) and res.decided == (False, False)


def test_rank_intervals_of_well_separated_sets_are_single_ranks() -> None:
    rng = np.random.default_rng(1)
    means = np.array([0.5, 0.9, 0.1, 0.3])  # input order is kept: ranks 2, 1, 4, 3
    res = est.rank_uncertainty(means[:, None] + rng.normal(0, 0.1, (4, 30)))
    assert res.rank_interval == ((2, 2), (1, 1), (4, 4), (3, 3))
    assert res.p_rank1 == (0.0, 1.0, 0.0, 0.0) and all(res.decided)
    assert res.n_prompts == 30 and res.n_resamples == est.DEFAULT_N_RESAMPLES


def equal_sets() -> np.ndarray:
    """4 sets with the same true SI (0.3) and independent prompt noise, 30 prompts."""
    return np.random.default_rng(2).normal(0.3, 0.3, (4, 30))


def test_rank_intervals_of_equal_sets_span_the_ranking() -> None:
    res = est.rank_uncertainty(equal_sets(), seed=5)
    assert not any(res.decided)
    assert sum(hi - lo for lo, hi in res.rank_interval) >= 8  # of at most 4 x 3
    assert sum(p for p in res.p_rank1 if p is not None) == pytest.approx(1.0)  # no exact ties
    assert max(p for p in res.p_rank1 if p is not None) < 0.9


def test_rank_uncertainty_is_seeded_ties_share_rank_one_and_one_prompt_is_undecided() -> None:
    x = equal_sets()
    assert est.rank_uncertainty(x, seed=3) == est.rank_uncertainty(x, seed=3)
    assert est.rank_uncertainty(x, seed=3) != est.rank_uncertainty(x, seed=4)
    twins = est.rank_uncertainty(np.vstack([x[0], x[0]]))  # identical sets tie in every resample
    assert twins.p_rank1 == (1.0, 1.0) and twins.rank_interval == ((1, 1), (1, 1))
    one = est.rank_uncertainty(x[:, :1])
    assert one.rank_interval == ((1, 4),) * 4 and one.p_rank1 == (None,) * 4
    with pytest.raises(SIError, match="confidence"):
        est.rank_uncertainty(x, confidence=1.5)


# ---------------------------------------------------------------- split-half reliability (§5)


def test_split_half_reliability_of_separated_sets_is_high() -> None:
    rng = np.random.default_rng(4)
    x = np.array([0.9, 0.7, 0.5, 0.3, 0.1])[:, None] + rng.normal(0, 0.2, (5, 40))
    rel = est.split_half_reliability(x, seed=0)
    assert rel.rho is not None and rel.rho_sb is not None
    assert rel.rho_sb > 0.95 and rel.level == "reliable"
    assert rel.rho_sb == pytest.approx(2 * rel.rho / (1 + rel.rho))  # Spearman–Brown
    assert (rel.n_prompts, rel.n_sets, rel.n_splits) == (40, 5, est.DEFAULT_N_SPLITS)


def test_split_half_reliability_of_equal_sets_is_near_zero() -> None:
    rhos = [est.split_half_reliability(np.random.default_rng(s).normal(0.3, 0.3, (6, 40)), seed=s).rho
            for s in range(20)]
    assert all(r is not None for r in rhos)
    assert abs(float(np.mean(rhos))) < 0.15


def test_split_half_reliability_hand_worked_and_undefined() -> None:
    # Every prompt orders the 3 sets the same way, so every half does: ρ = 1, ρ_SB = 2/(1+1) = 1.
    same = np.array([[0.1] * 6, [0.5] * 6, [0.2] * 6]) + np.array([0.0, 0.01, 0.02, 0.0, 0.01, 0.02])
    assert est.split_half_reliability(same) == est.SplitHalfReliability(1.0, 1.0, 6, 3, est.DEFAULT_N_SPLITS)
    # Halves that reverse the order: prompts 0-1 rank a > b > c, prompts 2-3 rank c > b > a;
    # a split is either {0,1}|{2,3} (ρ = −1, 1/3 of splits) or mixed (all three tie: skipped).
    reverse = np.array([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    rel = est.split_half_reliability(reverse, n_splits=300)
    assert rel.rho == -1.0 and rel.rho_sb == -1.0 and 60 < rel.n_splits < 140 and rel.level == "unreliable"
    assert est.split_half_reliability(same[:2]).rho is None  # two sets: ρ is ±1 by construction
    assert est.split_half_reliability(same[:, :3]).rho_sb is None  # three prompts
    assert est.split_half_reliability(np.zeros((3, 8))).level == "undefined"  # every half ties
    with pytest.raises(SIError, match="n_splits"):
        est.split_half_reliability(same, n_splits=0)


def test_describe_reliability_reads_the_level() -> None:
    text = est.describe_reliability(est.SplitHalfReliability(0.26, 0.41, 12, 5, 500))
    assert text.startswith("With 12 prompts the ordering is unreliable: ρ_SB = 0.41")
    assert "moderately" in est.describe_reliability(est.SplitHalfReliability(0.5, 0.67, 40, 5, 500))
    assert "is reliable" in est.describe_reliability(est.SplitHalfReliability(0.8, 0.89, 200, 5, 500))
    assert "at least 3 sets" in est.describe_reliability(est.SplitHalfReliability(None, None, 12, 2, 0))


# ---------------------------------------------------------------- Spearman with CI


def test_spearman_perfect_undefined_and_null() -> None:
    x = np.arange(8.0)
    perfect = est.spearman_with_ci(x, x**2)
    assert perfect["rho"] == pytest.approx(1.0) and perfect["ci"][0] > 0.9 and perfect["n"] == 8
    assert est.spearman_with_ci(x[:2], x[:2])["rho"] is None  # two points: undefined, not 1
    assert est.spearman_with_ci(np.array([1.0, np.nan, 2.0, 3.0]), np.arange(4.0))["n"] == 3
    rng = np.random.default_rng(0)
    null = est.spearman_with_ci(rng.normal(size=12), rng.normal(size=12))
    assert null["ci"][0] < 0 < null["ci"][1]
# ---------------------------------------------------------------- tie-aware credit and seed fidelity (§3, §7)


def test_identification_credit_shares_ties_hand_worked() -> None:
    # One prompt, K = 3, R = 1; columns are responses j, rows conditions i.
    #   j=0: scores [-1, -1, -5]: conditions 0 and 1 tie for the max, 0 is true -> 1/2
    #   j=1: scores [-2, -2, -2]: a three-way tie that includes 1           -> 1/3
    #   j=2: scores [-1, -4, -3]: condition 0 wins, true is 2               -> 0
    L = np.zeros((1, 3, 3, 1))
    L[0, :, 0, 0] = [-1.0, -1.0, -5.0]
    L[0, :, 1, 0] = [-2.0, -2.0, -2.0]
    L[0, :, 2, 0] = [-1.0, -4.0, -3.0]
    np.testing.assert_allclose(est.identification_credit(L)[0, :, 0], [0.5, 1 / 3, 0.0])
    np.testing.assert_allclose(est.seed_fidelity_per_prompt(L), [(0.5 + 1 / 3 + 0.0) / 3])
    np.testing.assert_allclose(est.per_variant_fidelity(L), [0.5, 1 / 3, 0.0])


def test_seed_fidelity_of_identical_conditions_is_exactly_chance() -> None:
    rng = np.random.default_rng(3)
    column = rng.normal(size=(6, 1, 4, 2))  # every condition gives the same score: K = 4
    L = np.repeat(column, 4, axis=1)
    assert (est.seed_fidelity_per_prompt(L) == 0.25).all()


def test_seed_fidelity_unique_winners_equals_hits() -> None:
    # Without ties the credit is the plain hit indicator.
    rng = np.random.default_rng(4)
    L = rng.normal(size=(20, 3, 3, 2))
    np.testing.assert_array_equal(est.identification_credit(L), est.identification_hits(L).astype(float))
    assert 0.0 <= est.seed_fidelity_per_prompt(L).min() <= est.seed_fidelity_per_prompt(L).max() <= 1.0
