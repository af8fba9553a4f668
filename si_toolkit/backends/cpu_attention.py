"""Grouped-query attention on CPU for one-token decode steps and for passes that take gradients.

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
    covered = ((q_len == 1 or torch.is_grad_enabled()) and query.device.type == "cpu" and heads % kv_heads == 0
               and not dropout and kwargs.get("softcap") is None and kwargs.get("s_aux") is None
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
    if attention_mask is None and q_len > 1 and getattr(module, "is_causal", True):
        # transformers leaves out the mask of an unpadded causal batch (SDPA's is_causal); the
        # q queries are the last q of the L positions.
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)[None, None]
    if attention_mask is not None:  # (B or 1, 1, q, L) booleans, True = may attend
        # The lowest finite value, not -inf: a padding query that may attend to nothing then gets a
        # finite (unused) output instead of NaN, which would reach real rows through its values.
        # In place: bmm's backward does not need its output.
        scores.masked_fill_(~attention_mask[:, :, None], torch.finfo(scores.dtype).min)
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
