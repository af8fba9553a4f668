"""GRPO: group-relative advantages and the clipped surrogate, with TRL's semantics.

- `group_advantages`: group-relative advantages (TRL's `scale_rewards`).
- `grpo_loss`: clipped surrogate with token- or sequence-level (GSPO) importance weights, an
  optional k3 KL penalty and the `grpo` / `dr_grpo` / `dapo` aggregations of TRL's
  `GRPOTrainer._compute_loss`.

Registries (house rule 7): `ADVANTAGE_SCALES`, `IMPORTANCE_LEVELS`, `LOSS_AGGREGATIONS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor

from si_toolkit.errors import SIError
from si_toolkit.train.losses._common import choose as _choose

__all__ = [
    "ADVANTAGE_SCALES",
    "ADVANTAGE_STD_EPS",
    "IMPORTANCE_LEVELS",
    "LOSS_AGGREGATIONS",
    "AdvantageScale",
    "ImportanceLevel",
    "LossType",
    "group_advantages",
    "grpo_loss",
]

AdvantageScale = Literal["group", "batch", "none"]
ImportanceLevel = Literal["token", "sequence"]
LossType = Literal["grpo", "dr_grpo", "dapo"]

# TRL adds 1e-4 to the group std so that a group with (nearly) equal rewards does not divide by 0.
ADVANTAGE_STD_EPS = 1e-4

# --------------------------------------------------------------------------------------------
# Group-relative advantages
# --------------------------------------------------------------------------------------------


def _nan_std(x: Tensor, dim: int | None) -> Tensor:
    """Unbiased (n − 1) standard deviation ignoring NaN, as torch.std and TRL's `nanstd`.

    Over `dim` (keepdim), or over every element when dim is None (a 0-d tensor). Fewer than two
    valid values give NaN.
    """
    valid = ~torch.isnan(x)
    zeros = torch.zeros_like(x)
    if dim is None:
        count = valid.sum().to(x.dtype)
        mean = torch.where(valid, x, zeros).sum() / count
        return (torch.where(valid, x - mean, zeros) ** 2).sum().div(count - 1).sqrt()
    count = valid.sum(dim=dim, keepdim=True).to(x.dtype)
    mean = torch.where(valid, x, zeros).sum(dim=dim, keepdim=True) / count
    return (torch.where(valid, x - mean, zeros) ** 2).sum(dim=dim, keepdim=True).div(count - 1).sqrt()


def _scale_by_group_std(centered: Tensor, grouped: Tensor) -> Tensor:
    """Divide each group by (its unbiased std + 1e-4); centered, grouped: (B, G)."""
    return centered / (_nan_std(grouped, dim=1) + ADVANTAGE_STD_EPS)  # (B, G) / (B, 1)


def _scale_by_batch_std(centered: Tensor, grouped: Tensor) -> Tensor:
    """PPO-Lite: divide by (the unbiased std of every reward in the batch + 1e-4)."""
    return centered / (_nan_std(grouped, dim=None) + ADVANTAGE_STD_EPS)


def _no_scale(centered: Tensor, grouped: Tensor) -> Tensor:
    """Dr. GRPO: keep the centred rewards, no division by the std."""
    return centered


ADVANTAGE_SCALES: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = MappingProxyType(
    {"group": _scale_by_group_std, "batch": _scale_by_batch_std, "none": _no_scale}
)


def group_advantages(rewards: Tensor, num_generations: int, *, scale: AdvantageScale = "group") -> Tensor:
    """Group-relative advantages Â of GRPO, as TRL computes them (`scale_rewards`).

    With rewards r reshaped into groups (B, G), the G completions of one prompt being
    consecutive (TRL's `RepeatSampler` order):

        scale="group":  Â_{b,g} = (r_{b,g} − mean_g r_{b,·}) / (std_g r_{b,·} + 1e-4)
        scale="batch":  Â_{b,g} = (r_{b,g} − mean_g r_{b,·}) / (std r + 1e-4)    (PPO-Lite, arXiv:2508.08221)
        scale="none":   Â_{b,g} =  r_{b,g} − mean_g r_{b,·}                      (Dr. GRPO, arXiv:2503.20783)

    std is the *unbiased* (Bessel-corrected, n − 1) standard deviation, like `torch.std` and
    TRL's `nanstd`; for "batch" it is taken over all B·G rewards of the call (not the centred
    ones), so pass the whole global batch. NaN rewards (a reward function that could not score
    a completion) are left out of means and stds, and get advantage 0, as in TRL. A group whose
    rewards are all equal gets advantage 0 for every member: no learning signal.

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
    advantages = scale_fn(centered, grouped).reshape(-1)  # (B*G,)
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
    truncated: Tensor | None = None,
    per_token_weight: Tensor | None = None,
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

    `truncated` is TRL's `mask_truncated_completions` (DAPO's overlong filtering): every token
    of a completion cut at the length limit leaves the mask, so it adds nothing to the loss,
    the dapo token count, the KL or the clip statistics; it still counts as one of the N
    sequences of grpo and dr_grpo, as in TRL.

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
        truncated: (N,) bool, True for completions that hit the length limit without EOS; None
            keeps every completion.
        per_token_weight: (N, T) no-grad weights multiplying ℓ_{i,t} (KL included) before the
            aggregation, as TRL applies its vLLM importance-sampling correction
            (`rollout_correction_weights`); None = 1.

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
    if truncated is not None:
        if truncated.shape != advantages.shape:
            raise ValueError(f"truncated must be ({logp.shape[0]},), got {tuple(truncated.shape)}")
        active = active & ~truncated.bool().unsqueeze(1)  # (N, T): a truncated row loses every token
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
    if per_token_weight is not None:
        per_token = per_token * per_token_weight.detach()
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
