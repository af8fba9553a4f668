"""The Sinkhorn regulariser on hidden states: pooling, and the debiased entropic divergence.

- `pool_hidden_states`: masked mean pooling of hidden states into one vector per sequence.
- `sinkhorn_penalty`: debiased entropic Sinkhorn divergence between hidden-state clouds
  (Feydy et al. 2019, arXiv:1810.08278), solved by POT in the log domain.

POT (`ot`) is imported on first use, by `_pot`, not when this module is imported.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from types import ModuleType
from typing import cast

import torch
from torch import Tensor

from si_toolkit.errors import SIError

__all__ = ["pool_hidden_states", "sinkhorn_penalty"]

# POT builds every array backend it can import (JAX, CuPy, TensorFlow) on first use, to learn
# which one an input belongs to. This module gives it torch tensors only; on hosts that have JAX
# installed, building JAX's backend asks for float64 and JAX warns at every run.
_UNUSED_POT_BACKENDS = ("JAX", "CUPY", "TENSORFLOW")


def _pot() -> ModuleType:
    """POT, imported with the array backends this module never uses turned off.

    The setting is made here, right before the first `import ot`, rather than when the package
    is imported; an explicit setting by the user still wins. POT reads it once, at its own
    import, so it has no effect if something imported POT earlier.
    """
    for backend in _UNUSED_POT_BACKENDS:
        os.environ.setdefault(f"POT_BACKEND_DISABLE_{backend}", "1")
    import ot  # POT ships no type information (pyproject: ignore_missing_imports)

    return cast(ModuleType, ot)


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
    # Inside a caller's autocast the cost matrix would be a bf16 matmul, too coarse to converge.
    with torch.autocast(x.device.type, enabled=False), warnings.catch_warnings():
        if standardize:
            x, y = _standardize(x, y)
        # POT warns without context; the plan check below warns once, naming our knobs.
        warnings.filterwarnings("ignore", message=".*did not converge.*")
        res = _pot().solve_sample(
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
