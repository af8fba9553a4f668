"""The transformers backend: batched sampling and prefix-sharing teacher-forced scoring.

Scoring is the expensive stage (K^2 R forward passes per prompt), so it is organised around
the prefix: requests that share a prefix (condition i's rendered prompt) run the prefix once,
keep its KV cache, and score all their continuations in padded batches on top of it. The
lm-head is applied only to the positions that are scored, in chunks, so full-vocabulary
log-softmax is never materialised for more than `_HEAD_CHUNK` positions at once.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from si_toolkit.backends.base import Generation, SamplingConfig, ScoreRequest, prompt_seeds
from si_toolkit.backends.decode import cache_kwarg, left_pad, output_cache, sample_batch
from si_toolkit.models import ResolvedModel, load_causal_lm, load_tokenizer, resolve_model

__all__ = ["HFBackend", "naive_score"]

_HEAD_CHUNK = 512  # positions per lm-head chunk: 512 x 49152 vocab x 4 B = 100 MB of logits
# Padded tokens per scoring forward: bounds activation memory. 8192 keeps a CPU's matmuls at
# full speed; a GPU needs far larger batches to be busy (4 % of an H100's bf16 peak at 8192).
_TOKENS_PER_BATCH = {"cpu": 8192, "cuda": 65536}
_PACK_FACTOR = 4  # a pack holds this many forwards' worth of (prefix + continuation) tokens


class HFBackend:
    """Backend on transformers; works on CPU (default here) and CUDA."""

    name = "hf"

    def __init__(
        self,
        model_ref: str | ResolvedModel,
        *,
        dtype: str = "bfloat16",
        device: str = "auto",
        trust_remote_code: bool = False,
        generation_batch_size: int = 64,
    ) -> None:
        self.resolved = model_ref if isinstance(model_ref, ResolvedModel) else resolve_model(model_ref)
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.dtype = dtype
        self.tokenizer = load_tokenizer(self.resolved, trust_remote_code=trust_remote_code)
        self.model = load_causal_lm(self.resolved, dtype=dtype, device=self.device, trust_remote_code=trust_remote_code)
        self.model_name = self.resolved.name
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self.generation_batch_size = generation_batch_size
        self.tokens_per_batch = _TOKENS_PER_BATCH.get(torch.device(self.device).type, _TOKENS_PER_BATCH["cpu"])
        self._pad_id = self._pick_pad_id()

    def _pick_pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return int(pad if pad is not None else 0)

    # ------------------------------------------------------------------ sampling
    def generate(self, prompt_ids: list[list[int]], config: SamplingConfig,
                 seed: int | Sequence[int]) -> list[list[Generation]]:
        """Sample `config.replicates` continuations per prompt, in batches of whole prompts.

        Row (prompt p, replicate r) draws from its own stream seeded with seed_p + r, so the
        result for a prompt does not depend on which prompts share its batch.
        """
        seeds = prompt_seeds(seed, len(prompt_ids))
        rows = [(p, r) for p in range(len(prompt_ids)) for r in range(config.replicates)]
        eos = set(self._eos_ids())
        flat: list[Generation] = []
        for start in range(0, len(rows), self.generation_batch_size):
            part = rows[start : start + self.generation_batch_size]
            flat.extend(sample_batch(self.model, [prompt_ids[p] for p, _ in part], [seeds[p] + r for p, r in part],
                                     config, pad_id=self._pad_id, eos=eos, device=self.device))
        r = config.replicates
        return [flat[p * r : (p + 1) * r] for p in range(len(prompt_ids))]

    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int, *,
               batch_size: int | None = None) -> list[Generation]:
        """Greedy continuations in left-padded batches, each cut after its first EOS (kept)."""
        from transformers import GenerationConfig

        eos = self._eos_ids()
        gen_config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                      pad_token_id=self._pad_id, repetition_penalty=1.0)
        size = batch_size or self.generation_batch_size
        out: list[Generation] = []
        for start in range(0, len(prompt_ids), size):
            ids, mask = left_pad(prompt_ids[start : start + size], self._pad_id, self.device)
            with torch.no_grad():
                seqs = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
            for row in seqs[:, ids.shape[1]:].tolist():
                cut = next((t + 1 for t, tok in enumerate(row) if tok in eos), None)
                out.append(Generation(row[:cut], "stop") if cut is not None else Generation(row, "length"))
        return out

    def _eos_ids(self) -> list[int]:
        ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(int(i) for i in gen_eos)
        return sorted(ids)

    # ------------------------------------------------------------------ scoring
    def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """Per-token log-probs of each continuation.

        Requests are grouped by prefix; several prefix groups run in one left-padded batch, and
        each prefix's KV cache is shared (by index) by all of its continuations.
        """
        if _head_is_not_plain(self.model.config):
            # Logit soft-capping or scaling happens after the lm-head inside the model's own
            # forward; the hidden-state path below would skip it, so use full forwards.
            return naive_score(self.model, requests)
        by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for n, req in enumerate(requests):
            if not req.prefix_ids:
                raise ValueError("scoring needs a non-empty prefix (the rendered prompt)")
            by_prefix[req.prefix_ids].append(n)
        groups = sorted(by_prefix.items(), key=lambda item: len(item[0]))  # similar prefix lengths together
        results: list[np.ndarray] = [np.empty(0)] * len(requests)
        for pack in _pack_groups(groups, requests, _PACK_FACTOR * self.tokens_per_batch):
            prefixes = [prefix for prefix, _ in pack]
            members = [n for _, ns in pack for n in ns]
            owners = [g for g, (_, ns) in enumerate(pack) for _ in ns]
            conts = [requests[n].continuation_ids for n in members]
            for n, values in zip(members, self._score_pack(prefixes, owners, conts)):
                results[n] = values
        return results

    @torch.no_grad()
    def _score_pack(self, prefixes: list[tuple[int, ...]], owners: list[int],
                    conts: list[tuple[int, ...]]) -> list[np.ndarray]:
        """Score continuations `conts`, row b continuing prefix `owners[b]`.

        The prefixes run once; the continuations then run in chunks of similar length (longest
        first), so a chunk pads its rows only to its own longest one.
        """
        dev = self.device
        prefix_ids, prefix_mask = left_pad(prefixes, self._pad_id, dev)
        prefix = self.model.get_decoder()(
            input_ids=prefix_ids, attention_mask=prefix_mask,
            position_ids=(prefix_mask.cumsum(1) - 1).clamp(min=0), use_cache=True)
        results: list[np.ndarray] = [np.empty(0)] * len(conts)
        for chunk in _length_chunks(conts, prefix_ids.shape[1], self.tokens_per_batch):
            values = self._score_chunk(prefix, prefix_mask, [owners[b] for b in chunk], [conts[b] for b in chunk])
            for b, v in zip(chunk, values):
                results[b] = v
        return results

    def _score_chunk(self, prefix: Any, prefix_mask: torch.Tensor, owners: list[int],
                     conts: list[tuple[int, ...]]) -> list[np.ndarray]:
        base, head, dev = self.model.get_decoder(), self.model.get_output_embeddings(), self.device
        owner = torch.tensor(owners, device=dev)
        last_hidden = prefix.last_hidden_state[owner, -1]  # (B, D): predicts each continuation's first token
        B, T = len(conts), max(len(c) for c in conts)
        ids = torch.full((B, T), self._pad_id, dtype=torch.long)
        valid = torch.zeros((B, T), dtype=torch.bool)
        for b, c in enumerate(conts):  # right padding after the prefix
            ids[b, : len(c)] = torch.tensor(c)
            valid[b, : len(c)] = True
        ids, valid = ids.to(dev), valid.to(dev)
        if T > 1:
            # Rows share their prefix's keys/values by index (a copy per chunk; the prefix cache
            # itself stays intact for the next chunk).
            cache = copy.copy(output_cache(prefix))
            cache.layers = [copy.copy(layer) for layer in cache.layers]
            cache.batch_select_indices(owner)
            attention = torch.cat([prefix_mask[owner], valid.long()], 1)
            positions = prefix_mask.sum(1)[owner][:, None] + torch.arange(T, device=dev)[None, :]
            # Feed y_0..y_{T-2}: the hidden state at t predicts y_{t+1}; y_0 comes from the prefix.
            hidden = base(input_ids=ids[:, :-1], attention_mask=attention[:, :-1], position_ids=positions[:, :-1],
                          use_cache=True, **{cache_kwarg(base): cache}).last_hidden_state
            hidden = torch.cat([last_hidden[:, None], hidden], 1)  # (B, T, D): position t predicts y_t
        else:
            hidden = last_hidden[:, None]
        logp = _chunked_target_logprobs(head, hidden[valid], ids[valid])
        return [part.double().cpu().numpy() for part in torch.split(logp, valid.sum(1).tolist())]

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _head_is_not_plain(config: Any) -> bool:
    """True for models whose logits are not just lm_head(final hidden state) (Gemma 2, Cohere)."""
    return bool(getattr(config, "final_logit_softcapping", None)) or getattr(config, "logit_scale", None) not in (None, 1.0)


def _pack_groups(groups: list[tuple[tuple[int, ...], list[int]]], requests: list[ScoreRequest],
                budget: int) -> list[list[tuple[tuple[int, ...], list[int]]]]:
    """Split prefix groups into packs whose padded size (rows x (prefix + continuation)) fits `budget`.

    A group larger than the budget is split into several groups with the same prefix.
    """
    packs: list[list[tuple[tuple[int, ...], list[int]]]] = []
    current: list[tuple[tuple[int, ...], list[int]]] = []
    rows, width = 0, 0
    for prefix, members in groups:
        step = max(1, budget // _row_width(prefix, members, requests))
        for start in range(0, len(members), step):
            part = members[start: start + step]
            part_width = _row_width(prefix, part, requests)
            if current and (rows + len(part)) * max(width, part_width) > budget:
                packs.append(current)
                current, rows, width = [], 0, 0
            current.append((prefix, part))
            rows, width = rows + len(part), max(width, part_width)
    if current:
        packs.append(current)
    return packs


def _length_chunks(conts: list[tuple[int, ...]], prefix_width: int, budget: int) -> list[list[int]]:
    """Row indices, longest continuation first, cut into chunks of at most `budget` padded tokens."""
    order = sorted(range(len(conts)), key=lambda b: -len(conts[b]))
    chunks: list[list[int]] = []
    for b in order:
        # rows are sorted, so a chunk's first row is its widest: rows x (prefix + that width)
        if chunks and (len(chunks[-1]) + 1) * (prefix_width + len(conts[chunks[-1][0]])) <= budget:
            chunks[-1].append(b)
        else:
            chunks.append([b])
    return chunks


def _row_width(prefix: tuple[int, ...], members: list[int], requests: list[ScoreRequest]) -> int:
    return len(prefix) + max(len(requests[n].continuation_ids) for n in members)


def _chunked_target_logprobs(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[target] for (N, D) hidden states, `_HEAD_CHUNK` rows at a time, fp32."""
    parts = []
    for start in range(0, hidden.shape[0], _HEAD_CHUNK):
        logits = head(hidden[start : start + _HEAD_CHUNK]).float()
        parts.append(logits.log_softmax(-1).gather(1, targets[start : start + _HEAD_CHUNK, None])[:, 0])
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


@torch.no_grad()
def naive_score(model: Any, requests: list[ScoreRequest]) -> list[np.ndarray]:
    """Reference scorer: one pair at a time, a full forward over prefix + continuation.

    This is how the SAMI reference code scores; the benchmarks and the correctness tests compare
    the optimised scorer against it.
    """
    device = next(model.parameters()).device
    out = []
    for req in requests:
        ids = torch.tensor([list(req.prefix_ids) + list(req.continuation_ids)], device=device)
        logits = model(input_ids=ids).logits[0].float()
        P, T = len(req.prefix_ids), len(req.continuation_ids)
        logp = logits[P - 1 : P + T - 1].log_softmax(-1).gather(1, ids[0, P:, None])[:, 0]
        out.append(logp.double().cpu().numpy())
    return out
