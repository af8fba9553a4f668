"""Pure loss functions of the ENIGMA trainer: GRPO, SAMI and the Sinkhorn regulariser.

The trainer minimises

    L_ENIGMA = L_GRPO + λ_SAMI · L_SAMI + λ_OT · S_ε(policy states, reference states)

and every term is one function here, tensors in and tensors out, with no state:

- `group_advantages`: group-relative advantages of GRPO (TRL semantics).
- `grpo_loss`: clipped surrogate with token- or sequence-level (GSPO) importance weights, an
  optional k3 KL penalty and the `grpo` / `dr_grpo` / `dapo` aggregations of TRL's
  `GRPOTrainer._compute_loss`.
- `sami_loss`, `batched_sami_loss`: SAMI's symmetric InfoNCE over the K×K matrix of one prompt
  (Fränken et al. 2024, arXiv:2404.14313).
- `sinkhorn_penalty`: debiased entropic Sinkhorn divergence between hidden-state clouds
  (Feydy et al. 2019, arXiv:1810.08278), solved by POT in the log domain.
- `pool_hidden_states`: masked mean pooling of hidden states into one vector per sequence.

Named variants (house rule 7) live in one registry per axis: `ADVANTAGE_SCALES`,
`IMPORTANCE_LEVELS`, `LOSS_AGGREGATIONS` and `SAMI_CRITICS`. Adding a variant means one
function, one registry entry and one test parameter. Units are nats throughout.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal, TypeVar, cast

# POT builds every array backend it can import (JAX, CuPy, TensorFlow) on first use, to learn
# which one an input belongs to. This module gives it torch tensors only; on hosts that have JAX
# installed, building JAX's backend asks for float64 and JAX warns at every run. An explicit
# setting by the user still wins.
for _backend in ("JAX", "CUPY", "TENSORFLOW"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")

import ot  # type: ignore[import-untyped]  # noqa: E402  # POT ships no type information
import torch
from torch import Tensor

from si_toolkit.errors import SIError

__all__ = [
    "ADVANTAGE_SCALES",
    "IMPORTANCE_LEVELS",
    "LOSS_AGGREGATIONS",
    "SAMI_CRITICS",
    "AdvantageScale",
    "ImportanceLevel",
    "LossType",
    "SamiCritic",
    "batched_sami_loss",
    "group_advantages",
    "grpo_loss",
    "pool_hidden_states",
    "sami_loss",
    "sinkhorn_penalty",
]

AdvantageScale = Literal["group", "none"]
ImportanceLevel = Literal["token", "sequence"]
LossType = Literal["grpo", "dr_grpo", "dapo"]
SamiCritic = Literal["mean", "sum"]

# TRL adds 1e-4 to the group std so that a group with (nearly) equal rewards does not divide by 0.
ADVANTAGE_STD_EPS = 1e-4

_F = TypeVar("_F")


def _choose(registry: Mapping[str, _F], name: str, field: str) -> _F:
    """The registry entry `name`, or an SIError naming the field and the valid choices."""
    if name not in registry:
        raise SIError(f"{field}={name!r} is not a known choice; use one of {sorted(registry)}")
    return registry[name]


# --------------------------------------------------------------------------------------------
# Group-relative advantages
# --------------------------------------------------------------------------------------------


def _scale_by_group_std(centered: Tensor) -> Tensor:
    """Divide each group by (its unbiased std + 1e-4), ignoring NaN rewards; centered: (B, G)."""
    valid = ~torch.isnan(centered)
    count = valid.sum(dim=1, keepdim=True).to(centered.dtype)  # (B, 1)
    squares = torch.where(valid, centered, torch.zeros_like(centered)) ** 2
    # Bessel's correction, as torch.std and TRL's nanstd; a group with one valid reward gets NaN.
    variance = squares.sum(dim=1, keepdim=True) / (count - 1)
    return centered / (variance.sqrt() + ADVANTAGE_STD_EPS)


def _no_scale(centered: Tensor) -> Tensor:
    """Dr. GRPO: keep the centred rewards, no division by the std."""
    return centered


ADVANTAGE_SCALES: Mapping[str, Callable[[Tensor], Tensor]] = MappingProxyType(
    {"group": _scale_by_group_std, "none": _no_scale}
)


def group_advantages(rewards: Tensor, num_generations: int, *, scale: AdvantageScale = "group") -> Tensor:
    """Group-relative advantages Â of GRPO, as TRL computes them.

    With rewards r reshaped into groups (B, G), the G completions of one prompt being
    consecutive (TRL's `RepeatSampler` order):

        scale="group":  Â_{b,g} = (r_{b,g} − mean_g r_{b,·}) / (std_g r_{b,·} + 1e-4)
        scale="none":   Â_{b,g} =  r_{b,g} − mean_g r_{b,·}          (Dr. GRPO)

    std is the *unbiased* (Bessel-corrected, n − 1) standard deviation, like `torch.std` and
    TRL's `nanstd`. NaN rewards (a reward function that could not score a completion) are left
    out of their group's mean and std, and get advantage 0, as in TRL. A group whose rewards
    are all equal gets advantage 0 for every member: no learning signal.

    Args:
        rewards: (B*G,) float rewards.
        num_generations: G, completions per prompt, >= 2.
        scale: a name in `ADVANTAGE_SCALES`.

    Returns:
        (B*G,) advantages, same dtype as `rewards`.
    """
    scale_fn = _choose(ADVANTAGE_SCALES, scale, "scale")
    if num_generations < 2:
        raise SIError(f"num_generations={num_generations}: a group needs at least 2 completions; set it >= 2")
    if rewards.ndim != 1 or rewards.numel() % num_generations != 0:
        raise ValueError(f"rewards must be 1-D with a length divisible by {num_generations}, got {tuple(rewards.shape)}")
    grouped = rewards.reshape(-1, num_generations)  # (B, G)
    centered = grouped - torch.nanmean(grouped, dim=1, keepdim=True)  # (B, G)
    advantages = scale_fn(centered).reshape(-1)  # (B*G,)
    return torch.where(torch.isnan(advantages), torch.zeros_like(advantages), advantages)


# --------------------------------------------------------------------------------------------
# GRPO clipped surrogate
# --------------------------------------------------------------------------------------------


def _token_log_weights(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """Token level: one importance log-weight per token, log π_θ/π_old; (N, T) -> (N, T)."""
    return log_ratio


def _sequence_log_weights(log_ratio: Tensor, mask: Tensor) -> Tensor:
    """GSPO: the masked mean log-ratio of each sequence, broadcast to its tokens; (N, T) -> (N, T)."""
    seq = (log_ratio * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # (N, 1)
    return seq.expand_as(log_ratio)


IMPORTANCE_LEVELS: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = MappingProxyType(
    {"token": _token_log_weights, "sequence": _sequence_log_weights}
)


def _aggregate_grpo(per_token: Tensor, mask: Tensor, max_completion_length: int) -> Tensor:
    """Original GRPO: mean over each sequence's tokens, then mean over sequences (length-biased)."""
    per_sequence = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # (N,)
    return per_sequence.mean()


def _aggregate_dr_grpo(per_token: Tensor, mask: Tensor, max_completion_length: int) -> Tensor:
    """Dr. GRPO: sum over all active tokens / (N · max_completion_length), a constant normaliser."""
    return (per_token * mask).sum() / (per_token.shape[0] * max_completion_length)


def _aggregate_dapo(per_token: Tensor, mask: Tensor, max_completion_length: int) -> Tensor:
    """DAPO: sum over all active tokens / number of active tokens (token-level mean)."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


LOSS_AGGREGATIONS: Mapping[str, Callable[[Tensor, Tensor, int], Tensor]] = MappingProxyType(
    {"grpo": _aggregate_grpo, "dr_grpo": _aggregate_dr_grpo, "dapo": _aggregate_dapo}
)


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    importance_level: ImportanceLevel = "token",
    loss_type: LossType = "grpo",
    max_completion_length: int | None = None,
    ref_logp: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The GRPO policy loss with the semantics of TRL's `GRPOTrainer._compute_loss`.

    Per active token t of completion i (mask = 1):

        w_{i,t} = log π_θ(y_{i,t}) − log π_old(y_{i,t})                     importance_level="token"
        w_{i,t} = Σ_t' m_{i,t'} (log π_θ − log π_old) / Σ_t' m_{i,t'}        "sequence" (GSPO)
        ρ = exp(w),   ℓ_{i,t} = −min(ρ·Â_i, clip(ρ, 1 − ε, 1 + ε_high)·Â_i) + β·KL_{i,t}
        KL_{i,t} = exp(ref − logp) − (ref − logp) − 1                       (k3 estimator, ≥ 0)

    and the loss aggregates ℓ by `loss_type` (a name in `LOSS_AGGREGATIONS`):

        grpo:    (1/N) Σ_i (Σ_t m ℓ) / |y_i|
        dr_grpo: Σ_{i,t} m ℓ / (N · max_completion_length)
        dapo:    Σ_{i,t} m ℓ / Σ_{i,t} m

    `dapo` here divides by the active tokens of *this* call; a trainer that accumulates
    gradients over micro-batches rescales by (local tokens / global tokens) to match TRL.
    On-policy (one update per generation batch) pass `old_logp = logp.detach()`: then ρ = 1 and
    the gradient is Â·∇log π. Padding positions (mask = 0) never reach exp(), so they may hold
    any value, −inf included.

    Args:
        logp: (N, T) log π_θ of the completion tokens (with grad).
        old_logp: (N, T) log π_old of the same tokens (no grad).
        advantages: (N,) one advantage per completion.
        mask: (N, T) 1 for completion tokens, 0 for padding (bool or float).
        epsilon: lower clip ε (ratio floor 1 − ε); also the upper one unless epsilon_high is set.
        epsilon_high: upper clip (ratio ceiling 1 + ε_high); DAPO suggests 0.28.
        importance_level: a name in `IMPORTANCE_LEVELS`.
        loss_type: a name in `LOSS_AGGREGATIONS`.
        max_completion_length: dr_grpo's normaliser; default T.
        ref_logp: (N, T) log π_ref of the same tokens; needed when beta != 0.
        beta: weight of the KL penalty (TRL default 0: no reference model).

    Returns:
        (loss, stats): a scalar tensor, and floats `clip_ratio_low` (fraction of active tokens
        with ρ < 1 − ε and Â < 0), `clip_ratio_high` (ρ > 1 + ε_high and Â > 0),
        `clip_ratio_region` (either) and, when ref_logp is given, `kl` (masked mean of KL).
        At sequence level every token of a clipped sequence counts, so the clip ratios are
        token-weighted fractions of sequences (TRL reports the unweighted fraction).
    """
    weights_fn = _choose(IMPORTANCE_LEVELS, importance_level, "importance_level")
    aggregate = _choose(LOSS_AGGREGATIONS, loss_type, "loss_type")
    eps_low, eps_high = _check_grpo_args(logp, old_logp, advantages, mask, ref_logp, epsilon, epsilon_high, beta)
    n_max = _max_length(max_completion_length, logp.shape[1])
    active = mask.bool()  # (N, T)
    maskf = active.to(logp.dtype)  # (N, T)
    zeros = torch.zeros_like(logp)
    log_ratio = torch.where(active, logp - old_logp, zeros)  # (N, T); padding -> 0 before exp
    ratio = torch.exp(weights_fn(log_ratio, maskf))  # (N, T)
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    adv = advantages.to(logp.dtype).unsqueeze(1)  # (N, 1), broadcast over tokens
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # (N, T)
    kl: Tensor | None = None
    if ref_logp is not None:
        delta = torch.where(active, ref_logp - logp, zeros)  # (N, T)
        kl = torch.exp(delta) - delta - 1.0
        if beta != 0.0:
            per_token = per_token + beta * kl
    loss = aggregate(per_token, maskf, n_max)
    return loss, _grpo_stats(ratio, adv, maskf, kl, eps_low, eps_high)


def _check_grpo_args(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    ref_logp: Tensor | None,
    epsilon: float,
    epsilon_high: float | None,
    beta: float,
) -> tuple[float, float]:
    """Validate shapes and knobs; return (ε_low, ε_high)."""
    if logp.ndim != 2:
        raise ValueError(f"logp must be (N, T), got {tuple(logp.shape)}")
    for name, other in (("old_logp", old_logp), ("mask", mask), ("ref_logp", ref_logp)):
        if other is not None and other.shape != logp.shape:
            raise ValueError(f"{name} must have logp's shape {tuple(logp.shape)}, got {tuple(other.shape)}")
    if advantages.shape != (logp.shape[0],):
        raise ValueError(f"advantages must be ({logp.shape[0]},), got {tuple(advantages.shape)}")
    eps_high = epsilon if epsilon_high is None else epsilon_high
    if not (0.0 <= epsilon < 1.0) or eps_high < 0.0:
        raise SIError(f"epsilon={epsilon}, epsilon_high={epsilon_high}: need 0 <= epsilon < 1 and epsilon_high >= 0")
    if beta < 0.0:
        raise SIError(f"beta={beta}: the KL weight must be >= 0 (0 turns the KL term off)")
    if beta != 0.0 and ref_logp is None:
        raise SIError(f"beta={beta} needs reference log-probs (ref_logp); set beta=0 or load a reference model")
    return epsilon, eps_high


def _max_length(max_completion_length: int | None, n_columns: int) -> int:
    """dr_grpo's constant normaliser; it cannot be shorter than the completions it normalises."""
    if max_completion_length is None:
        return n_columns
    if max_completion_length < n_columns:
        raise SIError(
            f"max_completion_length={max_completion_length} is shorter than the {n_columns} completion "
            "positions passed; set it to the generation limit"
        )
    return max_completion_length


@torch.no_grad()
def _grpo_stats(
    ratio: Tensor, adv: Tensor, maskf: Tensor, kl: Tensor | None, eps_low: float, eps_high: float
) -> dict[str, float]:
    """Clip fractions over active tokens (TRL's clip_ratio/*) and the masked mean KL."""
    n_active = maskf.sum().clamp(min=1.0)
    low = (ratio < 1.0 - eps_low) & (adv < 0)  # (N, T): the floor binds only when Â < 0
    high = (ratio > 1.0 + eps_high) & (adv > 0)  # the ceiling binds only when Â > 0
    stats = {
        "clip_ratio_low": float((low.to(maskf.dtype) * maskf).sum() / n_active),
        "clip_ratio_high": float((high.to(maskf.dtype) * maskf).sum() / n_active),
        "clip_ratio_region": float(((low | high).to(maskf.dtype) * maskf).sum() / n_active),
    }
    if kl is not None:
        stats["kl"] = float((kl * maskf).sum() / n_active)
    return stats


# --------------------------------------------------------------------------------------------
# SAMI symmetric InfoNCE
# --------------------------------------------------------------------------------------------


def _mean_critic(logp: Tensor, n_tokens: Tensor | None) -> Tensor:
    """SAMI's critic: the mean token log-prob, logp / max(n_tokens, 1)."""
    if n_tokens is None:
        raise SIError("critic='mean' divides by the span's token count: pass n_tokens, or use critic='sum'")
    if n_tokens.shape != logp.shape:
        raise ValueError(f"n_tokens must have the score matrix's shape {tuple(logp.shape)}, got {tuple(n_tokens.shape)}")
    return logp / n_tokens.to(logp.dtype).clamp(min=1.0)


def _sum_critic(logp: Tensor, n_tokens: Tensor | None) -> Tensor:
    """The exact critic: the summed log-prob log π(y_j | x, c_i) (SI-SPEC §2)."""
    return logp


SAMI_CRITICS: Mapping[str, Callable[[Tensor, Tensor | None], Tensor]] = MappingProxyType(
    {"mean": _mean_critic, "sum": _sum_critic}
)


def batched_sami_loss(
    logp_matrices: Tensor, *, n_tokens: Tensor | None = None, critic: SamiCritic = "mean"
) -> tuple[Tensor, dict[str, float]]:
    """SAMI's symmetric InfoNCE loss averaged over P prompts, each with its own K×K matrix.

    For prompt p, S[i, j] = critic(log π(y_j | x_p, c_i)), response j having been sampled under
    variant j (the diagonal holds the matched pairs):

        L_row = −(1/K) Σ_i log softmax_j(S[i, ·])_i     (which response did variant i produce?)
        L_col = −(1/K) Σ_j log softmax_i(S[·, j])_j     (which variant produced response j?)
        L_p = (L_row + L_col) / 2,     loss = (1/P) Σ_p L_p

    log K − L_p is SAMI's lower bound on I(C; Y | X = x_p) (nats); it is at most log K because
    each cross-entropy is >= 0. Scores in half precision are upcast to float32.

    Args:
        logp_matrices: (P, K, K) summed log-probs, row i = variant c_i, column j = response y_j.
        n_tokens: (P, K, K) token counts of the scored spans; required by critic="mean".
        critic: a name in `SAMI_CRITICS` ("mean" = SAMI's length-normalised critic, the
            training default; "sum" = the exact log-likelihood critic of SI-SPEC §3).

    Returns:
        (loss, stats): a scalar tensor, and floats (means over prompts) `loss_row`, `loss_col`,
        `mi_bound` = log K − loss, `mi_bound_row`, `mi_bound_col`, `accuracy_row` / `accuracy_col`
        (fraction of rows / columns whose diagonal entry is strictly the largest; ties are misses).
    """
    critic_fn = _choose(SAMI_CRITICS, critic, "critic")
    if logp_matrices.ndim != 3 or logp_matrices.shape[1] != logp_matrices.shape[2]:
        raise ValueError(f"logp_matrices must be (P, K, K), got {tuple(logp_matrices.shape)}")
    k = logp_matrices.shape[-1]
    if k < 2:
        raise SIError(f"K={k}: a contrast needs at least 2 variants per prompt")
    scores = critic_fn(_upcast(logp_matrices), n_tokens)  # (P, K, K)
    diag_row = torch.diagonal(torch.log_softmax(scores, dim=-1), dim1=-2, dim2=-1)  # (P, K): over responses j
    diag_col = torch.diagonal(torch.log_softmax(scores, dim=-2), dim1=-2, dim2=-1)  # (P, K): over variants i
    loss_row = -diag_row.mean(-1)  # (P,)
    loss_col = -diag_col.mean(-1)  # (P,)
    loss = (0.5 * (loss_row + loss_col)).mean()
    return loss, _sami_stats(scores, loss_row, loss_col, math.log(k))


def sami_loss(
    logp_matrix: Tensor, *, n_tokens: Tensor | None = None, critic: SamiCritic = "mean"
) -> tuple[Tensor, dict[str, float]]:
    """SAMI's symmetric InfoNCE for ONE prompt: `batched_sami_loss` with P = 1.

    logp_matrix[i, j] = log π(y_j | x, c_i) summed over the scored span, shape (K, K);
    n_tokens: (K, K) span token counts (needed by critic="mean"). Formula and stats: see
    `batched_sami_loss`; stats include `mi_bound` = log K − L.
    """
    if logp_matrix.ndim != 2:
        raise ValueError(f"logp_matrix must be (K, K), got {tuple(logp_matrix.shape)}")
    counts = None if n_tokens is None else n_tokens.unsqueeze(0)
    return batched_sami_loss(logp_matrix.unsqueeze(0), n_tokens=counts, critic=critic)


def _upcast(x: Tensor) -> Tensor:
    """float32 for half-precision inputs: logsumexp and OT are unreliable in bf16."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.no_grad()
def _sami_stats(scores: Tensor, loss_row: Tensor, loss_col: Tensor, log_k: float) -> dict[str, float]:
    eye = torch.eye(scores.shape[-1], dtype=torch.bool, device=scores.device)
    off = scores.masked_fill(eye, float("-inf"))  # (P, K, K): diagonal removed
    diag = torch.diagonal(scores, dim1=-2, dim2=-1)  # (P, K)
    accuracy_row = (diag > off.amax(dim=-1)).float().mean()
    accuracy_col = (diag > off.amax(dim=-2)).float().mean()
    loss = float((0.5 * (loss_row + loss_col)).mean())
    return {
        "loss_row": float(loss_row.mean()),
        "loss_col": float(loss_col.mean()),
        "mi_bound": log_k - loss,
        "mi_bound_row": log_k - float(loss_row.mean()),
        "mi_bound_col": log_k - float(loss_col.mean()),
        "accuracy_row": float(accuracy_row),
        "accuracy_col": float(accuracy_col),
    }


# --------------------------------------------------------------------------------------------
# Sinkhorn regulariser on hidden states
# --------------------------------------------------------------------------------------------


def pool_hidden_states(hidden: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of hidden states over the sequence: one vector per sequence.

        pooled_b = Σ_t m_{b,t} h_{b,t} / Σ_t m_{b,t}

    Args:
        hidden: (B, T, D) hidden states (any float dtype; summed in at least float32).
        mask: (B, T) 1 for tokens to pool (e.g. the completion), 0 otherwise.

    Returns:
        (B, D) pooled states in float32 (or float64 if `hidden` is float64).

    Raises:
        ValueError: a row of `mask` selects no token; drop such sequences before pooling,
            since a zero vector would be a fake point in the cloud.
    """
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"hidden must be (B, T, D) and mask (B, T), got {tuple(hidden.shape)} and {tuple(mask.shape)}")
    h = hidden.double() if hidden.dtype == torch.float64 else hidden.float()
    weights = mask.to(h.dtype)  # (B, T)
    counts = weights.sum(dim=1, keepdim=True)  # (B, 1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts.squeeze(1) == 0).flatten().tolist()
        raise ValueError(f"rows {empty} of mask select no token; drop them before pooling")
    return (h * weights.unsqueeze(-1)).sum(dim=1) / counts  # (B, D)


def _standardize(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Centre both clouds on the reference mean and divide by the reference's RMS spread s.

    s² = (1/M) Σ_j ‖y_j − ȳ‖², so two independent reference points are at squared distance
    ≈ 2 on average and ε is measured in units of the reference cloud's variance. One scalar
    (not a per-feature z-score) keeps the geometry isotropic and does not blow up
    near-constant features of small clouds. If the reference has no spread (M = 1 or identical
    points), the pooled spread of both clouds is used; if that is 0 too, s = 1. s is detached.
    """
    centre = y.mean(dim=0)  # (D,)
    spread2 = ((y - centre) ** 2).sum(dim=1).mean()
    if float(spread2) <= 0.0:
        both = torch.cat([x.detach(), y])  # (N+M, D)
        spread2 = ((both - both.mean(dim=0)) ** 2).sum(dim=1).mean()
    scale = spread2.sqrt() if float(spread2) > 0.0 else torch.ones((), dtype=y.dtype, device=y.device)
    return (x - centre) / scale, (y - centre) / scale


def sinkhorn_penalty(
    policy_states: Tensor,
    reference_states: Tensor,
    *,
    epsilon: float = 0.1,
    standardize: bool = True,
    max_iter: int = 2000,
    tol: float = 1e-6,
    marginal_tol: float = 1e-3,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Debiased entropic Sinkhorn divergence between the policy and the reference hidden states.

        OT_ε(α, β) = min_{P ∈ Π(a, b)} ⟨C, P⟩ + ε · KL(P ‖ a ⊗ b),   C_ij = ‖x_i − y_j‖²
        S_ε(α, β)  = OT_ε(α, β) − ½ OT_ε(α, α) − ½ OT_ε(β, β)

    with uniform weights a = 1/N, b = 1/M (Feydy et al. 2019). S_ε >= 0, S_ε = 0 when the
    clouds coincide, and unlike OT_ε it does not pull the policy toward a shrunk copy of the
    reference. Each OT_ε is solved by POT's log-domain Sinkhorn (`ot.solve_sample`, reg_type
    "KL", which runs `sinkhorn_log`); the gradient comes from the converged plan (envelope
    theorem, ∂OT_ε/∂C = P*), so memory does not grow with the iterations. The reference side
    is detached: only the policy receives gradient.

    With `standardize` (default) both clouds are shifted and scaled by the *reference* cloud's
    mean and RMS spread (see `_standardize`), so ε is relative to the reference variance:
    independent reference points sit at squared distance ≈ 2, and ε = 0.1 blurs at about 5 %
    of that. Without it, ε is in the raw units of ‖x − y‖², which for LLM hidden states are
    large and make any fixed ε meaningless.

    Plain (non-log) Sinkhorn underflows when ε is small relative to C and silently returns 0
    with zero gradient. The log domain avoids that, and this function also checks every plan:
    a non-finite value or a plan whose mass is not ≈ 1 raises SIError; a marginal error above
    `marginal_tol` (not converged) warns, naming the knobs to change.

    Args:
        policy_states: (N, D) e.g. pooled hidden states of the policy (with grad).
        reference_states: (M, D) the frozen reference's states on the same batch.
        epsilon: entropic regularisation ε (> 0), in standardised units when standardize.
        standardize: scale by the reference cloud's statistics (see above).
        max_iter: Sinkhorn iterations per OT problem.
        tol: stop when the L2 error of the plan's column marginal falls below this.
        marginal_tol: warn when a plan's L1 marginal error (row + column) exceeds this.
        dtype: compute dtype; float32 by default (never half precision), float64 for tests.

    Returns:
        A scalar tensor S_ε, in units of squared (standardised, if standardize) distance.
    """
    if policy_states.ndim != 2 or reference_states.ndim != 2 or policy_states.shape[1] != reference_states.shape[1]:
        raise ValueError(
            f"states must be (N, D) and (M, D), got {tuple(policy_states.shape)} and {tuple(reference_states.shape)}"
        )
    if not (math.isfinite(epsilon) and epsilon > 0.0):
        raise SIError(f"epsilon={epsilon}: the Sinkhorn regularisation must be a finite number > 0 (e.g. 0.1)")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    x = policy_states.to(dtype)  # (N, D)
    y = reference_states.detach().to(dtype)  # (M, D)
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise ValueError("policy_states or reference_states hold NaN or inf")
    if standardize:
        x, y = _standardize(x, y)
    with warnings.catch_warnings():
        # POT warns without context; the plan check below warns once, naming our knobs.
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        res = ot.solve_sample(
            x, y, metric="sqeuclidean", reg=epsilon, reg_type="KL", grad="envelope",
            max_iter=max_iter, tol=tol, debias=True,
        )
    _check_plans(res.log, epsilon, max_iter, marginal_tol)
    value = cast(Tensor, res.value)
    if not bool(torch.isfinite(value)):
        raise SIError(f"the Sinkhorn divergence is not finite at epsilon={epsilon}; raise epsilon or keep standardize=True")
    return value


def _check_plans(log: Mapping[str, object], epsilon: float, max_iter: int, marginal_tol: float) -> None:
    """Catch the silent failures: an underflowed plan (mass ≈ 0) or one far from its marginals."""
    for name in ("res_ab", "res_aa", "res_bb"):
        plan = cast(Tensor, getattr(log[name], "plan")).detach()  # (n, m)
        n, m = plan.shape
        mass = float(plan.sum())
        if not math.isfinite(mass) or abs(mass - 1.0) > 0.5:
            raise SIError(
                f"the Sinkhorn plan ({name}) has mass {mass:.3g} instead of 1 at epsilon={epsilon}: the solver "
                "underflowed; raise epsilon or keep standardize=True"
            )
        error = float((plan.sum(1) - 1.0 / n).abs().sum() + (plan.sum(0) - 1.0 / m).abs().sum())
        if error > marginal_tol:
            warnings.warn(
                f"Sinkhorn ({name}) did not converge at epsilon={epsilon} in max_iter={max_iter} iterations "
                f"(marginal error {error:.2e} > {marginal_tol:g}); raise max_iter or epsilon",
                RuntimeWarning,
                stacklevel=3,
            )
