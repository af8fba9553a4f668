"""Per-prompt estimators of SI-SPEC §3-4: critics, log posteriors, MI bounds, accuracy, SI."""

from __future__ import annotations

import math
from fractions import Fraction
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.special import logsumexp

from si_toolkit.errors import SIError
from si_toolkit.estimators._types import BoolArray, FloatArray, IntArray, _check_scores


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


def _argmax_ties(L: FloatArray) -> tuple[BoolArray, IntArray]:
    """(true_in_max, size), each (n, K, R): is j among argmax_i L[x, i, j, r], and how many i are."""
    arr = _check_scores(L)
    idx = np.arange(arr.shape[1])
    is_max = arr == arr.max(axis=1, keepdims=True)  # (n, K_i, K_j, R): condition i attains the max
    return is_max[:, idx, idx, :], is_max.sum(axis=1)


def identification_credit(L: FloatArray) -> FloatArray:
    """credit[x, j, r] = 1[j ∈ argmax_i L[x, i, j, r]] / |argmax_i L[x, i, j, r]|  (SI-SPEC §3).

    A response is credited 1 when its true condition alone scores highest, 1/m when it ties
    with m − 1 others for the highest score, and 0 otherwise; so identical variants earn
    exactly 1/K per response (chance), never 0. L: (n, K, K, R). Returns (n, K, R) in [0, 1].
    """
    true_in_max, size = _argmax_ties(L)
    out: FloatArray = true_in_max / size
    return out


def identification_hits(L: FloatArray) -> BoolArray:
    """hit[x, j, r] = the true condition j alone scores highest (credit 1; ties are not hits).

    L: (n, K, K, R). Returns (n, K, R) bool. Accuracy counts ties as shares
    (`identification_credit`), not as misses.
    """
    true_in_max, size = _argmax_ties(L)
    out: BoolArray = true_in_max & (size == 1)
    return out


def _credit_means(true_in_max: BoolArray, size: IntArray) -> FloatArray:
    """Row means of true_in_max / size, (rows, N) -> (rows,), in exact rational arithmetic.

    Σ 1/m is summed over a common denominator, so the mean is the correctly rounded exact
    value whatever the order of the responses (a float sum of credits like 1/3 is not), and
    identical variants give exactly 1/K (SI-SPEC §6.4).
    """
    rows, count = true_in_max.shape
    sizes = sorted({int(m) for m in np.unique(size[true_in_max])})
    denominator = math.lcm(*sizes) if sizes else 1
    numerators = [0] * rows
    for m in sizes:
        per_row = np.count_nonzero(true_in_max & (size == m), axis=1).tolist()
        numerators = [total + c * (denominator // m) for total, c in zip(numerators, per_row, strict=True)]
    return np.array([float(Fraction(v, denominator * count)) for v in numerators], dtype=np.float64)


def accuracy_per_prompt(L: FloatArray) -> FloatArray:
    """Identification accuracy per prompt: mean_{j,r} credit[x, j, r]  (SI-SPEC §3); chance 1/K.

    Ties are shared (`identification_credit`). L: (n, K, K, R). Returns (n,) fractions in [0, 1].
    """
    true_in_max, size = _argmax_ties(L)
    n = true_in_max.shape[0]
    return _credit_means(true_in_max.reshape(n, -1), size.reshape(n, -1))


def per_variant_accuracy(L: FloatArray) -> FloatArray:
    """Accuracy of responses sampled under each variant j: mean_{x,r} credit[x, j, r].

    L: (n, K, K, R). Returns (K,) fractions in [0, 1].
    """
    true_in_max, size = _argmax_ties(L)
    true_in_max, size = np.moveaxis(true_in_max, 1, 0), np.moveaxis(size, 1, 0)  # (K, n, R)
    k = true_in_max.shape[0]
    return _credit_means(true_in_max.reshape(k, -1), size.reshape(k, -1))


def seed_fidelity_per_prompt(L_fid: FloatArray) -> FloatArray:
    """Seed fidelity per prompt (SI-SPEC §7): the identification accuracy of a fidelity tensor.

    L_fid[x, i, j, r] = log π(y_{j,r} | x, s_i): responses sampled under *candidate* variant j,
    scored under the *seed* variants s_i as conditions. Fidelity is how often seed variant j is
    identified (ties shared, `accuracy_per_prompt`): high while variant j still reads, to the
    model, like the seed variant it came from. L_fid: (n, K, K, R). Returns (n,) in [0, 1].
    """
    return accuracy_per_prompt(L_fid)


def per_variant_fidelity(L_fid: FloatArray) -> FloatArray:
    """Seed fidelity of each candidate variant j (SI-SPEC §7): `per_variant_accuracy` of L_fid.

    L_fid: (n, K, K, R) as in `seed_fidelity_per_prompt`. Returns (K,) in [0, 1].
    """
    return per_variant_accuracy(L_fid)


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
