"""Correcting for the sampler: truncated importance sampling of vLLM rollouts (TRL's semantics).

When the completions come from a different engine than the one that trains (vLLM's kernels,
its sampler, bf16 weights), the tokens are drawn from π_vllm, not from the π_old the GRPO
surrogate assumes. The correction multiplies every token's loss by an importance weight

    r_{i,t} = exp(log π_old(y_{i,t}) − log π_vllm(y_{i,t}))                 per token
    r_i     = exp(Σ_t m_{i,t} (log π_old − log π_vllm))                      per sequence (product)

capped at `cap`, by one of the modes in `ROLLOUT_CORRECTIONS` (TRL's
`vllm_importance_sampling_mode` names):

    token_truncate:    w_{i,t} = min(r_{i,t}, cap)
    token_mask:        w_{i,t} = r_{i,t} if r_{i,t} ≤ cap else 0
    sequence_truncate: w_{i,t} = min(r_i, cap)
    sequence_mask:     w_{i,t} = r_i if r_i ≤ cap else 0

Weights carry no gradient. With identical engines r = 1 and the correction changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor

from si_toolkit.train.losses._common import choose as _choose

__all__ = ["ROLLOUT_CORRECTIONS", "RolloutCorrection", "rollout_correction_weights"]

RolloutCorrection = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def _token_ratio(log_ratio: Tensor, maskf: Tensor) -> Tensor:
    return torch.exp(log_ratio)


def _sequence_ratio(log_ratio: Tensor, maskf: Tensor) -> Tensor:
    return torch.exp((log_ratio * maskf).sum(dim=1, keepdim=True)).expand_as(log_ratio)


def _truncate(ratio: Tensor, cap: float) -> Tensor:
    return torch.clamp(ratio, max=cap)


def _mask(ratio: Tensor, cap: float) -> Tensor:
    return torch.where(ratio <= cap, ratio, torch.zeros_like(ratio))


ROLLOUT_CORRECTIONS: Mapping[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, float], Tensor]]] = (
    MappingProxyType({
        "token_truncate": (_token_ratio, _truncate),
        "token_mask": (_token_ratio, _mask),
        "sequence_truncate": (_sequence_ratio, _truncate),
        "sequence_mask": (_sequence_ratio, _mask),
    })
)


@torch.no_grad()
def rollout_correction_weights(old_logp: Tensor, sampling_logp: Tensor, mask: Tensor, *,
                               mode: RolloutCorrection = "sequence_mask", cap: float = 3.0) -> tuple[Tensor, dict[str, float]]:
    """Importance weights (N, T) of the sampled tokens and the mismatch statistics.

    Args:
        old_logp: (N, T) log π_old of the completion tokens under the trained model.
        sampling_logp: (N, T) log-probs the sampler reported for the same tokens.
        mask: (N, T) 1 at completion tokens, 0 at padding (padding gets weight 0).
        mode: a name in `ROLLOUT_CORRECTIONS`.
        cap: the cap of the ratio (> 0).

    Returns:
        weights, and floats: `rollout_logp_diff_mean` / `_max` (mean and max over active tokens
        of |log π_old − log π_vllm|, the engines' mismatch in nats), `rollout_is_ratio_mean`
        (mean raw ratio over active tokens) and `rollout_is_capped_ratio` (share of active
        tokens whose ratio was truncated or masked).
    """
    ratio_of, cap_with = _choose(ROLLOUT_CORRECTIONS, mode, "vllm_importance_sampling_mode")
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    active = mask.bool()
    maskf = active.to(old_logp.dtype)
    log_ratio = torch.where(active, old_logp - sampling_logp, torch.zeros_like(old_logp))
    ratio = ratio_of(log_ratio, maskf)
    weights = cap_with(ratio, cap) * maskf
    n = maskf.sum().clamp(min=1.0)
    diff = log_ratio.abs()
    stats = {
        "rollout_logp_diff_mean": float(diff.sum() / n),
        "rollout_logp_diff_max": float(diff.max()) if bool(active.any()) else 0.0,
        "rollout_is_ratio_mean": float((ratio * maskf).sum() / n),
        "rollout_is_capped_ratio": float(((ratio > cap) & active).sum() / n),
    }
    return weights, stats
