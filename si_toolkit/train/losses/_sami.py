"""SAMI's symmetric InfoNCE over the K×K matrix of one prompt (Fränken et al. 2024, arXiv:2404.14313).

Registry (house rule 7): `SAMI_CRITICS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

import torch
from torch import Tensor

from si_toolkit.errors import SIError
from si_toolkit.train.losses._common import choose as _choose

__all__ = ["SAMI_CRITICS", "SamiCritic", "batched_sami_loss", "sami_loss"]

SamiCritic = Literal["mean", "sum"]


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
