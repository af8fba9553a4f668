"""What the loss forward keeps for backward: less than a plain transformers forward would.

Three pieces, used by `forward.py`:

- `PromptPrefix` / `read_through`: the completion pass reads its prompts' KV cache through an
  index (one row per pair) and never writes it, so a replayed layer sees the same cache.
- `checkpointed_layers`: activation checkpointing of the decoder layers (`gradient_checkpointing`).
- `head_logp` / `head_weight`: the chunked lm-head below.
- `store_for_autocast`: a frozen reference that runs under bf16 autocast keeps its matmul
  weights in bf16 (the same results, half their bytes).

The chunked lm-head takes the log-probabilities of the completion tokens straight from the last
hidden states, a chunk of positions at a time:

    log π_T(y) = l[y] − logsumexp(l),   l = W·h / T   (W: the lm-head, h: the final hidden state)

The plain route runs the model's lm-head over every completion position and keeps the
(B, C, V) logits for backward, and the backward builds three more blocks of that size (the
softmax, the one-hot of the targets, their sum): 0.2 GB each for 16 completions of 64 tokens
and a 49k-token vocabulary, the largest tensors of a training step once the decoder layers are
recomputed (gradient_checkpointing). Here the forward keeps h, the targets and the logsumexp
only, and the backward recomputes the logits `CHUNK_TOKENS` positions at a time:

    ∂ log π(y) / ∂l_v = 1[v = y] − softmax(l)_v

Memory: one chunk's logits instead of four (B, C, V) blocks. Compute: one more lm-head matmul
in backward, about a fifth of a 135M-parameter model's forward per token; on the project's CPU
the step got no slower (the big blocks cost as much in memory traffic as the matmul). Under
bf16 autocast (`bf16`) the backward recomputes the logits under the same autocast as the forward.

`head_weight` says when the route applies: the model's output embedding is a plain bias-free
`nn.Linear` whose weight is a local tensor (not sharded by FSDP). Models that transform the
logits further (e.g. Gemma's final soft-capping) are caught by `forward.py`, which compares one
position against the model's own logits on the first call and falls back to the plain route.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from si_toolkit.backends import cpu_linear

__all__ = ["CHUNK_TOKENS", "PromptPrefix", "checkpointed_layers", "head_logp", "head_weight", "read_through",
           "store_for_autocast"]

CHUNK_TOKENS = 256  # positions per chunk: 256 x 49152 vocab x 4 B = 50 MB of logits at a time


class PromptPrefix(DynamicLayer):
    """The completion pass's cache layer: its prompts' keys and values, read through `rows` (one
    row per pair) in front of the completion's own, and never written. A layer replayed by
    activation checkpointing therefore sees the same cache as the first time, and the per-pair
    copies of the prompt are not kept between the forward and the backward when it is replayed."""

    def __init__(self, keys: Tensor, values: Tensor, rows: Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.rows = keys, values, rows
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        return (torch.cat([self.keys.index_select(0, self.rows), key_states], dim=-2),
                torch.cat([self.values.index_select(0, self.rows), value_states], dim=-2))


def read_through(cache: Any, rows: Tensor) -> None:
    """Make every cache layer a `PromptPrefix` over `rows` (differentiable; backward sums repeats)."""
    cache.layers = [PromptPrefix(layer.keys, layer.values, rows) for layer in cache.layers]


@contextmanager
def checkpointed_layers(lm: Any, active: bool) -> Iterator[None]:
    """Inside the block, each decoder layer of `lm` keeps only its input for backward and runs again
    there (torch.utils.checkpoint): activation memory of one layer instead of all, for about one
    more forward of compute. transformers' own switch cannot be used: it drops the KV cache, which
    the completion pass reads, and it acts in training mode only (the policy stays in eval mode)."""
    layers = [m for m in lm.modules() if isinstance(m, GradientCheckpointingLayer)] if active else []
    for layer in layers:
        layer.forward = partial(_checkpointed_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # back to the class's method


def _checkpointed_forward(layer: Any, *args: Any, **kwargs: Any) -> Any:
    """The layer's own forward under `checkpoint`, replayed in the train/eval modes its submodules
    had on the first run: LoRA dropout is on only around the loss forward (`forward.lora_dropout`),
    and the backward that replays it runs after. The random state is replayed by `checkpoint`."""
    run = type(layer).forward.__get__(layer)
    modes = [(module, module.training) for module in layer.modules()]

    def replay(*a: Any, **k: Any) -> Any:
        now = [(module, module.training) for module, _ in modes]
        for module, training in modes:
            module.training = training
        try:
            return run(*a, **k)
        finally:
            for module, training in now:
                module.training = training

    return checkpoint(replay, *args, use_reentrant=False, **kwargs)


@torch.no_grad()
def store_for_autocast(model: Any, dtype: torch.dtype) -> None:
    """Keep in `dtype` the weights autocast casts to it at every use: those of the plain
    `nn.Linear` layers, unless tied to the input embeddings (an embedding lookup is not cast).

    For a frozen model that only ever runs under that autocast (the reference, with `bf16`) the
    results are bit-identical (the cast is the same rounding, done once), and those weights take
    half the memory: 0.21 GB less for the 135M embedded model.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embeddings.weight if embeddings is not None else None
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight is tied:
            continue
        module.weight.data = module.weight.data.to(dtype)
        if module.bias is not None:
            module.bias.data = module.bias.data.to(dtype)


def head_weight(lm: Any) -> Tensor | None:
    """The lm-head weight (V, D) of `lm` when the chunked route can use it, else None."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return None  # e.g. a LoRA-wrapped head, or a head with a bias
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch builds without distributed
        return head.weight
    return None if isinstance(head.weight, DTensor) else head.weight


def head_logp(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float,
              with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """(B, c) log π_T(targets) from hidden (B, c, D) and the head weight (V, D); with the no-grad
    entropy of π_T when asked for."""
    logp, entropy = _HeadLogp.apply(hidden, weight, targets, temperature, with_entropy)
    return logp, (entropy if with_entropy else None)


def _logits(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """(n, V) float32 logits / T of n positions (matmul in the model's dtype, as its head does)."""
    # F.linear, not hidden @ weight.T: autocast caches its bf16 cast of the weight (a leaf) for the
    # whole forward or backward; the transposed view would be cast again for every chunk.
    logits = cpu_linear.linear(hidden, weight).float()  # float32 on CPU: oneDNN (backends/cpu_linear.py)
    return logits / temperature if temperature != 1.0 else logits


class _HeadLogp(torch.autograd.Function):
    """See the module docstring; inputs flattened to positions inside."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float,
                with_entropy: bool) -> tuple[Tensor, Tensor]:
        shape = targets.shape
        flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
        n = flat_targets.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        entropy = torch.zeros_like(logp)
        for start in range(0, n, CHUNK_TOKENS):
            part = slice(start, start + CHUNK_TOKENS)
            logits = _logits(flat_hidden[part], weight, temperature)
            lse[part] = torch.logsumexp(logits, dim=-1)
            logp[part] = logits.gather(-1, flat_targets[part, None])[:, 0] - lse[part]
            if with_entropy:
                entropy[part] = lse[part] - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        ctx.save_for_backward(flat_hidden, weight, flat_targets, lse)
        ctx.temperature, ctx.hidden_shape = temperature, hidden.shape
        ctx.autocast = _autocast_state(hidden.device.type)
        entropy = entropy.reshape(shape)
        ctx.mark_non_differentiable(entropy)  # the returned tensor itself, not a view of it
        return logp.reshape(shape), entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, _grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        flat_hidden, weight, flat_targets, lse = ctx.saved_tensors
        grad = grad_logp.reshape(-1).float()
        grad_hidden = torch.empty_like(flat_hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        with ctx.autocast:
            _head_backward(ctx, grad, flat_hidden, weight, flat_targets, lse, grad_hidden, grad_weight)
        if grad_hidden is not None:
            grad_hidden = grad_hidden.reshape(ctx.hidden_shape)
        return grad_hidden, grad_weight, None, None, None


def _autocast_state(device_type: str) -> torch.autocast:
    """The autocast the forward ran under, to recompute its logits the same way in backward
    (which autograd runs outside any autocast block)."""
    enabled = torch.is_autocast_enabled(device_type)
    dtype = torch.get_autocast_dtype(device_type)
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def _head_backward(ctx: Any, grad: Tensor, flat_hidden: Tensor, weight: Tensor, flat_targets: Tensor, lse: Tensor,
                   grad_hidden: Tensor | None, grad_weight: Tensor | None) -> None:
    """Fill grad_hidden and accumulate grad_weight, one chunk of recomputed logits at a time.

    Under autocast the two matmuls run in its dtype, as autograd runs the backward of a
    bf16 matmul, and accumulate into the float32 buffers.
    """
    for start in range(0, grad.shape[0], CHUNK_TOKENS):
        part = slice(start, start + CHUNK_TOKENS)
        h, g = flat_hidden[part], grad[part, None]  # (n, D), (n, 1)
        d_logits = torch.exp(_logits(h, weight, ctx.temperature) - lse[part, None]).mul_(-g)  # −g·softmax
        d_logits.scatter_add_(-1, flat_targets[part, None], g)  # + g at the target
        if ctx.temperature != 1.0:
            d_logits /= ctx.temperature  # through l = W·h / T
        d_logits = d_logits.to(weight.dtype)
        if grad_hidden is not None:
            grad_hidden[part] = cpu_linear.matmul(d_logits, weight)
        if grad_weight is not None:
            if torch.is_autocast_enabled(h.device.type):
                grad_weight += d_logits.T @ h  # a (V, D) bf16 temporary: in-place addmm_ would bypass autocast
            else:
                grad_weight.addmm_(d_logits.T, h)
