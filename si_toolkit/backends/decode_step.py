"""One-token decode steps of a Llama model on CPU, without transformers' per-call machinery.

A decode step of the embedded model at 64 rows spends most of its time in the linear layers and
attention. Around them, the model's forward does per-step work a sampling loop does not need:
it builds a 4-D attention mask from the 2-D one, writes each layer's new key and value through
`index_copy_` with a fresh position tensor, and passes keyword arguments and output records
through every module. `DirectStep` runs the same modules (embedding, rotary embedding, norms,
projections, MLPs, lm-head) in the order `LlamaDecoderLayer` runs them, with the grouped
attention of `cpu_attention` that the forward would call, so its logits are the forward's bit
for bit (tested); only the bookkeeping is gone. Interleaved step by step with the forward on
the sampling benchmark (64 rows, bf16), a step took 0.95x the forward's time
(benchmarks/README.md). It is used where that equality is known to hold: a plain
`LlamaForCausalLM` (the embedded model's architecture), under the grouped CPU attention, with a
static cache. Anything else runs the model's forward.
"""

from __future__ import annotations

from typing import Any

import torch

from si_toolkit.backends.cpu_attention import _attention, grouped_attention_active

__all__ = ["DirectStep", "plain_static_layers"]


class DirectStep:
    """Callable as `step(token, mask, position) -> (B, V) logits` for one new token per row.

    token: (B,) the tokens to feed; mask: (B, L) 2-D attention mask over the cache's filled
    positions plus the new token (the new token is written at position L - 1 of every row's
    cache); position: (B, 1) the new tokens' position ids.
    """

    def __init__(self, model: Any, cache: Any) -> None:
        self.model, self.cache = model, cache

    @staticmethod
    def supported(model: Any, cache: Any) -> bool:
        """Whether `model` and `cache` are what this step reproduces exactly."""
        try:
            from transformers import LlamaForCausalLM
            from transformers.models.llama.modeling_llama import LlamaDecoderLayer
        except ImportError:
            return False
        # An exact class, not a subclass (a subclass may change the forward), and no wrapper.
        return (type(model) is LlamaForCausalLM and grouped_attention_active(model) and not model.training
                and plain_static_layers(cache)
                and all(type(layer) is LlamaDecoderLayer for layer in model.model.layers)
                and len(cache.layers) == len(model.model.layers))

    def __call__(self, token: torch.Tensor, mask: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        inner = self.model.model
        hidden = inner.embed_tokens(token[:, None])
        cos, sin = inner.rotary_emb(hidden, position)
        written = mask.shape[1] - 1  # the cache column of the new token, in every row
        allowed = self._allowed(mask)
        rows = hidden.shape[0]
        for layer, cached in zip(inner.layers, self.cache.layers):
            attn = layer.self_attn
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            heads_shape = (rows, 1, -1, attn.head_dim)
            query = attn.q_proj(hidden).view(heads_shape).transpose(1, 2)
            key = attn.k_proj(hidden).view(heads_shape).transpose(1, 2)
            value = attn.v_proj(hidden).view(heads_shape).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            # One column of every row: a plain copy, where the cache's own update writes through
            # index_copy_ with a position tensor built for it. The cache's own position counter
            # is left as it was: once a loop takes direct steps, the model never sees the cache again.
            cached.keys[:, :, written] = key[:, :, 0]
            cached.values[:, :, written] = value[:, :, 0]
            out, _ = _attention(attn, query, cached.keys, cached.values, allowed, dropout=0.0, scaling=attn.scaling)
            hidden = residual + attn.o_proj(out.reshape(rows, 1, -1).contiguous())
            residual = hidden
            hidden = residual + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.lm_head(inner.norm(hidden)[:, -1])

    def _allowed(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, cache length) booleans, True = may attend: the 2-D mask over the filled
        positions, nothing beyond them (the mask transformers builds for a static cache)."""
        width = self.cache.layers[0].keys.shape[2]
        allowed = torch.zeros(mask.shape[0], width, dtype=torch.bool, device=mask.device)
        allowed[:, :mask.shape[1]] = mask.bool()
        return allowed[:, None, None, :]


def plain_static_layers(cache: Any) -> bool:
    """True when every cache layer is a full-attention static layer (rows can be copied freely, and
    a step may write its column directly)."""
    from transformers.cache_utils import StaticLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is StaticLayer for layer in layers)
