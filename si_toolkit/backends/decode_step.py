"""One-token decode steps of a Llama model on CPU, without transformers' per-call machinery.

A decode step of the embedded model at 64 rows spends most of its time in the linear layers and
attention. Around them, the model's forward does per-step work a sampling loop does not need:
it builds a 4-D attention mask from the 2-D one, writes each layer's new key and value through
`index_copy_` with a fresh position tensor, and passes keyword arguments and output records
through every module. `DirectStep` runs the same modules (embedding, rotary embedding, norms,
projections, MLPs, lm-head) in the order `LlamaDecoderLayer` runs them, and computes what the
forward computes, so its logits are the forward's bit for bit (tested). On top of dropping the
bookkeeping, it does once per step what the forward does once per layer, and uses one product
where the forward uses several:

* the masks become additive biases once per step (the stems' once per loop), added inside each
  layer's score matmul (`cpu_attention.one_token_attention`);
* q/k/v and gate/up are one stacked product each (`cpu_linear.stacked_linear`; inside
  `packed_linears` they are packed as one matrix), and the rotary embedding turns the queries
  and keys in one pass over the stacked output.

Interleaved step by step with the model's forward on the sampling benchmark (64 rows, bf16), a
step took 0.95x the forward's time with the bookkeeping gone, and the stacked products and
per-step biases took a further 0.89–0.905x (benchmarks/README.md). It is used where the
equality with the forward is known to hold: a plain `LlamaForCausalLM` (the embedded model's
architecture), under the grouped CPU attention, with a static cache. Anything else runs the
model's forward.
"""

from __future__ import annotations

from typing import Any

import torch

from si_toolkit.backends.cpu_attention import (current_stems, grouped_attention_active, one_token_attention,
                                               score_bias, stem_score_bias)
from si_toolkit.backends.cpu_linear import stacked_linear

__all__ = ["DirectStep", "plain_static_layers"]


class DirectStep:
    """Callable as `step(token, mask, position) -> (B, V) logits` for one new token per row.

    token: (B,) the tokens to feed; mask: (B, L) 2-D attention mask over the cache's filled
    positions plus the new token (the new token is written at position L - 1 of every row's
    cache); position: (B, 1) the new tokens' position ids.
    """

    def __init__(self, model: Any, cache: Any) -> None:
        self.model, self.cache = model, cache
        config = model.config
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = model.model.layers[0].self_attn.head_dim
        self._stem_bias: tuple[Any, list[torch.Tensor]] | None = None  # (the stems, their biases)

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
        from transformers.models.llama.modeling_llama import rotate_half

        inner = self.model.model
        hidden = inner.embed_tokens(token[:, None])
        cos, sin = (t.unsqueeze(2) for t in inner.rotary_emb(hidden, position))  # (B, 1, 1, D): every head
        written = mask.shape[1] - 1  # the cache column of the new token, in every row
        rows, heads, kv_heads, dim = hidden.shape[0], self.heads, self.kv_heads, self.head_dim
        score_dtype = self._score_dtype()
        bias = score_bias(self._allowed(mask), kv_heads, heads // kv_heads, score_dtype)
        stem_bias = self._stems_bias(score_dtype)
        for layer, cached in zip(inner.layers, self.cache.layers):
            attn, mlp = layer.self_attn, layer.mlp
            residual = hidden
            qkv = stacked_linear((attn.q_proj, attn.k_proj, attn.v_proj), layer.input_layernorm(hidden))
            # Queries and keys side by side, (B, 1, H + KV heads, D): one rotary pass turns both,
            # with the per-element products apply_rotary_pos_emb computes for each.
            qk = qkv[..., :(heads + kv_heads) * dim].view(rows, 1, heads + kv_heads, dim)
            qk = qk * cos + rotate_half(qk) * sin
            # One column of every row: a plain copy, where the cache's own update writes through
            # index_copy_ with a position tensor built for it. The cache's own position counter
            # is left as it was: once a loop takes direct steps, the model never sees the cache again.
            cached.keys[:, :, written] = qk[:, 0, heads:]
            cached.values[:, :, written] = qkv[:, 0, (heads + kv_heads) * dim:].view(rows, kv_heads, dim)
            out = one_token_attention(qk[:, 0, :heads], cached.keys, cached.values, bias, attn.layer_idx,
                                      attn.scaling, stem_bias)
            hidden = residual + attn.o_proj(out.view(rows, 1, heads * dim))
            residual = hidden
            gate_up = stacked_linear((mlp.gate_proj, mlp.up_proj), layer.post_attention_layernorm(hidden))
            width = gate_up.shape[-1] // 2
            hidden = residual + mlp.down_proj(mlp.act_fn(gate_up[..., :width]) * gate_up[..., width:])
        return self.model.lm_head(inner.norm(hidden)[:, -1])

    def _score_dtype(self) -> torch.dtype:
        """The dtype the score products run in, which the mask biases take: autocast's inside
        autocast (where a float32 bias's lowest value would round to -inf), else the cache's."""
        keys = self.cache.layers[0].keys
        device = keys.device.type
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else keys.dtype

    def _allowed(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, cache length) booleans, True = may attend: the 2-D mask over the filled positions,
        nothing beyond them (the mask transformers builds for a static cache)."""
        width = self.cache.layers[0].keys.shape[2]
        allowed = torch.zeros(mask.shape[0], width, dtype=torch.bool, device=mask.device)
        allowed[:, :mask.shape[1]] = mask.bool()
        return allowed

    def _stems_bias(self, dtype: torch.dtype) -> list[torch.Tensor] | None:
        """The stems' biases, built at the first step that sees these stems (they stay for the loop)."""
        stems = current_stems()
        if stems is None:
            return None
        if self._stem_bias is None or self._stem_bias[0] is not stems:
            self._stem_bias = (stems, stem_score_bias(stems, self.kv_heads, self.heads // self.kv_heads, dtype))
        return self._stem_bias[1]


def plain_static_layers(cache: Any) -> bool:
    """True when every cache layer is a full-attention static layer (rows can be copied freely, and
    a step may write its column directly)."""
    from transformers.cache_utils import StaticLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is StaticLayer for layer in layers)
