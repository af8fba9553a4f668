"""Grouped-query attention on CPU for one-token decode steps, for passes that take gradients,
and for sampling batches whose rows share prompt stems.

PyTorch's fused CPU attention (SDPA's flash kernel) is built for long queries without
gradients; for a query of one token it took 45 % of a decode step of the embedded model (2-core
CPU, batch 16, bf16), several times the cost of the matmuls it replaces here. Its backward is
slow too: for the trainer's completion pass (16 rows x 64 queries x 194 keys, 9 query heads on 3
KV heads, bf16) forward + backward took 11.6 + 27.4 ms against 6.2 + 18.3 ms here, and 3.7 + 16.0
against 1.9 + 3.4 ms for its prompt pass (4 x 130 x 130).

The query heads that share a key/value head are stacked into one matrix, so each (row, KV head)
is one matmul against its keys with no repeated K/V copies; the softmax runs in fp32. Results
equal SDPA's up to rounding (tested). Everything else (no-grad passes of several query tokens,
a GPU, dropout, soft-capping, attention sinks, a float mask) goes to transformers' own SDPA
function: for scoring passes the same formulation was measured slower than the flash kernel
(29.9 vs 20.8 ms for 16 x 172 x 172), because its fp32 softmax over (queries x keys) is
memory-bound on this CPU.

Shared stems (`attending_to_stems`): when the rows of a sampling batch start with a few shared
stems (the system turn of each principle), the stems' keys and values are kept once per stem
rather than once per row, and attention reads them once for all the rows of a stem: one
matmul per (stem, KV head) whose rows are the queries of every row of that stem. A decode step
is bound by reading the KV cache, so not reading the stem once per row saves most of that
(vLLM's prefix caching keeps a shared prefix once for the same reason). The stem scores and
each row's own scores share one softmax, so the result is the attention over [stem | own
tokens], up to rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["grouped_attention", "ATTENTION_NAME", "StemCache", "attending_to_stems", "grouped_attention_active",
           "current_stems", "score_bias", "stem_score_bias", "one_token_attention"]

ATTENTION_NAME = "si_grouped_sdpa"  # the name registered with transformers' attention interface


@dataclass(frozen=True)
class StemCache:
    """Keys and values of the stems that rows of a batch share, once per stem.

    Row b's context is [stem of b | b's own tokens]; the own tokens live in the model's KV cache,
    the stems here. The rows of a stem are consecutive in the batch.
    """

    keys: list[torch.Tensor]  # per layer: (n_stems, KV heads, S, head dim), stems left-padded to S
    values: list[torch.Tensor]
    row_mask: torch.Tensor  # (B, S) bool: row b may attend to its stem's position (not padding)
    bounds: list[tuple[int, int]]  # per stem: its rows are start..end-1


_STEMS: ContextVar[StemCache | None] = ContextVar("si_shared_stems", default=None)


@contextlib.contextmanager
def attending_to_stems(stems: StemCache | None) -> Iterator[None]:
    """Inside the block, attention layers also attend to each row's stem in `stems` (None: no-op).
    Needs the grouped attention (`grouped_attention`) to be in place."""
    token = _STEMS.set(stems)
    try:
        yield
    finally:
        _STEMS.reset(token)


def current_stems() -> StemCache | None:
    """The stems set by the enclosing `attending_to_stems` block, or None."""
    return _STEMS.get()


def grouped_attention_active(model: Any) -> bool:
    """Whether `model` currently runs this module's attention (inside `grouped_attention` on CPU)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTENTION_NAME


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
    """(B, H, q, D) queries against (B, Hkv, L, D) keys/values -> (B, q, H, D), as transformers expects."""
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    stems = _STEMS.get()
    covered = ((q_len == 1 or torch.is_grad_enabled() or stems is not None) and query.device.type == "cpu"
               and heads % kv_heads == 0 and not dropout and kwargs.get("softcap") is None
               and kwargs.get("s_aux") is None and (attention_mask is None or attention_mask.dtype == torch.bool))
    if stems is not None and not covered:
        raise RuntimeError("shared stems need the grouped CPU attention; this layer cannot use it")
    if not covered:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    group = heads // kv_heads  # query heads per key/value head; head h uses KV head h // group
    scale = dim**-0.5 if scaling is None else scaling
    rows = batch * kv_heads
    q = (query * scale).reshape(rows, group * q_len, dim)  # scaling the small operand saves a pass
    scores = torch.bmm(q, key.reshape(rows, kv_len, dim).transpose(1, 2)).view(batch, kv_heads, group, q_len, kv_len)
    if attention_mask is None and q_len > 1 and getattr(module, "is_causal", True):
        # transformers leaves out the mask of an unpadded causal batch (SDPA's is_causal); the
        # q queries are the last q of the L positions.
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)[None, None]
    if attention_mask is not None:  # (B or 1, 1, q, L) booleans, True = may attend
        # The lowest finite value, not -inf: a padding query that may attend to nothing then gets a
        # finite (unused) output instead of NaN, which would reach real rows through its values.
        # In place: bmm's backward does not need its output.
        scores.masked_fill_(~attention_mask[:, :, None], torch.finfo(scores.dtype).min)
    if stems is not None:
        return _attention_with_stems(q, scores, value, stems, module.layer_idx), None
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(value.dtype)  # fp32 inside the kernel
    out = torch.bmm(probs.view(rows, group * q_len, kv_len), value.reshape(rows, kv_len, dim))
    return out.view(batch, heads, q_len, dim).transpose(1, 2), None


def _attention_with_stems(q: torch.Tensor, own_scores: torch.Tensor, value: torch.Tensor, stems: StemCache,
                          layer: int, stem_bias: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Attention over [stem | own tokens] of every row, the stem part read once per stem.

    q: (B·KV heads, G·q, D) scaled queries; own_scores: (B, KV heads, G, q, L) masked scores
    against the row's own keys; value: (B, KV heads, L, D); stem_bias: `stem_score_bias` for
    these shapes, or None to mask the stem scores here. Returns (B, q, H, D).
    """
    batch, kv_heads, group, q_len, kv_len = own_scores.shape
    stem_keys, stem_values = stems.keys[layer], stems.values[layer]
    width, dim = stem_keys.shape[2], stem_keys.shape[3]
    stem_scores = _by_stem(q.view(batch, kv_heads, group * q_len, dim), stem_keys.transpose(2, 3), stems, stem_bias)
    if stem_bias is None:
        stem_scores.masked_fill_(~stems.row_mask[:, None, None, :], torch.finfo(stem_scores.dtype).min)
    scores = torch.cat([stem_scores.view(batch, kv_heads, group, q_len, width), own_scores], -1)
    probs = torch.softmax(scores, -1, dtype=torch.float32)
    stem_probs = probs[..., :width].to(value.dtype).reshape(batch, kv_heads, group * q_len, width)
    own_probs = probs[..., width:].to(value.dtype).reshape(batch * kv_heads, group * q_len, kv_len)
    own = torch.bmm(own_probs, value.reshape(batch * kv_heads, kv_len, dim))
    # Both halves are summed in fp32, then rounded once, as one matmul over [stem | own] would:
    # PyTorch adds bf16 (and fp16) tensors on the CPU in fp32 and rounds the sum once.
    out = own.view(batch, kv_heads, group * q_len, dim) + _by_stem(stem_probs, stem_values, stems)
    return out.view(batch, kv_heads * group, q_len, dim).transpose(1, 2)


def _by_stem(per_row: torch.Tensor, per_stem: torch.Tensor, stems: StemCache,
             bias: list[torch.Tensor] | None = None) -> torch.Tensor:
    """per_row[b] @ per_stem[stem of b] (+ bias) for every row b: (B, KV heads, M, E) with
    (n_stems, KV heads, E, F) -> (B, KV heads, M, F). The M rows of all the rows of one stem are
    stacked into one matmul per (stem, KV head): a single call when every stem has as many rows.
    bias: one tensor per call, in the stacked layout (`stem_score_bias`)."""
    batch, kv_heads, m, e = per_row.shape
    f = per_stem.shape[-1]
    stacked = _stacked_by_stem(per_row, stems)
    if len(stacked) == 1:  # every stem has as many rows
        k = len(stems.bounds)
        n = batch // k
        out = _product(stacked[0], per_stem.reshape(k * kv_heads, e, f), bias[0] if bias else None)
        return out.view(k, kv_heads, n, m, f).transpose(1, 2).reshape(batch, kv_heads, m, f)
    parts = [_product(rows, per_stem[s], bias[s] if bias else None).view(kv_heads, end - start, m, f).transpose(0, 1)
             for s, (rows, (start, end)) in enumerate(zip(stacked, stems.bounds))]
    return torch.cat(parts, 0)


def _stacked_by_stem(per_row: torch.Tensor, stems: StemCache) -> list[torch.Tensor]:
    """(B, KV heads, M, E) laid out as `_by_stem` multiplies it: one (stems·KV heads, rows·M, E)
    tensor when every stem has as many rows, else one (KV heads, rows of the stem·M, E) per stem."""
    batch, kv_heads, m, e = per_row.shape
    sizes = {end - start for start, end in stems.bounds}
    if len(sizes) == 1:
        n, k = sizes.pop(), len(stems.bounds)
        return [per_row.view(k, n, kv_heads, m, e).transpose(1, 2).reshape(k * kv_heads, n * m, e)]
    return [per_row[start:end].transpose(0, 1).reshape(kv_heads, (end - start) * m, e)
            for start, end in stems.bounds]


def _product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)


# ---------------------------------------------------------------------- one-token steps
# A decode step's masks are the same in every layer, so `decode_step` builds them once per step
# (the stems' once per loop) as additive biases, and each layer adds its bias inside the score
# matmul (baddbmm) instead of masking the scores afterwards: at 64 rows of the embedded model,
# 87 µs against 106 for bmm + masked_fill, with the same scores (0 + s is s; the lowest finite
# value + s rounds to itself).


def score_bias(allowed: torch.Tensor, kv_heads: int, group: int, dtype: torch.dtype) -> torch.Tensor:
    """(B·KV heads, G, L) additive mask for one-token queries from `allowed` (B, L)."""
    batch, width = allowed.shape
    bias = _additive_mask(allowed, dtype)
    return bias[:, None, None, :].expand(batch, kv_heads, group, width).reshape(batch * kv_heads, group, width)


def stem_score_bias(stems: StemCache, kv_heads: int, group: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """The stems' `row_mask` as additive biases for one-token queries, laid out as `_by_stem`
    stacks the rows of each stem."""
    batch, width = stems.row_mask.shape
    bias = _additive_mask(stems.row_mask, dtype)
    return _stacked_by_stem(bias[:, None, None, :].expand(batch, kv_heads, group, width), stems)


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where `allowed` is True, the lowest finite value where it is False (as `_attention`
    masks: never -inf)."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


def one_token_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                        layer: int, scaling: float, stem_bias: list[torch.Tensor] | None = None) -> torch.Tensor:
    """What `_attention` computes for one query token per row, with the masks as biases.

    query: (B, H, D), rotary applied, not yet scaled; keys, values: (B, KV heads, L, D), the
    cache; bias: `score_bias` of the cache's mask; stem_bias: `stem_score_bias` of the stems
    set by `attending_to_stems` (needed when there are stems). Returns (B, H·D), heads in order.
    """
    batch, heads, dim = query.shape
    kv_heads, kv_len = keys.shape[1], keys.shape[2]
    group, rows = heads // kv_heads, batch * kv_heads
    q = (query * scaling).reshape(rows, group, dim)
    scores = torch.baddbmm(bias, q, keys.view(rows, kv_len, dim).transpose(1, 2))
    stems = _STEMS.get()
    if stems is not None:
        own_scores = scores.view(batch, kv_heads, group, 1, kv_len)
        return _attention_with_stems(q, own_scores, values, stems, layer, stem_bias).reshape(batch, heads * dim)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(values.dtype)
    return torch.bmm(probs, values.view(rows, kv_len, dim)).view(batch, heads * dim)


@contextlib.contextmanager
def grouped_attention(model: Any, device: str) -> Iterator[None]:
    """On CPU, run an SDPA model with `_attention` inside the block, then restore SDPA, so a saved
    config never names this module's function. Elsewhere (or for other models) a no-op."""
    config = getattr(model, "config", None)
    if device != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION_NAME, _attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
        model.set_attn_implementation(ATTENTION_NAME)
    except (ImportError, ValueError, AttributeError, TypeError):  # an older or unusual model: keep SDPA
        yield
        return
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")
