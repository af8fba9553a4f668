"""Pure loss functions of the ENIGMA trainer: GRPO, SAMI and the Sinkhorn regulariser.

The trainer minimises

    L_ENIGMA = L_GRPO + λ_SAMI · L_SAMI + λ_OT · S_ε(policy states, reference states)

and every term is one function here, tensors in and tensors out, with no state. The package
splits by term into private modules and re-exports their public names below:

- `_grpo`: `group_advantages` (group-relative advantages, TRL semantics) and `grpo_loss`
  (clipped surrogate, token- or sequence-level importance weights, optional k3 KL, the
  `grpo` / `dr_grpo` / `dapo` aggregations of TRL's `GRPOTrainer._compute_loss`).
- `_correction`: `rollout_correction_weights`, the truncated importance weights that correct
  for rollouts sampled by another engine (vLLM), with TRL's four capping modes.
- `_sami`: `sami_loss`, `batched_sami_loss`: SAMI's symmetric InfoNCE over the K×K matrix of
  one prompt (Fränken et al. 2024, arXiv:2404.14313).
- `_sinkhorn`: `sinkhorn_penalty` (debiased entropic Sinkhorn divergence between hidden-state
  clouds, Feydy et al. 2019, arXiv:1810.08278, solved by POT in the log domain; POT is
  imported on first use) and `pool_hidden_states` (masked mean pooling).

Named variants (house rule 7) live in one registry per axis: `ADVANTAGE_SCALES`,
`IMPORTANCE_LEVELS`, `LOSS_AGGREGATIONS`, `ROLLOUT_CORRECTIONS` and `SAMI_CRITICS`. Adding a variant means one
function, one registry entry and one test parameter. Units are nats throughout.
"""

from si_toolkit.train.losses._grpo import (
    ADVANTAGE_SCALES,
    ADVANTAGE_STD_EPS,
    IMPORTANCE_LEVELS,
    LOSS_AGGREGATIONS,
    AdvantageScale,
    ImportanceLevel,
    LossType,
    group_advantages,
    grpo_loss,
)
from si_toolkit.train.losses._correction import ROLLOUT_CORRECTIONS, RolloutCorrection, rollout_correction_weights
from si_toolkit.train.losses._sami import SAMI_CRITICS, SamiCritic, batched_sami_loss, sami_loss
from si_toolkit.train.losses._sinkhorn import pool_hidden_states, sinkhorn_penalty

__all__ = [
    "ROLLOUT_CORRECTIONS",
    "RolloutCorrection",
    "rollout_correction_weights",
    "ADVANTAGE_SCALES",
    "ADVANTAGE_STD_EPS",
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
