"""Rollouts: which prompts a step uses, which variant each completion gets, and sampling them.

Everything random here is a pure function of (seed, step, position of the prompt in the step),
never of the process count, the batch a prompt lands in, or the global RNG. So a resumed run
draws exactly the samples an uninterrupted one would, and N processes draw exactly what one
process would for the same global batch.

- `step_prompt_indices`: the step's prompts, epoch by epoch through a seeded permutation.
- `assign_variants`: the variant of each of the G completions of a prompt, stratified: every
  block of K completions is a random permutation of the K variants (the last, partial block
  a random subset). Each completion's variant is uniform over the K variants, and when G is a
  multiple of K every variant appears G/K times, so the group holds G/K complete K×K SAMI
  matrices (replicate r pairs the r-th completion of every variant).
- `rollout_groups`: renders each prompt under each variant with `si_toolkit.chat` (the same
  rendering and `<think>` prefill as the sampling stage), samples the G completions of every
  prompt of the step in one `Backend.generate` call with a seed per row, and parses their
  spans. One batch of all the step's rows costs about what one prompt's G rows cost (a decode
  step on a CPU is bound by reading the weights), and the per-row seeds keep each prompt's
  samples what a call with that prompt alone would draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from si_toolkit.backends.base import Backend, Generation, SamplingConfig, prompt_seeds
from si_toolkit.chat import parse_response, render_prompt_ids
from si_toolkit.errors import SIError
from si_toolkit.prompts import Prompt
from si_toolkit.tensors import Span

__all__ = ["Group", "Rollout", "assign_variants", "group_seed", "rollout_group", "rollout_groups",
           "span_bounds", "step_prompt_indices"]



@dataclass(frozen=True)
class Rollout:
    """One sampled completion y of a prompt x under variant c."""

    variant: int  # index of c in the principle set
    replicate: int  # r: how many earlier completions of this group share the variant
    prompt_ids: tuple[int, ...]  # x rendered under c (with the prefill)
    token_ids: tuple[int, ...]  # generated ids, EOS included when it was generated
    text: str  # decoded without special tokens and without the prefill
    cot_end: int  # cot span = token_ids[:cot_end]
    format_ok: bool  # exact <think>…</think><answer>…</answer> format
    finish_reason: str  # "stop" (EOS) or "length" (truncated)
    sampling_logp: tuple[float, ...] | None = None  # the sampler's log-prob of each token (vLLM), else None


@dataclass(frozen=True)
class Group:
    """The G rollouts of one prompt, with the prompt rendered under every variant."""

    position: int  # the prompt's position in the step's global batch (keys its seed)
    prompt: Prompt
    variant_prompt_ids: tuple[tuple[int, ...], ...]  # (K,) renderings, index = variant
    rollouts: tuple[Rollout, ...]  # (G,), in sampling order


def step_prompt_indices(n_prompts: int, prompts_per_step: int, step: int, seed: int) -> list[int]:
    """Indices (into the prompt set) of the prompts of `step` (1-based), global batch order.

    The stream of prompts is epoch 0's permutation, then epoch 1's, ...; epoch e's permutation
    comes from numpy's generator seeded with (seed, e). Step s takes stream items
    [(s − 1)·P, s·P). Within a step a prompt may repeat only across an epoch boundary.
    """
    if n_prompts < 1:
        raise ValueError("n_prompts must be >= 1")
    out = []
    for item in range((step - 1) * prompts_per_step, step * prompts_per_step):
        epoch, pos = divmod(item, n_prompts)
        out.append(int(np.random.default_rng([seed, epoch]).permutation(n_prompts)[pos]))
    return out


def group_seed(seed: int, step: int, position: int, salt: int = 0) -> int:
    """A 31-bit seed for one prompt of one step, from numpy's SeedSequence (independent streams)."""
    return int(np.random.SeedSequence([seed, step, position, salt]).generate_state(1)[0] >> 1)


def assign_variants(num_generations: int, k: int, rng: np.random.Generator) -> list[int]:
    """Variants of the G completions: blocks of K, each a random permutation of range(K)."""
    out: list[int] = []
    while len(out) < num_generations:
        out.extend(int(v) for v in rng.permutation(k)[: num_generations - len(out)])
    return out


def rollout_group(
    backend: Backend,
    tokenizer: Any,
    prompt: Prompt,
    variant_texts: Sequence[str],
    *,
    num_generations: int,
    sampling: SamplingConfig,
    prefill: bool,
    seed: int,
    step: int,
    position: int,
) -> Group:
    """Sample the G completions of one prompt: `rollout_groups` with one prompt."""
    return rollout_groups(backend, tokenizer, [(position, prompt)], variant_texts, num_generations=num_generations,
                          sampling=sampling, prefill=prefill, seed=seed, step=step)[0]


def rollout_groups(
    backend: Backend,
    tokenizer: Any,
    prompts: Sequence[tuple[int, Prompt]],
    variant_texts: Sequence[str],
    *,
    num_generations: int,
    sampling: SamplingConfig,
    prefill: bool,
    seed: int,
    step: int,
) -> list[Group]:
    """Sample the G completions of each (position, prompt) in ONE `Backend.generate` call.

    Row g of the prompt at `position` draws from the stream `request_seed(group_seed(seed,
    step, position), g)`, the stream a call with that prompt alone would give it, so what a
    prompt gets does not depend on which prompts share the batch (see the module docstring).
    """
    plans = [_plan_group(backend, tokenizer, prompt, variant_texts, num_generations=num_generations,
                         sampling=sampling, prefill=prefill, seed=seed, step=step, position=position)
             for position, prompt in prompts]
    rows = [list(rendered[v]) for _, rendered, variants, _ in plans for v in variants]
    seeds = [s for _, _, _, group_seeds in plans for s in group_seeds]
    generations = backend.generate(rows, sampling, seeds) if rows else []
    groups, offset = [], 0
    for (position, prompt), (_, rendered, variants, _) in zip(prompts, plans):
        gens = [g[0] for g in generations[offset: offset + len(variants)]]
        offset += len(variants)
        groups.append(_finish_group(tokenizer, position, prompt, rendered, variants, gens, prefill))
    return groups


def _plan_group(backend: Backend, tokenizer: Any, prompt: Prompt, variant_texts: Sequence[str], *,
                num_generations: int, sampling: SamplingConfig, prefill: bool, seed: int, step: int,
                position: int) -> tuple[Prompt, tuple[tuple[int, ...], ...], list[int], list[int]]:
    """(prompt, its K renderings, the variant of each of the G rows, each row's sampling seed)."""
    rendered = tuple(tuple(render_prompt_ids(tokenizer, text, prompt.text, prefill=prefill)) for text in variant_texts)
    longest = max(len(ids) for ids in rendered)
    if longest + sampling.max_new_tokens > backend.max_context:
        raise SIError(
            f"prompt '{prompt.id}': {longest} prompt tokens + max_completion_length {sampling.max_new_tokens} exceed "
            f"the model context ({backend.max_context}); shorten the prompt or principles, or lower max_completion_length"
        )
    variant_rng = np.random.default_rng(group_seed(seed, step, position, 1))
    variants = assign_variants(num_generations, len(variant_texts), variant_rng)
    return prompt, rendered, variants, prompt_seeds(group_seed(seed, step, position), num_generations)


def _finish_group(tokenizer: Any, position: int, prompt: Prompt, rendered: tuple[tuple[int, ...], ...],
                  variants: list[int], generations: Sequence[Generation], prefill: bool) -> Group:
    """Parse the G sampled completions of one prompt into its Group."""
    rollouts = []
    for g, (variant, gen) in enumerate(zip(variants, generations)):
        parsed = parse_response(tokenizer, list(gen.token_ids), prefill=prefill)
        rollouts.append(Rollout(
            variant=variant, replicate=variants[:g].count(variant), prompt_ids=rendered[variant],
            token_ids=tuple(gen.token_ids), text=parsed.text, cot_end=parsed.cot_end,
            format_ok=parsed.format_ok, finish_reason=gen.finish_reason,
            sampling_logp=None if gen.logprobs is None else tuple(float(v) for v in gen.logprobs),
        ))
    return Group(position=position, prompt=prompt, variant_prompt_ids=rendered, rollouts=tuple(rollouts))


def span_bounds(rollout: Rollout, span: Span) -> tuple[int, int]:
    """[start, end) token positions of a span of the completion (chat.py's partition)."""
    n = len(rollout.token_ids)
    if span == "cot":
        return 0, rollout.cot_end
    if span == "answer":
        return rollout.cot_end, n
    return 0, n
