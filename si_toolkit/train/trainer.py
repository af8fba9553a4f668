"""The ENIGMA training loop: GRPO + λ_SAMI·SAMI + λ_OT·Sinkhorn in one readable step.

    L = L_GRPO + λ_SAMI · L_SAMI + λ_OT · S_ε(policy hidden states, reference hidden states)

`train` runs steps until `max_steps`; `train_step` is one step, top to bottom like nanoGPT's
loop: set the learning rate, generate, score rewards, compute advantages, then for each of
`num_iterations` updates run the micro-batches (loss terms, backward), clip, step; finally
log, warn and checkpoint. The loss formulas are in `losses/`, the micro-batch assembly in
`terms.py`, loading and resume in `session.py`, checkpoints in `checkpoint.py`.

A step's global batch is `prompts_per_step` prompts × `num_generations` completions. Under
torchrun each process takes the prompts at positions ≡ rank (mod world size) (a group never
spans processes), takes its rows of the advantages computed over the whole step's gathered
rewards, and DDP (or FSDP, sharding.py) averages the gradients; loss weights
(terms.term_weights) make that equal to the gradient of the global batch.
Sampling seeds depend only on (seed, step, prompt position), so runs with different process
counts, and resumed runs, see the same completions.

Reward hook: `train(..., reward_fn=f)` replaces the configured reward with f(group) -> G
floats (e.g. a toy reward in tests, or a reward model); the format rates are logged anyway.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from si_toolkit.backends.cpu_attention import grouped_attention
from si_toolkit.backends.cpu_linear import onednn_linears
from si_toolkit.errors import SIError
from si_toolkit.principles import PrincipleSet
from si_toolkit.train import losses
from si_toolkit.train.checkpoint import capture_rng, prune_checkpoints, save_checkpoint
from si_toolkit.train.config import TrainConfig
from si_toolkit.train.distributed import DistContext, all_gather_rows, all_reduce_sum, barrier
from si_toolkit.train.forward import forward_pairs, span_mask, span_sums
from si_toolkit.train.metrics import StatSums, health_warnings, rollout_stats
from si_toolkit.train.rewards import compute_rewards, reward_terms
from si_toolkit.train.colocate import push_weights
from si_toolkit.train.rollout import Group, group_seed, rollout_groups, step_prompt_indices
from si_toolkit.train.session import Session, open_session
from si_toolkit.train.sharding import optimizer_state, sync_generation_copy
from si_toolkit.train.terms import (MicroBatch, Models, loss_tokens, micro_batch_loss, reference_logp_needed,
                                   reference_states_needed, sami_pairs, term_weights)

__all__ = ["RewardHook", "TrainResult", "learning_rate_at", "step_advantages", "train", "train_step"]

RewardHook = Callable[[Group], Sequence[float]]
StepCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run lives and what it logged in this invocation."""

    out_dir: Path
    last_step: int
    checkpoint: Path
    rows: list[dict[str, Any]]


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Learning rate of `step` (1-based): linear warm-up to the peak, then constant or cosine to 0.

        warm-up (step <= w):  lr · step / w
        cosine:               lr · ½ (1 + cos(π · (step − w − 1) / (max_steps − w)))

    The cosine phase starts at the peak and never reaches 0 on the last step. A pure function
    of the step, so the step is the whole scheduler state of a checkpoint.
    """
    w, lr = config.warmup_steps, config.learning_rate
    if w > 0 and step <= w:
        return lr * step / w
    if config.lr_schedule == "constant":
        return lr
    progress = (step - w - 1) / max(1, config.max_steps - w)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(config: TrainConfig, principle_set: PrincipleSet, out_dir: Path, *, resume: bool = False,
          ctx: DistContext = DistContext(), reward_fn: RewardHook | None = None,
          on_step: StepCallback | None = None) -> TrainResult:
    """Train the policy and write checkpoints into `out_dir` (see the module docstring).

    Args:
        config: the resolved training config.
        principle_set: the K variants whose system prompts the completions are sampled under.
        out_dir: the run folder (train_config.json, metrics.jsonl, checkpoint-<step>/).
        resume: continue the run in `out_dir` from its newest checkpoint.
        ctx: this process's place under torchrun (distributed.init_distributed).
        reward_fn: optional reward hook, f(group) -> one reward per completion.
        on_step: called with every step's metrics row (e.g. to print progress).

    Raises:
        SIError: bad config for this model/principle set, a run folder that cannot be resumed,
            or a non-finite loss (after saving a checkpoint of the last finite weights).
    """
    session = open_session(config, principle_set, out_dir, resume=resume, ctx=ctx)
    checkpoint = out_dir / f"checkpoint-{session.start_step}"
    try:
        for step in range(session.start_step + 1, config.max_steps + 1):
            row = train_step(session, step, reward_fn)
            if config.eval_every and step % config.eval_every == 0:
                row.update(evaluate(session, step, reward_fn))
            _log(session, row, on_step)
            if step == config.max_steps or (config.save_every and step % config.save_every == 0):
                resumable = step != config.max_steps or config.save_final_optimizer
                checkpoint = _checkpoint(session, step, optimizer=resumable)
    finally:
        session.metrics.close()
        if session.rollout is not session.backend:
            session.rollout.close()  # the colocated engine's memory goes back to the caller
    return TrainResult(out_dir=out_dir, last_step=max(session.start_step, config.max_steps),
                       checkpoint=checkpoint, rows=session.rows)


def train_step(s: Session, step: int, reward_fn: RewardHook | None = None) -> dict[str, Any]:
    """One step: lr, generate, rewards, advantages, num_iterations × (loss, backward, clip, step)."""
    c, start = s.config, time.perf_counter()
    lr = learning_rate_at(step, c)
    for param_group in s.optimizer.param_groups:
        param_group["lr"] = lr
    groups = _generate(s, step)  # this process's prompts, G completions each
    generation_time = time.perf_counter() - start
    rewards = _rewards(s, groups, reward_fn)  # (n_local,) float64
    row, step_rewards = _rollout_row(s, groups, rewards)  # step_rewards: the whole step's, rank-major
    advantages = step_advantages(step_rewards, len(rewards), c, s.ctx)
    row = {"step": step, "lr": lr, **row}
    # float32 linear layers by oneDNN on CPU, forward and backward (backends/cpu_linear.py)
    with onednn_linears([s.policy, s.current, s.reference], s.backend.device):
        stats = _optimize(s, step, groups, advantages)
    if s.rollout is not s.backend:  # a colocated engine samples the next step from the new weights
        sync_start = time.perf_counter()
        push_weights(s.rollout, s.current)
        stats.add("weight_sync_time", time.perf_counter() - sync_start, 1.0)
    row.update(stats.reduce(s.ctx))
    row["loss"] = row["loss_grpo"] + c.sami_weight * row.get("loss_sami", 0.0) + c.ot_weight * row.get("sinkhorn", 0.0)
    row["step_time"] = time.perf_counter() - start
    row["generation_time"] = generation_time
    row["tokens_per_s"] = row.pop("_tokens") / max(row["step_time"], 1e-9)
    return row


def _optimize(s: Session, step: int, groups: list[Group], advantages: torch.Tensor) -> StatSums:
    """The reference / old log-probs, then num_iterations × (loss and backward per micro-batch,
    clip, optimizer step); returns the step's loss statistics."""
    c = s.config
    batches = _micro_batches(s, groups, advantages.float())  # whole prompts; fixed reference / old log-probs
    stats = StatSums()
    models = Models(model=s.model, policy=s.current, pad_id=s.pad_id, ctx=s.ctx, precision=s.autocast)
    # The CPU attention for passes with gradients (backends/cpu_attention.py) stays on until the
    # last backward, so that checkpointed layers recompute with the attention they ran.
    with _dropout_rng(s, step), grouped_attention(s.policy, s.backend.device):
        for _ in range(c.num_iterations):
            finite = True
            for i, mb in enumerate(batches):
                sync = nullcontext() if i == len(batches) - 1 or not s.ctx.enabled else s.model.no_sync()
                with sync:  # DDP all-reduces gradients only after the last micro-batch
                    loss = micro_batch_loss(c, models, mb, s.k, stats)
                    finite = finite and bool(torch.isfinite(loss.detach()))
                    loss.backward()
            stats.add("grad_norm", _clip_and_step(s, step, finite), 1.0)
    return stats


def _generate(s: Session, step: int) -> list[Group]:
    """Sample this process's groups: prompt positions rank, rank + W, ... of the step."""
    c = s.config
    indices = step_prompt_indices(len(s.prompts), c.prompts_per_step, step, c.seed)
    texts = [v.text for v in s.principle_set.variants]
    mine = [(position, s.prompts.prompts[index]) for position, index in enumerate(indices)
            if position % s.ctx.world_size == s.ctx.rank]
    with _sampling_precision(s):
        return rollout_groups(s.rollout, s.tokenizer, mine, texts, num_generations=c.num_generations,
                              sampling=s.sampling, prefill=c.prefill, seed=c.seed, step=step)


def _sampling_precision(s: Session) -> AbstractContextManager[Any]:
    """The policy samples under the autocast of its loss forward, so with bf16 on it samples from the
    distribution it trains (a colocated vLLM engine has its own dtype and runs outside it)."""
    return s.autocast() if s.rollout is s.backend else nullcontext()


def _rewards(s: Session, groups: list[Group], reward_fn: RewardHook | None) -> np.ndarray:
    """One reward per completion, group-major: the configured reward, or the hook's."""
    if reward_fn is None:
        texts = [r.text for g in groups for r in g.rollouts]
        answers = [g.prompt.answer for g in groups for _ in g.rollouts]
        return compute_rewards(texts, answers, s.config.reward_config())
    out = []
    for g in groups:
        values = [float(v) for v in reward_fn(g)]
        if len(values) != len(g.rollouts):
            raise ValueError(f"reward_fn returned {len(values)} rewards for a group of {len(g.rollouts)} completions")
        out.extend(values)
    return np.asarray(out, dtype=np.float64)


def _rollout_row(s: Session, groups: list[Group], rewards: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Reward, format and length statistics of the whole step (gathered over processes), and the
    step's rewards in rank order (each rank's rows are whole groups)."""
    rollouts = [r for g in groups for r in g.rollouts]
    texts = [r.text for r in rollouts]
    answers = [g.prompt.answer for g in groups for _ in g.rollouts]
    terms = reward_terms(texts, answers, s.config.reward_config())
    local = np.stack([rewards, terms["strict_format"], terms["graded_format"],
                      [len(r.token_ids) for r in rollouts], [r.finish_reason == "length" for r in rollouts]], axis=1)
    table = all_gather_rows(torch.from_numpy(local.astype(np.float64)), s.ctx).numpy()  # (n_global, 5)
    row = rollout_stats(table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 4], s.config.num_generations)
    row["_tokens"] = float(table[:, 3].sum())
    return row, table[:, 0]


def step_advantages(step_rewards: np.ndarray, n_local: int, config: TrainConfig, ctx: DistContext) -> torch.Tensor:
    """This process's advantages, computed over the whole step as TRL does (scale_rewards=batch
    divides by the std of every reward of the step). step_rewards is rank-major and every rank
    holds n_local rows of whole groups."""
    every = losses.group_advantages(torch.from_numpy(step_rewards), config.num_generations, scale=config.scale_rewards)
    return every[ctx.rank * n_local: (ctx.rank + 1) * n_local]


@contextmanager
def _dropout_rng(s: Session, step: int) -> Iterator[None]:
    """LoRA dropout draws its masks from torch's global generator: seed it from (seed, step, rank)
    for the step's updates, so runs and resumed runs repeat, and restore the caller's state after."""
    if not (s.lora and s.config.lora_dropout > 0.0):
        yield
        return
    device = _device(s)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(group_seed(s.config.seed, step, s.ctx.rank, 2))
        yield


def _micro_batches(s: Session, groups: list[Group], advantages: torch.Tensor) -> list[MicroBatch]:
    """Split this process's groups into grad_accum micro-batches and fix what the updates reuse."""
    c = s.config
    masked = c.mask_truncated_completions
    total_tokens = int(all_reduce_sum(torch.tensor(loss_tokens(groups, masked)), s.ctx))
    size = len(groups) // c.grad_accum
    batches, offset = [], 0
    for start in range(0, len(groups), size):
        part = groups[start: start + size]
        n_seq = sum(len(g.rollouts) for g in part)
        mb = MicroBatch(groups=part, advantages=advantages[offset: offset + n_seq].to(_device(s)), weights={})
        mb.weights = term_weights(c, s.ctx, n_seq, loss_tokens(part, masked), len(part) * (c.num_generations // s.k),
                                  total_tokens, s.k)
        offset += n_seq
        with torch.no_grad(), s.autocast():  # the reference under the policy's precision: S_ε and KL start at 0
            mb.ref = _reference_pass(s, mb)
            if c.num_iterations > 1:  # off-policy updates need π_old fixed before the first one
                mb.old_logp = forward_pairs(s.current, mb.diagonal(), pad_id=s.pad_id, temperature=c.temperature).logp
        batches.append(mb)
    return batches


def _device(s: Session) -> torch.device:
    return next(s.policy.parameters()).device


def _reference_pass(s: Session, mb: MicroBatch) -> Any:
    """The frozen reference on the diagonal pairs: log-probs (KL) and hidden states (OT)."""
    c = s.config
    with_logits, with_states = reference_logp_needed(c), reference_states_needed(c)
    if not (with_logits or with_states):
        return None
    model = s.policy if s.lora else s.reference
    adapters_off = s.policy.disable_adapter() if s.lora else nullcontext()  # LoRA: the reference is the base model
    # Without the KL the pass skips the lm-head, a fifth of its cost for a 49k-token vocabulary.
    layers = list(c.ot_layers) if with_states else []
    with adapters_off:
        return forward_pairs(model, mb.diagonal(), pad_id=s.pad_id, temperature=c.temperature, layers=layers,
                             with_logits=with_logits)


def _clip_and_step(s: Session, step: int, finite: bool) -> float:
    """Clip the gradient norm, take the optimizer step; stop cleanly on a non-finite loss or gradient."""
    c = s.config
    params = [p for p in s.policy.parameters() if p.requires_grad]
    max_norm = c.max_grad_norm if c.max_grad_norm > 0 else float("inf")
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    bad = all_reduce_sum(torch.tensor(0.0 if finite and math.isfinite(norm) else 1.0), s.ctx)
    if float(bad) > 0:
        s.optimizer.zero_grad(set_to_none=True)
        saved = _checkpoint(s, step - 1)
        raise SIError(f"step {step}: the loss or its gradient is not finite (grad norm {norm}); the last finite "
                      f"weights are saved in {saved}. Lower learning_rate, raise ot_epsilon, or set max_grad_norm")
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    if s.fsdp:
        sync_generation_copy(s.policy, s.current)
    return norm


def evaluate(s: Session, step: int, reward_fn: RewardHook | None = None) -> dict[str, float]:
    """Reward, format rate, length and SAMI bound on the eval prompts (no gradients), as eval_* keys.

    Eval completions use seeds that do not depend on the step, so successive evaluations
    differ only through the policy.
    """
    c, stats = s.config, StatSums()
    if s.eval_prompts is None:
        raise SIError("evaluation needs eval_prompts; set eval_prompts or eval_every=0")
    texts = [v.text for v in s.principle_set.variants]
    mine = [(position, prompt) for position, prompt in enumerate(s.eval_prompts.prompts)
            if position % s.ctx.world_size == s.ctx.rank]
    with _sampling_precision(s):
        groups = rollout_groups(s.rollout, s.tokenizer, mine, texts, num_generations=c.num_generations,
                                sampling=s.sampling, prefill=c.prefill, seed=c.seed, step=0)
    for group in groups:
        rewards = _rewards(s, [group], reward_fn)
        stats.add("eval_reward_mean", float(rewards.mean()), len(rewards))
        stats.add("eval_format_rate", float(np.mean([r.format_ok for r in group.rollouts])), len(rewards))
        stats.add("eval_completion_length", float(np.mean([len(r.token_ids) for r in group.rollouts])), len(rewards))
        if c.num_generations % s.k == 0:
            stats.add("eval_sami_mi_bound", _sami_bound(s, group), 1.0)
    return stats.reduce(s.ctx)


@torch.no_grad()
def _sami_bound(s: Session, group: Group) -> float:
    """log K − L_SAMI of one group's matrices under the current policy."""
    pairs, index, bounds = sami_pairs([group], s.k, s.config.sami_span)
    diagonal = [(r.prompt_ids, r.token_ids) for r in group.rollouts]
    # float32 linear layers by oneDNN on CPU, as in the training step's passes
    with s.autocast(), onednn_linears([s.current], s.backend.device):
        out = forward_pairs(s.current, diagonal + pairs, pad_id=s.pad_id, temperature=s.config.temperature)
    sums, counts = span_sums(out.logp, span_mask(bounds, out.logp.shape[1], out.logp.device) & out.mask)
    index = index.to(sums.device)
    _, info = losses.batched_sami_loss(sums[index], n_tokens=counts[index], critic=s.config.sami_critic)
    return float(info["mi_bound"])


def _log(s: Session, row: dict[str, Any], on_step: StepCallback | None) -> None:
    warnings = health_warnings(row, entropy_warn=s.config.entropy_warn, zero_std_warn=s.config.zero_std_warn)
    row["warnings"] = warnings
    s.rows.append(row)
    s.metrics.write(row)
    if s.ctx.is_main:
        for message in warnings:
            print(f"warning: step {row['step']}: {message}", file=sys.stderr)
        if on_step is not None:
            on_step(row)


def _checkpoint(s: Session, step: int, *, optimizer: bool = True) -> Path:
    """Save checkpoint-<step> on the main process; the others wait. Returns its path.

    optimizer=False leaves the optimizer state out (a model-only final checkpoint, see
    save_final_optimizer); such a checkpoint cannot be resumed from.
    """
    path = s.out_dir / f"checkpoint-{step}"
    optimizer_state_dict = optimizer_state(s.policy, s.optimizer, s.fsdp) if optimizer else None  # every rank
    if s.ctx.is_main:
        state = {"step": step, "rng": capture_rng(), "config": s.config.to_dict(), "world_size": s.ctx.world_size}
        if optimizer_state_dict is not None:
            state["optimizer"] = optimizer_state_dict
        save_checkpoint(s.out_dir, step, s.current, s.tokenizer, state)
        prune_checkpoints(s.out_dir, s.config.save_total_limit)
    barrier(s.ctx)
    return path
