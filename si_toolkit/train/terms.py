"""The loss of one micro-batch: L = w_GRPO·L_GRPO + λ_SAMI·w_SAMI·L_SAMI + λ_OT·w_OT·S_ε.

The formulas live in `si_toolkit.train.losses`; this module only feeds them:

- GRPO: the policy's per-token log-probs of the sampled completions under their own prompts
  (the "diagonal" pairs), the fixed old / reference log-probs, and the group advantages.
- SAMI: for every prompt and replicate r, the K×K matrix L[i, j] = log π_θ(y_{j,r} | x, c_i)
  summed over `sami_span`. Its diagonal is the GRPO forward itself; the K(K−1) off-diagonal
  pairs join the same forward (one pass, with gradients) when λ_SAMI > 0, and run as a
  separate no-grad pass when the term is only monitored.
- OT: hidden states of `ot_layers` from that same policy forward, over `ot_span` tokens,
  against the frozen reference's states on the same tokens; S_ε is averaged over layers.

Weights w make the sum over micro-batches and processes equal the loss of the whole global
batch after DDP averages gradients (see `term_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from si_toolkit.train import losses
from si_toolkit.train.config import TrainConfig
from si_toolkit.train.distributed import DistContext, all_gather_rows, gather_cloud
from si_toolkit.train.forward import ForwardOutput, forward_pairs, lora_dropout, span_mask, span_sums
from si_toolkit.train.metrics import StatSums
from si_toolkit.tensors import Span
from si_toolkit.train.rollout import Group, span_bounds

__all__ = ["MIN_OT_POINTS", "MicroBatch", "Models", "loss_tokens", "micro_batch_loss", "reference_logp_needed",
           "reference_states_needed", "sami_pairs", "term_weights"]

MIN_OT_POINTS = 2  # per cloud, over all processes (see _ot_term)


@dataclass
class Models:
    """What a micro-batch needs to run forwards: the trained model and how to reach the others."""

    model: Any  # forward with gradients (DDP wrapper or the policy itself)
    policy: Any  # the unwrapped policy, for no-grad passes
    pad_id: int
    ctx: DistContext
    precision: Callable[[], AbstractContextManager[Any]] = nullcontext  # of every forward (Session.autocast)


@dataclass
class MicroBatch:
    """Whole prompts of one micro-batch with everything fixed before the updates."""

    groups: list[Group]
    advantages: Tensor  # (n,) one per diagonal pair, group-major
    weights: dict[str, float]  # term -> weight w (see term_weights)
    ref: ForwardOutput | None = None  # frozen reference on the diagonal pairs
    old_logp: Tensor | None = None  # (n, C) π_old when num_iterations > 1
    n_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_tokens = sum(len(r.token_ids) for g in self.groups for r in g.rollouts)

    def diagonal(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """(prompt under its own variant, completion) of every rollout, group-major."""
        return [(r.prompt_ids, r.token_ids) for g in self.groups for r in g.rollouts]


def term_weights(config: TrainConfig, ctx: DistContext, n_seq: int, n_tok: int, n_mats: int,
                 total_tokens: int, k: int) -> dict[str, float]:
    """Per-term weights of one micro-batch so that Σ_micro-batches Σ_ranks w·L / world is the global loss.

    With W = world size, N_* the global counts of one step (completions, active tokens, SAMI
    matrices) and n_* this micro-batch's:

        grpo (dapo):          W · n_tok / N_tok        (TRL: loss ÷ active tokens of the global batch)
        grpo (grpo, dr_grpo): W · n_seq / N_seq        (means over sequences)
        sami:                 W · n_mats / N_mats      (mean over the step's K×K matrices)
        ot:                   W / grad_accum           (each rank computes the same S_ε on the gathered
                                                        clouds but differentiates only its own rows)

    DDP divides the summed gradients by W, which cancels the W factors.
    """
    world = ctx.world_size
    n_seq_global = config.prompts_per_step * config.num_generations
    n_mats_global = config.prompts_per_step * (config.num_generations // k)
    # With no token left in the step (every completion masked as truncated) each micro-batch's dapo
    # loss is 0; the sequence share then keeps the logged mean defined (0, not 0/0).
    by_tokens = config.loss_type == "dapo" and total_tokens > 0
    grpo = world * (n_tok / total_tokens if by_tokens else n_seq / n_seq_global)
    return {"grpo": grpo, "sami": world * n_mats / max(n_mats_global, 1), "ot": world / config.grad_accum}


def reference_logp_needed(config: TrainConfig) -> bool:
    """Whether the reference pass computes log-probs: for the KL, a loss term when beta > 0 and
    otherwise a monitor (logged as `kl` with monitor_off_terms, as TRL logs it only when beta > 0)."""
    return config.beta > 0.0 or config.monitor_off_terms


def reference_states_needed(config: TrainConfig) -> bool:
    """Whether the reference pass returns hidden states: for the Sinkhorn term, trained on when
    λ_OT > 0 and otherwise monitored with monitor_off_terms."""
    return config.ot_weight > 0.0 or config.monitor_off_terms


def loss_tokens(groups: Sequence[Group], mask_truncated: bool) -> int:
    """Completion tokens that enter the GRPO loss (dapo's count): all of them, or with
    mask_truncated_completions only those of completions that ended with EOS."""
    return sum(len(r.token_ids) for g in groups for r in g.rollouts
               if not (mask_truncated and r.finish_reason == "length"))


Pair = tuple[tuple[int, ...], tuple[int, ...]]  # (prompt ids, completion ids)


def sami_pairs(groups: Sequence[Group], k: int, span: Span) -> tuple[list[Pair], Tensor, list[tuple[int, int]]]:
    """Off-diagonal pairs and the index table of the SAMI matrices of these groups.

    Returns:
        pairs: the K(K−1) off-diagonal (prompt under c_i, completion y_{j,r}) pairs per matrix,
            each completion cut after the span (at least one token kept).
        index: (M, K, K) long; index[m, i, j] is the row of L[i, j] in [diagonal pairs; pairs].
        bounds: span bounds of the completion of every row, diagonal rows first.
    """
    diagonal = [r for g in groups for r in g.rollouts]
    bounds = [span_bounds(r, span) for r in diagonal]
    pairs: list[Pair] = []
    tables = []
    row = 0
    for g in groups:
        where = {(r.variant, r.replicate): row + n for n, r in enumerate(g.rollouts)}
        row += len(g.rollouts)
        for rep in range(len(g.rollouts) // k):
            table = [[0] * k for _ in range(k)]
            for i in range(k):
                for j in range(k):
                    if i == j:
                        table[i][j] = where[(j, rep)]
                        continue
                    y = diagonal[where[(j, rep)]]
                    start, end = span_bounds(y, span)
                    table[i][j] = len(diagonal) + len(pairs)
                    # Tokens after the span cannot move the log-probs inside it (causal attention):
                    # the cross pair stops at the span's end, which spares the answer tokens' compute.
                    pairs.append((g.variant_prompt_ids[i], y.token_ids[: max(end, 1)]))
                    bounds.append((start, end))
            tables.append(table)
    return pairs, torch.tensor(tables, dtype=torch.long), bounds


def micro_batch_loss(config: TrainConfig, models: Models, mb: MicroBatch, k: int, stats: StatSums) -> Tensor:
    """The weighted loss of one micro-batch (a scalar with grad); adds its statistics to `stats`."""
    sami_on = config.sami_weight > 0.0
    sami_seen = sami_on or (config.monitor_off_terms and config.num_generations % k == 0)
    ot_seen = mb.ref is not None and reference_states_needed(config)
    diagonal = mb.diagonal()
    extra, index, bounds = sami_pairs(mb.groups, k, config.sami_span) if sami_seen else ([], None, [])
    layers = list(config.ot_layers) if ot_seen else []
    with lora_dropout(models.policy, config.lora_r > 0 and config.lora_dropout > 0.0), models.precision():
        out = forward_pairs(models.model, diagonal + (extra if sami_on else []), pad_id=models.pad_id,
                            temperature=config.temperature, layers=layers, with_entropy=True,
                            recompute=config.gradient_checkpointing)
    n = len(diagonal)
    loss = mb.weights["grpo"] * _grpo_term(config, out, mb, n, stats)
    if sami_seen and index is not None:
        logp_all, mask_all = out.logp, out.mask
        if not sami_on and extra:
            with torch.no_grad(), models.precision():
                off = forward_pairs(models.policy, extra, pad_id=models.pad_id, temperature=config.temperature)
            logp_all, mask_all = _stack_rows(out.logp[:n].detach(), off.logp), _stack_rows(out.mask[:n], off.mask)
        sami = _sami_term(config, logp_all, mask_all, index, bounds, mb.weights["sami"], stats)
        if sami_on:
            loss = loss + config.sami_weight * mb.weights["sami"] * sami
    if ot_seen and mb.ref is not None:
        ot = _ot_term(config, out, mb.ref, mb.groups, models.ctx, stats, with_grad=config.ot_weight > 0.0)
        if config.ot_weight > 0.0:
            loss = loss + config.ot_weight * mb.weights["ot"] * ot
    return loss


def _grpo_term(config: TrainConfig, out: ForwardOutput, mb: MicroBatch, n: int, stats: StatSums) -> Tensor:
    logp, mask = out.logp[:n], out.mask[:n]
    old = mb.old_logp if mb.old_logp is not None else logp.detach()
    ref_logp = mb.ref.logp if mb.ref is not None and reference_logp_needed(config) else None
    truncated = None
    if config.mask_truncated_completions:
        truncated = torch.tensor([r.finish_reason == "length" for g in mb.groups for r in g.rollouts], device=logp.device)
    weight = _rollout_correction(config, mb, old, mask, stats)
    loss, info = losses.grpo_loss(
        logp, old, mb.advantages, mask, epsilon=config.epsilon, epsilon_high=config.epsilon_high,
        importance_level=config.importance_level, loss_type=config.loss_type,
        max_completion_length=config.max_completion_length, ref_logp=ref_logp, beta=config.beta, truncated=truncated,
        per_token_weight=weight,
    )
    stats.add("loss_grpo", float(loss.detach()), mb.weights["grpo"])
    for key, value in info.items():
        stats.add(key, value, mb.n_tokens)
    if out.entropy is not None:
        stats.add("entropy", float(out.entropy[:n][mask].mean()), mb.n_tokens)
    return loss


def _rollout_correction(config: TrainConfig, mb: MicroBatch, old: Tensor, mask: Tensor, stats: StatSums) -> Tensor | None:
    """The importance weights for rollouts from another sampler (vLLM), and its mismatch statistics.

    None when the sampler reported no log-probs (rollout_backend=hf: the policy sampled itself)
    or the correction is off; the mismatch is logged whenever the log-probs are there.
    """
    rollouts = [r for g in mb.groups for r in g.rollouts]
    if not rollouts or any(r.sampling_logp is None for r in rollouts):
        return None
    sampling = torch.zeros_like(old)
    for row, r in enumerate(rollouts):
        sampling[row, : len(r.sampling_logp)] = torch.tensor(r.sampling_logp, dtype=old.dtype)
    weights, info = losses.rollout_correction_weights(old, sampling, mask, mode=config.vllm_importance_sampling_mode,
                                                      cap=config.vllm_importance_sampling_cap)
    for key, value in info.items():
        stats.add(key, value, mb.n_tokens)
    return weights if config.vllm_importance_sampling_correction else None


def _stack_rows(a: Tensor, b: Tensor) -> Tensor:
    """Concatenate two (rows, C_a) / (rows, C_b) tensors, right-padding the narrower with zeros."""
    width = max(a.shape[1], b.shape[1])
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))  # noqa: E731
    return torch.cat([pad(a), pad(b)])


def _sami_term(config: TrainConfig, logp: Tensor, mask: Tensor, index: Tensor, bounds: list[tuple[int, int]],
               weight: float, stats: StatSums) -> Tensor:
    spans = span_mask(bounds, logp.shape[1], logp.device) & mask
    sums, counts = span_sums(logp, spans)  # (rows,)
    index = index.to(logp.device)
    loss, info = losses.batched_sami_loss(sums[index], n_tokens=counts[index], critic=config.sami_critic)
    stats.add("loss_sami", float(loss.detach()), weight)
    for key in ("mi_bound", "accuracy_row", "accuracy_col"):
        stats.add(f"sami_{key}", info[key], weight)
    return loss


def _ot_term(config: TrainConfig, out: ForwardOutput, ref: ForwardOutput, groups: list[Group], ctx: DistContext,
             stats: StatSums, *, with_grad: bool) -> Tensor:
    """S_ε between policy and reference clouds, averaged over layers; every rank gets the same value.

    Completions with an empty span (e.g. a CoT span when the answer tag comes first) give no
    point. A cloud needs at least MIN_OT_POINTS points over all processes: with one point per
    side the standardisation has no spread to measure and S_ε is the constant 4 whatever the
    drift, so such a micro-batch adds no OT term and logs no Sinkhorn value.
    """
    rollouts = [r for g in groups for r in g.rollouts]
    n = len(rollouts)
    spans = span_mask([span_bounds(r, config.ot_span) for r in rollouts], out.mask.shape[1], out.mask.device)
    spans = spans & out.mask[:n]
    values = []
    for layer in config.ot_layers:
        policy = out.hidden[layer][:n]
        policy = policy if with_grad else policy.detach()
        x = gather_cloud(_points(policy, spans, config), ctx)
        y = all_gather_rows(_points(ref.hidden[layer], spans, config), ctx)
        if x.shape[0] < MIN_OT_POINTS:  # the same on every rank: the clouds are gathered
            return policy.sum() * 0.0
        values.append(losses.sinkhorn_penalty(x, y, epsilon=config.ot_epsilon))
    value = torch.stack(values).mean()
    stats.add("sinkhorn", float(value.detach()), 1.0)
    return value


def _points(hidden: Tensor, spans: Tensor, config: TrainConfig) -> Tensor:
    """The OT points of one cloud: (n_rows_with_tokens, D) pooled, or (n_tokens, D) per token."""
    keep = spans.any(dim=1)
    if config.ot_pooling == "mean":
        if not bool(keep.any()):
            return hidden.new_zeros((0, hidden.shape[-1]), dtype=torch.float32)
        return losses.pool_hidden_states(hidden[keep], spans[keep])
    tokens = hidden[spans].float()  # (n_tokens, D)
    if tokens.shape[0] > config.ot_max_points:
        # Evenly spaced, deterministic subsample; the reference uses the same positions.
        picks = torch.linspace(0, tokens.shape[0] - 1, config.ot_max_points, device=tokens.device).round().long()
        tokens = tokens[picks]
    return tokens
