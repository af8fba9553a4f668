"""Estimators of SI-SPEC §3-5: MI bounds, the Sufficiency Index, bootstrap CIs, paired tests.

Every number si-toolkit prints about principles is computed here, by exactly one pure function
(numpy/scipy only, no I/O, no torch). The common input is a **score tensor**

    L : float array, shape (n, K, K, R), nats
        L[x, i, j, r] = Σ_t log π(y_{j,r,t} | x, c_i, y_{j,r,<t})  (SI-SPEC §2)

for n prompts x, K conditions i, K sampled-under variants j and R replicates r. Axis 1 is
the condition (the candidate principle), axis 2 the variant the response was sampled under.
Per-prompt functions return arrays of shape (n,); prompts are the independent unit, so a set's
estimate is the mean over prompts and its CI a prompt-level (cluster) bootstrap (§5).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.special import logsumexp

from si_toolkit.errors import SIError

__all__ = [
    "CRITICS",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_N_RESAMPLES",
    "MIN_MI_NATS",
    "Interval",
    "PairedComparison",
    "RankEntry",
    "Ratio",
    "accuracy_per_prompt",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "confusion_matrix",
    "cot_share",
    "critic_scores",
    "identification_credit",
    "identification_hits",
    "log_posterior",
    "log_posterior_true",
    "mi_col_per_prompt",
    "mi_row_per_prompt",
    "mi_sym_per_prompt",
    "nats_to_bits",
    "paired_comparison",
    "per_principle_si_per_prompt",
    "per_variant_accuracy",
    "per_variant_fidelity",
    "per_variant_si_per_prompt",
    "rank_sets",
    "restrict_variants",
    "seed_fidelity_per_prompt",
    "si_per_prompt",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.integer[Any]]
BoolArray = npt.NDArray[np.bool_]
# A vectorised statistic: statistic(*samples, axis=-1) reduces the prompt axis.
Statistic = Callable[..., Any]
IntervalMethod = Literal["BCa", "percentile", "constant", "undefined"]

DEFAULT_N_RESAMPLES = 2000  # SI-SPEC §5
DEFAULT_CONFIDENCE = 0.95  # SI-SPEC §5
# Below this (nats) a mean MI is floating-point zero or noise-negative, so a ratio of it
# (the CoT share) is undefined rather than huge.
MIN_MI_NATS = 1e-9
_MAX_CELLS_NAMED = 5  # how many offending cells an error message lists


# ---------------------------------------------------------------- validation and critics


def _check_scores(L: FloatArray) -> FloatArray:
    """Return L as float64 after checking its shape (n, K, K, R), K >= 2, and finiteness."""
    arr = np.asarray(L, dtype=np.float64)
    if arr.ndim != 4 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"score tensor must have shape (n, K, K, R), got {arr.shape}")
    n, k, _, r = arr.shape
    if k < 2:
        raise SIError(f"score tensor has K = {k} variant(s); a principle set needs K >= 2")
    if n < 1 or r < 1:
        raise SIError(f"score tensor has {n} prompt(s) and {r} replicate(s); need >= 1 of each")
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        cells = ", ".join(
            f"(prompt index {x}, condition {i}, variant {j}, replicate {rr})"
            for x, i, j, rr in bad[:_MAX_CELLS_NAMED]
        )
        more = f" and {len(bad) - _MAX_CELLS_NAMED} more" if len(bad) > _MAX_CELLS_NAMED else ""
        raise SIError(
            f"score tensor has {len(bad)} non-finite log-prob(s) at {cells}{more}; "
            "rerun `si score` for those prompts"
        )
    return arr


def _sum_critic(L: FloatArray, n_tokens: IntArray) -> FloatArray:
    """Exact critic: the summed log-prob itself."""
    return np.asarray(L, dtype=np.float64)


def _mean_critic(L: FloatArray, n_tokens: IntArray) -> FloatArray:
    """SAMI critic ℓ̄ = L / n_tokens; a 0-token span scores 0 under every condition."""
    counts = np.asarray(n_tokens)[:, None, :, :].astype(np.float64)  # (n, 1, K, R)
    safe = np.where(counts > 0, counts, 1.0)
    return np.where(counts > 0, np.asarray(L, dtype=np.float64) / safe, 0.0)


CRITICS: Mapping[str, Callable[[FloatArray, IntArray], FloatArray]] = {
    "sum": _sum_critic,
    "mean": _mean_critic,
}


def critic_scores(L: FloatArray, n_tokens: IntArray, critic: str) -> FloatArray:
    """Apply a named critic (SI-SPEC §3, last bullet) to a score tensor.

    ``sum`` (exact, the model's log-likelihood) returns L; ``mean`` (SAMI, length-normalised)
    returns L[x, i, j, r] / n_tokens[x, j, r], with 0 where the span has no tokens.

    L: (n, K, K, R) nats; n_tokens: (n, K, R) token counts (a response's count does not depend
    on the condition). Returns (n, K, K, R), nats (``sum``) or nats per token (``mean``).
    """
    if critic not in CRITICS:
        raise SIError(f"critic = {critic!r} is not one of {sorted(CRITICS)}")
    arr = _check_scores(L)
    counts = np.asarray(n_tokens)
    expected = (arr.shape[0], arr.shape[2], arr.shape[3])
    if counts.shape != expected:
        raise ValueError(f"n_tokens must have shape {expected}, got {counts.shape}")
    if (counts < 0).any():
        raise SIError("n_tokens has negative counts; rerun `si score`")
    return CRITICS[critic](arr, counts)


# ---------------------------------------------------------------- per-prompt estimators (§3, §4)


def log_posterior(L: FloatArray) -> FloatArray:
    """Log posterior over conditions: log p(c_i | y_{j,r}, x) = L[x,i,j,r] − logsumexp_i' L[x,i',j,r].

    Exact under the summed critic, T = 1 sampling and the uniform prior (SI-SPEC §3).
    L: (n, K, K, R) nats. Returns (n, K, K, R), nats (log-probabilities, ≤ 0).
    """
    arr = _check_scores(L)
    # Shift by the max before exponentiating (overflow); equal scores then give exactly
    # −log K, so identical variants yield an MI of exactly 0 rather than rounding noise.
    shifted = arr - arr.max(axis=1, keepdims=True)
    out: FloatArray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def log_posterior_true(L: FloatArray) -> FloatArray:
    """ℓ_col(j, r) = log p(c_j | y_{j,r}, x): the log posterior of the true variant (SI-SPEC §3).

    L: (n, K, K, R) nats. Returns (n, K, R) nats, each ≤ 0.
    """
    post = log_posterior(L)
    idx = np.arange(post.shape[1])
    out: FloatArray = post[:, idx, idx, :]  # (n, K, R): diagonal i = j
    return out


def mi_col_per_prompt(L: FloatArray) -> FloatArray:
    """Posterior (column) bound Î_col(x) = log K + mean_{j,r} ℓ_col(j, r)  (SI-SPEC §3, primary).

    An unbiased estimate of I(C; Y | X = x) under the summed critic; ≤ log K per prompt.
    L: (n, K, K, R) nats. Returns (n,) nats.
    """
    ell = log_posterior_true(L)  # (n, K, R)
    # log K is added per response, before averaging, so that ℓ = −log K gives exactly 0.
    out: FloatArray = (math.log(ell.shape[1]) + ell).mean(axis=(1, 2))
    return out


def mi_row_per_prompt(L: FloatArray) -> FloatArray:
    """Row InfoNCE bound Î_row(x) = log K + mean_{i,r} (L[i,(i,r)] − logsumexp_j L[i,(j,r)]).

    For each replicate r the K responses {y_{j,r}}_j are the candidates (SI-SPEC §3).
    L: (n, K, K, R) nats. Returns (n,) nats, ≤ log K.
    """
    arr = _check_scores(L)
    k = arr.shape[1]
    idx = np.arange(k)
    matched = arr[:, idx, idx, :]  # (n, K, R): L[x, i, i, r]
    row_norm = logsumexp(arr, axis=2)  # (n, K, R): logsumexp over responses j, per (i, r)
    out: FloatArray = math.log(k) + (matched - row_norm).mean(axis=(1, 2))
    return out


def mi_sym_per_prompt(L: FloatArray) -> FloatArray:
    """Symmetric (SAMI) bound Î_sym(x) = (Î_row(x) + Î_col(x)) / 2  (SI-SPEC §3).

    L: (n, K, K, R), either critic. Returns (n,) in the critic's unit.
    """
    out: FloatArray = (mi_row_per_prompt(L) + mi_col_per_prompt(L)) / 2.0
    return out


def identification_hits(L: FloatArray) -> BoolArray:
    """hit[x, j, r] = (argmax_i L[x, i, j, r] is unique and equals j); ties are misses (§3).

    L: (n, K, K, R). Returns (n, K, R) bool.
    """
    arr = _check_scores(L)
    k = arr.shape[1]
    idx = np.arange(k)
    true = arr[:, idx, idx, :]  # (n, K, R)
    others = arr.copy()
    others[:, idx, idx, :] = -np.inf  # mask the true condition, keep the K − 1 others
    out: BoolArray = true > others.max(axis=1)
    return out


def accuracy_per_prompt(L: FloatArray) -> FloatArray:
    """Identification accuracy per prompt: mean_{j,r} hit[x, j, r]  (SI-SPEC §3); chance 1/K.

    L: (n, K, K, R). Returns (n,) fractions in [0, 1].
    """
    out: FloatArray = identification_hits(L).mean(axis=(1, 2))
    return out


def per_variant_accuracy(L: FloatArray) -> FloatArray:
    """Accuracy of responses sampled under each variant j: mean_{x,r} hit[x, j, r].

    L: (n, K, K, R). Returns (K,) fractions in [0, 1].
    """
    out: FloatArray = identification_hits(L).mean(axis=(0, 2))
    return out


def identification_credit(L: FloatArray) -> FloatArray:
    """Tie-aware identification: credit[x, j, r] = 1/m when the true condition j is among the m
    conditions that tie for argmax_i L[x, i, j, r], else 0  (SI-SPEC §3).

    So identical conditions give exactly chance 1/K, never 0. L: (n, K, K, R). Returns (n, K, R)
    in {0} ∪ {1/m : m = 1..K}.
    """
    arr = _check_scores(L)
    idx = np.arange(arr.shape[1])
    best = arr.max(axis=1)  # (n, K_j, R)
    n_best = (arr == best[:, None, :, :]).sum(axis=1)  # (n, K_j, R): size m of the argmax set
    true = arr[:, idx, idx, :]  # (n, K, R): L[x, j, j, r]
    out: FloatArray = np.where(true == best, 1.0 / n_best, 0.0)
    return out


def seed_fidelity_per_prompt(L_fid: FloatArray) -> FloatArray:
    """Seed fidelity per prompt: mean_{j,r} credit[x, j, r] of a fidelity tensor  (SI-SPEC §7).

    L_fid[x, i, j, r] = log π(y_{j,r} | x, s_i): responses sampled under *candidate* variant j,
    scored under the *seed* variants s_i as conditions (same K, same order). Fidelity is the
    tie-aware identification accuracy of seed variant j (`identification_credit`): high while
    variant j still reads, to the model, like the seed variant it came from. With the seed's own
    responses as L_fid it is the seed's accuracy, the reference a candidate is admitted against.
    L_fid: (n, K, K, R). Returns (n,) fractions in [0, 1].
    """
    out: FloatArray = identification_credit(L_fid).mean(axis=(1, 2))
    return out


def per_variant_fidelity(L_fid: FloatArray) -> FloatArray:
    """Seed fidelity of each candidate variant j: mean_{x,r} credit[x, j, r]  (SI-SPEC §7).

    L_fid: (n, K, K, R) as in `seed_fidelity_per_prompt`. Returns (K,) fractions in [0, 1].
    """
    out: FloatArray = identification_credit(L_fid).mean(axis=(0, 2))
    return out


def confusion_matrix(L: FloatArray) -> FloatArray:
    """Mean posterior confusion: M[j, i] = mean_{x,r} p(c_i | y_{j,r}, x).

    Rows are the true variant j, columns the identified condition i; each row sums to 1.
    L: (n, K, K, R) (summed critic for a true posterior). Returns (K, K) probabilities.
    """
    post = np.exp(log_posterior(L))  # (n, K_i, K_j, R)
    out: FloatArray = post.mean(axis=(0, 3)).T  # (K_j, K_i)
    return out


def si_per_prompt(L: FloatArray) -> FloatArray:
    """Per-prompt Sufficiency Index SI(x) = Î_col(x) / log K  (SI-SPEC §4), unitless, ≤ 1.

    SI proper uses span ``cot`` and critic ``sum``. L: (n, K, K, R). Returns (n,).
    """
    out: FloatArray = mi_col_per_prompt(L) / math.log(np.shape(L)[1])
    return out


def per_variant_si_per_prompt(L: FloatArray) -> FloatArray:
    """Per-variant SI: (log K + mean_r ℓ_col(j, r)) / log K  (SI-SPEC §4).

    L: (n, K, K, R). Returns (n, K), unitless; its mean over j is `si_per_prompt`.
    """
    ell = log_posterior_true(L)  # (n, K, R)
    log_k = math.log(ell.shape[1])
    out: FloatArray = (log_k + ell).mean(axis=2) / log_k
    return out


def restrict_variants(L: FloatArray, variants: Sequence[int]) -> FloatArray:
    """Sub-tensor over a subset of variants: both the conditions and the responses.

    L: (n, K, K, R); variants: distinct indices in [0, K). Returns (n, k, k, R), k = len(variants).
    """
    arr = _check_scores(L)
    k = arr.shape[1]
    chosen = [int(v) for v in variants]
    if len(set(chosen)) != len(chosen) or len(chosen) < 2 or not all(0 <= v < k for v in chosen):
        raise SIError(f"variants {chosen} must be >= 2 distinct indices in 0..{k - 1}")
    sub: FloatArray = arr[:, chosen][:, :, chosen]
    return sub


def per_principle_si_per_prompt(L: FloatArray, variants: tuple[int, int]) -> FloatArray:
    """Per-principle SI: the K = 2 SI on {all-positive, principle flipped}  (SI-SPEC §4).

    L: (n, K, K, R); variants: (a, b). Returns (n,), unitless.
    """
    return si_per_prompt(restrict_variants(L, variants))


def nats_to_bits(value: float) -> float:
    """bits = nats / ln 2  (SI-SPEC §3)."""
    return value / math.log(2.0)


# ---------------------------------------------------------------- uncertainty (§5)


@dataclass(frozen=True)
class Interval:
    """A confidence interval; low/high are None when it is undefined (fewer than 2 prompts).

    method: ``BCa``, ``percentile`` (BCa failed), ``constant`` (every prompt gives the same
    value, so every resample does) or ``undefined``.
    """

    low: float | None
    high: float | None
    method: IntervalMethod

    def contains(self, value: float) -> bool:
        """True when low <= value <= high (False when undefined)."""
        return self.low is not None and self.high is not None and self.low <= value <= self.high


_UNDEFINED = Interval(None, None, "undefined")


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise SIError(f"n_bootstrap = {n_resamples}; it must be >= 1 (default 2000)")
    if not 0.0 < confidence < 1.0:
        raise SIError(f"confidence = {confidence}; it must be in (0, 1) (default 0.95)")


def _bootstrap(
    samples: Sequence[FloatArray], statistic: Statistic, n_resamples: int, confidence: float, seed: int
) -> tuple[Interval, FloatArray]:
    """Paired prompt-level bootstrap: (CI, bootstrap distribution of the statistic)."""
    _check_bootstrap_args(n_resamples, confidence)
    arrays = tuple(np.asarray(s, dtype=np.float64) for s in samples)
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
        raise ValueError("bootstrap samples must be 1-D arrays of one length (one value per prompt)")
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic(*arrays, axis=-1))
    if arrays[0].shape[0] < 2 or not math.isfinite(point):
        return _UNDEFINED, np.empty(0)
    if all(np.ptp(a) == 0 for a in arrays):
        # Every resample equals the point estimate; BCa's acceleration would be 0/0.
        return Interval(point, point, "constant"), np.full(n_resamples, point)
    distribution = np.empty(0)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("error", stats.DegenerateDataWarning)
            try:
                res = stats.bootstrap(
                    arrays, statistic, n_resamples=n_resamples, confidence_level=confidence,
                    method=method, paired=True, vectorized=True, rng=np.random.default_rng(seed),
                )
            except stats.DegenerateDataWarning:
                continue  # BCa undefined for these data: fall back to the percentile interval
        distribution = np.asarray(res.bootstrap_distribution, dtype=np.float64)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(low) and math.isfinite(high):
            return Interval(low, high, "BCa" if method == "BCa" else "percentile"), distribution
    return _UNDEFINED, distribution


def bootstrap_ci(
    samples: Sequence[FloatArray],
    statistic: Statistic,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """Prompt-level (cluster) bootstrap CI of statistic(*samples)  (SI-SPEC §5).

    samples: arrays of shape (n,), one value per prompt, resampled together (paired).
    statistic: vectorised, statistic(*samples, axis=-1). BCa where defined, else percentile;
    resamples drawn from numpy.random.default_rng(seed), so equal seeds give equal CIs.
    """
    return _bootstrap(samples, statistic, n_resamples, confidence, seed)[0]


def _mean(values: FloatArray, axis: int = -1) -> FloatArray:
    out: FloatArray = np.mean(values, axis=axis)
    return out


def bootstrap_mean_ci(
    values: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Interval:
    """CI of the mean over prompts of per-prompt values (n,)  (SI-SPEC §5)."""
    return bootstrap_ci([values], _mean, n_resamples=n_resamples, confidence=confidence, seed=seed)


@dataclass(frozen=True)
class Ratio:
    """A ratio of means with its CI; value None when the denominator is ~0 or negative."""

    value: float | None
    ci: Interval


def _ratio_of_means(num: FloatArray, den: FloatArray, axis: int = -1) -> FloatArray:
    out: FloatArray = np.mean(num, axis=axis) / np.mean(den, axis=axis)
    return out


def cot_share(
    mi_cot: FloatArray,
    mi_full: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> Ratio:
    """CoT share = mean_x Î_col(cot)(x) / mean_x Î_col(full)(x)  (SI-SPEC §4), unitless.

    mi_cot, mi_full: (n,) per-prompt MI in nats on the same prompts. A ratio of means (not a
    mean of ratios, which per-prompt MI near 0 would blow up), with a paired bootstrap CI.
    Undefined (None) when the mean full-span MI is below MIN_MI_NATS.
    """
    cot = np.asarray(mi_cot, dtype=np.float64)
    full = np.asarray(mi_full, dtype=np.float64)
    if cot.shape != full.shape or cot.ndim != 1:
        raise ValueError(f"mi_cot {cot.shape} and mi_full {full.shape} must be (n,) of one length")
    if full.size == 0 or float(full.mean()) < MIN_MI_NATS:
        return Ratio(None, _UNDEFINED)
    ci = bootstrap_ci(
        [cot, full], _ratio_of_means, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return Ratio(float(cot.mean() / full.mean()), ci)


@dataclass(frozen=True)
class PairedComparison:
    """ΔSI = mean_x (a(x) − b(x)) over common prompts, its CI and two-sided p-value."""

    delta: float
    ci: Interval
    p_value: float | None
    n_prompts: int


def paired_comparison(
    a: FloatArray,
    b: FloatArray,
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap of the per-prompt difference d(x) = a(x) − b(x)  (SI-SPEC §5).

    a, b: (n,) per-prompt values on the same prompts, same order. The p-value tests
    H0: E[d] = 0 by recentring the bootstrap distribution of d̄ at 0:
    p = (1 + #{b : |d̄*_b − d̄| >= |d̄|}) / (B + 1); it is 1 when d̄ = 0, None for n < 2.
    """
    aa, bb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if aa.shape != bb.shape or aa.ndim != 1 or aa.size == 0:
        raise ValueError(f"paired values must be (n,) of one length, got {aa.shape} and {bb.shape}")
    diff = aa - bb
    delta = float(diff.mean())
    ci, dist = _bootstrap([diff], _mean, n_resamples, confidence, seed)
    if dist.size == 0:
        return PairedComparison(delta, ci, None, int(diff.size))
    extreme = int(np.count_nonzero(np.abs(dist - delta) >= abs(delta)))
    return PairedComparison(delta, ci, (1 + extreme) / (dist.size + 1), int(diff.size))


@dataclass(frozen=True)
class RankEntry:
    """One row of a ranking; delta = SI(set) − SI(leader) on their common prompts (≤ 0 mostly)."""

    rank: int
    name: str
    si: float
    si_ci: Interval
    comparison: PairedComparison | None  # None when the set shares no prompt with the leader
    tied_with_leader: bool


def rank_sets(
    si_by_set: Mapping[str, Mapping[str, float]],
    *,
    n_resamples: int = DEFAULT_N_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> list[RankEntry]:
    """Rank sets by SI (descending, name breaks exact ties) and mark ties with the leader (§5).

    si_by_set: set name -> {prompt id -> per-prompt SI}. A set is tied with the leader when the
    paired-difference CI over their common prompts includes 0, or cannot be computed (fewer
    than 2 common prompts: the data cannot separate them). The leader is tied with itself.
    """
    if not si_by_set:
        return []
    means = {name: float(np.mean(list(v.values()))) for name, v in si_by_set.items() if v}
    if len(means) != len(si_by_set):
        empty = sorted(set(si_by_set) - set(means))
        raise SIError(f"set(s) {empty} have no scored prompts; rerun `si score`")
    order = sorted(means, key=lambda name: (-means[name], name))
    leader = si_by_set[order[0]]
    entries = []
    for rank, name in enumerate(order, start=1):
        values = si_by_set[name]
        own = np.array(list(values.values()), dtype=np.float64)
        si_ci = bootstrap_mean_ci(own, n_resamples=n_resamples, confidence=confidence, seed=seed)
        common = sorted(set(values) & set(leader))
        comparison = None
        if common:
            comparison = paired_comparison(
                np.array([values[p] for p in common]), np.array([leader[p] for p in common]),
                n_resamples=n_resamples, confidence=confidence, seed=seed,
            )
        tied = comparison is None or comparison.ci.low is None or comparison.ci.contains(0.0)
        entries.append(RankEntry(rank, name, means[name], si_ci, comparison, tied))
    return entries
