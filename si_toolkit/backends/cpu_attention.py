"""Grouped-query attention for one-token decode steps, for the transformers backend on CPU.

PyTorch's fused CPU attention (SDPA's flash kernel) is built for long queries; for a query of
one token it took 45 % of a decode step of the embedded model (2-core CPU, batch 16, bf16),
several times the cost of the matmuls it replaces here.

The query heads that share a key/value head are stacked into one matrix, so each (row, KV head)
is one matmul against its keys with no repeated K/V copies; the softmax runs in fp32. Results
equal SDPA's up to rounding (tested). Everything else (several query tokens, a GPU, dropout,
soft-capping, attention sinks, a float mask) goes to transformers' own SDPA function: for
scoring passes the same formulation was measured slower than the flash kernel, because its
fp32 softmax over (queries x keys) is memory-bound on this CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["grouped_attention", "ATTENTION_NAME"]

ATTENTION_NAME = "si_grouped_sdpa"  # the name registered with transformers' attention interface


def _attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               **kwargs: Any) -> tuple[torch.Tensor, None]:
    """(B, H, q, D) queries against (B, Hkv, L, D) keys/values -> (B, q, H, D), as transformers expects."""
    batch, heads, q_len, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    covered = (q_len == 1 and query.device.type == "cpu" and heads % kv_heads == 0 and not dropout
               and kwargs.get("softcap") is None and kwargs.get("s_aux") is None
               and (attention_mask is None or attention_mask.dtype == torch.bool))
    if not covered:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    group = heads // kv_heads  # query heads per key/value head; head h uses KV head h // group
    scale = dim**-0.5 if scaling is None else scaling
    rows = batch * kv_heads
    q = (query * scale).reshape(rows, group * q_len, dim)  # scaling the small operand saves a pass
    scores = torch.bmm(q, key.reshape(rows, kv_len, dim).transpose(1, 2)).view(batch, kv_heads, group, q_len, kv_len)
    if attention_mask is not None:  # (B, 1, 1, L) booleans, True = may attend
        scores.masked_fill_(~attention_mask[:, :, None], float("-inf"))
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(value.dtype)  # fp32 inside the kernel
    out = torch.bmm(probs.view(rows, group * q_len, kv_len), value.reshape(rows, kv_len, dim))
    return out.view(batch, heads, q_len, dim).transpose(1, 2), None


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
