"""Teacher-forced forward passes over (prompt ids, completion ids) pairs, and span reductions.

One call scores a batch of pairs in ONE forward of the model: prompts are left-padded to a
common width P and completions right-padded to a common width C, so every completion starts
at column P and

    logits at column P − 1 + t  predict completion token t          (t = 0..C−1)

Only those C positions go through the lm-head (`logits_to_keep`), which matters for 49k-token
vocabularies. Positions ids count real tokens only (left padding does not shift them), as
in generation. Log-probs are taken at the sampling temperature T, log softmax(logits / T),
like TRL, so that the ratio π_θ/π_old compares the distributions that were sampled from.

Hidden states of the requested layers come from the same forward (`output_hidden_states`),
sliced to the completion columns: `hidden[l][b, t]` is layer l's state at completion token t.
Layer indices follow transformers' `hidden_states` tuple: 0 = embeddings, L = the last layer
(after the final norm for Llama-style models), negative = counted from the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from si_toolkit.errors import SIError

__all__ = ["ForwardOutput", "forward_pairs", "lora_dropout", "span_mask", "span_sums"]


@dataclass
class ForwardOutput:
    """Per-token quantities of B completions padded to C columns."""

    logp: Tensor  # (B, C) log π_T(y_t | prompt, y_<t); 0 at padding; with grad when the forward had it
    mask: Tensor  # (B, C) bool, True at real completion tokens
    entropy: Tensor | None  # (B, C) detached token entropy of π_T (nats), when asked for
    hidden: dict[int, Tensor]  # layer -> (B, C, D) hidden states at the completion tokens


def forward_pairs(
    model: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    temperature: float,
    layers: Sequence[int] = (),
    with_logits: bool = True,
    with_entropy: bool = False,
) -> ForwardOutput:
    """Run `model` once over the pairs; see the module docstring for the layout.

    Args:
        model: a transformers causal LM (or a DDP / PEFT wrapper around one).
        pairs: (prompt ids, completion ids); every completion holds at least one token.
        pad_id: id written into padding (never attended to, never scored).
        temperature: T of the sampling distribution.
        layers: hidden-state layers to return (empty: no hidden states are requested).
        with_logits: False skips the lm-head over the completion (then logp is all zeros);
            for reference passes that only need hidden states.
        with_entropy: also return the per-token entropy (no grad).
    """
    if not pairs or any(len(c) == 0 for _, c in pairs):
        raise ValueError("forward_pairs needs at least one pair, each with a non-empty completion")
    device = _device_of(model)
    ids, attention, positions, P, C = _layout(pairs, pad_id, device)
    out = model(
        input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False,
        output_hidden_states=bool(layers), logits_to_keep=C + 1 if with_logits else 1,
    )
    completion = ids[:, P:]  # (B, C)
    mask = attention[:, P:].bool()  # (B, C)
    hidden = {layer: _layer(out.hidden_states, layer)[:, P:] for layer in layers}  # each (B, C, D)
    if not with_logits:
        return ForwardOutput(torch.zeros(completion.shape, device=device), mask, None, hidden)
    logits = out.logits[:, :C].float() / temperature  # (B, C, V): column P−1+t predicts token t
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, completion.unsqueeze(-1)).squeeze(-1)  # (B, C)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, C)
    return ForwardOutput(logp, mask, entropy, hidden)


@contextmanager
def lora_dropout(model: Any, active: bool) -> Iterator[None]:
    """Inside the block, the LoRA dropout layers of `model` (peft's `lora_dropout`) are in train
    mode; everything else keeps its mode. The policy otherwise stays in eval mode: generation and
    the no-grad passes (π_old, the SAMI monitor) see the distribution without dropout, and the
    base model's own dropout (which the training config does not set) never runs.
    """
    layers = [m for name, m in model.named_modules()
              if isinstance(m, torch.nn.Dropout) and ".lora_dropout." in f".{name}."] if active else []
    for layer in layers:
        layer.train()
    try:
        yield
    finally:
        for layer in layers:
            layer.eval()


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def _layout(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """(ids, attention, position ids, P, C): left-padded prompts, right-padded completions."""
    P = max(len(p) for p, _ in pairs)
    C = max(len(c) for _, c in pairs)
    B = len(pairs)
    ids = torch.full((B, P + C), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + C), dtype=torch.long)
    for b, (prompt, completion) in enumerate(pairs):
        ids[b, P - len(prompt): P] = torch.tensor(list(prompt), dtype=torch.long)
        ids[b, P: P + len(completion)] = torch.tensor(list(completion), dtype=torch.long)
        attention[b, P - len(prompt): P + len(completion)] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0, as in generation
    return ids.to(device), attention.to(device), positions.to(device), P, C


def _layer(hidden_states: tuple[Tensor, ...], layer: int) -> Tensor:
    n = len(hidden_states)
    if not -n <= layer < n:
        raise SIError(
            f"ot_layers holds {layer}, but the model has {n - 1} layers (valid: {-n}..{n - 1}, 0 = embeddings, "
            "-1 = last); fix ot_layers"
        )
    return hidden_states[layer]


def span_mask(bounds: Sequence[tuple[int, int]], width: int, device: torch.device) -> Tensor:
    """(B, width) bool mask, True on [start_b, end_b) of each row."""
    cols = torch.arange(width, device=device).unsqueeze(0)  # (1, width)
    starts = torch.tensor([s for s, _ in bounds], device=device).unsqueeze(1)  # (B, 1)
    ends = torch.tensor([e for _, e in bounds], device=device).unsqueeze(1)
    return (cols >= starts) & (cols < ends)


def span_sums(logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(Σ_t∈span log π, span token count) per row: the summed critic L and n of SI-SPEC §2."""
    sums = torch.where(mask, logp, torch.zeros_like(logp)).sum(-1)  # (B,)
    return sums, mask.sum(-1)
