"""Teacher-forced forward passes over (prompt ids, completion ids) pairs, and span reductions.

Pairs share prompts: the G completions of a prompt come from its K renderings, the SAMI
matrix scores K completions under each rendering, and the renderings of a step's prompts under
one principle share that principle's system turn. So a call runs in stages through the model,
each on the KV cache (with gradients, when the call has them) of the one before, its rows
repeated for the next (backward sums the gradients of repeated rows):

1. the stems shared by several distinct prompts, once each (`backends.decode.shared_stems`,
   the sampler's rule: a common prefix of at least 16 tokens); skipped when there is none;
2. the rest of each of the U distinct prompts, left-padded, once each;
3. the B completions, right-padded to a common width C.

Prompts are usually most of a pair's tokens, so the forward and backward cost falls with the
number of pairs per prompt (2 for G = 4 and K = 2, 4 with the SAMI cross pairs) and with the
prompts per principle. The result equals one pass over [prompt | completion] rows up to float
rounding (`share_prompts=False` runs that single pass; models whose cache is not a plain
dynamic one, e.g. sliding-window layers, use it always). Under DDP the stages must be one
forward of the wrapped module: wrap `PairModel(policy)`, not the policy.

    logits predicting completion token t:  t = 0 from the prompt's last position (stage 2),
                                           t ≥ 1 from completion position t − 1 (stage 3)

Only completion positions go through the lm-head (`logits_to_keep`), which matters for
49k-token vocabularies, and log-probs are log π(y_t) = logits[y_t] − logsumexp(logits), which
keeps one (B, C, V) block of logits for backward rather than a second log-softmax copy.
Position ids count real tokens only (left padding does not shift them), as in generation.
Log-probs are taken at the sampling temperature T, log softmax(logits / T), like TRL, so that
the ratio π_θ/π_old compares the distributions that were sampled from.

Hidden states of the requested layers come from the completion pass (`output_hidden_states`):
`hidden[l][b, t]` is layer l's state at completion token t. Layer indices follow transformers'
`hidden_states` tuple: 0 = embeddings, L = the last layer (after the final norm for
Llama-style models), negative = counted from the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from si_toolkit.backends.decode import cache_kwarg, left_pad, output_cache, shared_stems
from si_toolkit.errors import SIError
from si_toolkit.train.memory import checkpointed_layers, head_logp, head_weight, read_through

__all__ = ["ForwardOutput", "PairModel", "forward_pairs", "lora_dropout", "span_mask", "span_sums"]

_ENTROPY_ROWS = 4  # rows per no-grad entropy chunk: 4 x 64 tokens x 49152 vocab x 4 B = 50 MB of temporaries


@dataclass
class ForwardOutput:
    """Per-token quantities of B completions padded to C columns."""

    logp: Tensor  # (B, C) log π_T(y_t | prompt, y_<t); 0 at padding; with grad when the forward had it
    mask: Tensor  # (B, C) bool, True at real completion tokens
    entropy: Tensor | None  # (B, C) detached token entropy of π_T (nats), when asked for
    hidden: dict[int, Tensor]  # layer -> (B, C, D) hidden states at the completion tokens


@dataclass
class PairBatch:
    """The tensors of one call: prompt stems, distinct prompts, and completions pointing at their prompt.

    Prompt u is stem `stem_of[u]` followed by its suffix; `prompt_ids` / `prompt_mask` hold
    [left-padded stem | left-padded suffix] rows, so padding may sit inside a row (masked).
    """

    stem_ids: Tensor  # (S, Ps) left-padded stems shared by several prompts (Ps = 0: none)
    stem_mask: Tensor  # (S, Ps)
    stem_of: Tensor  # (U,) long: the stem row of each distinct prompt
    suffix_ids: Tensor  # (U, Pu) left-padded rest of each distinct prompt (at least one token)
    suffix_mask: Tensor  # (U, Pu)
    owner: Tensor  # (B,) long: the prompt row of each pair
    completion_ids: Tensor  # (B, C) right-padded completions
    completion_mask: Tensor  # (B, C)

    @property
    def prompt_ids(self) -> Tensor:  # (U, Ps + Pu)
        return torch.cat([self.stem_ids.index_select(0, self.stem_of), self.suffix_ids], 1)

    @property
    def prompt_mask(self) -> Tensor:  # (U, Ps + Pu)
        return torch.cat([self.stem_mask.index_select(0, self.stem_of), self.suffix_mask], 1)


@dataclass
class PassOutput:
    """Logits predicting completion tokens 0 and 1..C−1, and the requested hidden states.

    Tokens 1..C−1 come either as logits (`rest`) or, for the chunked lm-head (`train/memory.py`), as
    the final hidden states (`rest_states`) with the head's weight (`head`).
    """

    first: Tensor | None  # (B, 1, V)
    rest: Tensor | None  # (B, C − 1, V)
    hidden: dict[int, Tensor]  # layer -> (B, C, D)
    rest_states: Tensor | None = None  # (B, C − 1, D)
    head: Tensor | None = None  # (V, D)


class PairModel(torch.nn.Module):
    """A causal LM whose forward runs all the passes of `forward_pairs`, so that DDP, which allows
    one forward per backward, can wrap it: `DistributedDataParallel(PairModel(policy))`."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, batch: PairBatch, layers: Sequence[int], with_logits: bool, share_prompts: bool,
                recompute: bool = False) -> PassOutput:
        return _run(self.lm, batch, layers, with_logits, share_prompts, recompute)


def forward_pairs(
    model: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    temperature: float,
    layers: Sequence[int] = (),
    with_logits: bool = True,
    with_entropy: bool = False,
    share_prompts: bool = True,
    recompute: bool = False,
) -> ForwardOutput:
    """Score the pairs with `model`; see the module docstring for the two passes.

    Args:
        model: a transformers causal LM (or a PEFT model), or DDP around a `PairModel`.
        pairs: (prompt ids, completion ids); every completion holds at least one token.
        pad_id: id written into padding (never attended to, never scored).
        temperature: T of the sampling distribution.
        layers: hidden-state layers to return (empty: no hidden states are requested).
        with_logits: False skips the lm-head over the completion (then logp is all zeros);
            for reference passes that only need hidden states.
        with_entropy: also return the per-token entropy (no grad).
        share_prompts: run each distinct prompt once (default); False runs one pass over
            [prompt | completion] rows (the reference the two-pass result is tested against).
        recompute: activation checkpointing of the completion pass (`memory.checkpointed_layers`);
            the same result, less memory, more compute.
    """
    if not pairs or any(len(c) == 0 or len(p) == 0 for p, c in pairs):
        raise ValueError("forward_pairs needs at least one pair, each with a non-empty prompt and completion")
    device = _device_of(model)
    batch = _layout(pairs, pad_id, device)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        out = model(batch, list(layers), with_logits, share_prompts, recompute)
    else:
        out = _run(model, batch, list(layers), with_logits, share_prompts, recompute)
    mask = batch.completion_mask.bool()  # (B, C)
    if out.first is None:
        return ForwardOutput(torch.zeros(mask.shape, device=device), mask, None, out.hidden)
    ids = batch.completion_ids
    if out.head is not None and out.rest_states is not None:
        first = _token_logp([(out.first, ids[:, :1])], temperature, with_entropy)
        rest = head_logp(out.rest_states, out.head, ids[:, 1:], temperature, with_entropy)
        logp = torch.cat([first[0], rest[0]], 1)
        entropy = torch.cat([first[1], rest[1]], 1) if first[1] is not None and rest[1] is not None else None
    else:
        assert out.rest is not None
        logp, entropy = _token_logp([(out.first, ids[:, :1]), (out.rest, ids[:, 1:])], temperature, with_entropy)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    return ForwardOutput(logp, mask, entropy, out.hidden)


def _run(lm: Any, batch: PairBatch, layers: Sequence[int], with_logits: bool, share_prompts: bool,
         recompute: bool = False) -> PassOutput:
    """The shared passes (or the single pass) over one batch; logits are the model's, not yet scaled by T.

    Three stages, each on the KV cache of the one before, its rows repeated for the next:
    stems shared by several prompts (skipped when there are none), the rest of each distinct
    prompt, the completions.
    """
    if not share_prompts:
        return _single_pass(lm, batch, layers, with_logits, recompute)
    cache_arg = cache_kwarg(_base_lm(lm))
    cache: Any = None
    stem_lengths = torch.zeros_like(batch.stem_of)
    if batch.stem_ids.shape[1] > 0:
        stems = lm(input_ids=batch.stem_ids, attention_mask=batch.stem_mask, use_cache=True, logits_to_keep=1,
                   position_ids=(batch.stem_mask.cumsum(1) - 1).clamp(min=0))
        cache = output_cache(stems)
        if not _plain_dynamic(cache):
            return _single_pass(lm, batch, layers, with_logits, recompute)
        _repeat_rows(cache, batch.stem_of)
        stem_lengths = batch.stem_mask.sum(1).index_select(0, batch.stem_of)
    prompt_mask = batch.prompt_mask  # (U, Ps + Pu)
    positions = stem_lengths[:, None] + (batch.suffix_mask.cumsum(1) - 1).clamp(min=0)  # (U, Pu)
    first = lm(input_ids=batch.suffix_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
               logits_to_keep=1, **({cache_arg: cache} if cache is not None else {}))
    cache = output_cache(first)
    if not _plain_dynamic(cache):
        return _single_pass(lm, batch, layers, with_logits, recompute)
    read_through(cache, batch.owner)  # one cache row per pair, holding its prompt's keys and values
    C = batch.completion_ids.shape[1]
    mask = torch.cat([prompt_mask.index_select(0, batch.owner), batch.completion_mask], 1)  # (B, P + C)
    lengths = prompt_mask.sum(1).index_select(0, batch.owner)  # (B,)
    positions = lengths[:, None] + torch.arange(C, device=lengths.device)[None, :]  # (B, C)
    # The head runs on completion positions 0..C−2 only (position C−1 predicts nothing scored), and
    # asking for exactly those avoids a slice whose backward would allocate a (B, C, V) gradient.
    # The chunked head (train/memory.py) needs only the final states: the model's head then runs on the
    # last position alone, which also checks the chunked route against the model on the first call.
    head = _chunked_head(lm) if with_logits else None
    keep = 1 if head is not None or not with_logits else torch.arange(C - 1, device=positions.device)
    with checkpointed_layers(_base_lm(lm), recompute):
        second = lm(input_ids=batch.completion_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    output_hidden_states=bool(layers) or head is not None, logits_to_keep=keep, **{cache_arg: cache})
    hidden = {layer: _layer(second.hidden_states, layer) for layer in layers}  # each (B, C, D)
    if not with_logits:
        return PassOutput(None, None, hidden)
    first_logits = first.logits[:, -1:].index_select(0, batch.owner)
    if head is None:
        return PassOutput(first_logits, second.logits, hidden)
    states = second.hidden_states[-1]  # (B, C, D) after the final norm
    if not _head_agrees(lm, head, states[:, -1], second.logits[:, -1]):
        return _run(lm, batch, layers, with_logits, share_prompts, recompute)  # now on the plain route
    return PassOutput(first_logits, None, hidden, rest_states=states[:, : C - 1], head=head)


# Set on the model by its first call: True once W·h was found equal to its logits, False when not.
_HEAD_IS_PLAIN = "_si_head_is_plain"


def _chunked_head(lm: Any) -> Tensor | None:
    """The head weight for the chunked route, unless this model was found to need its own head."""
    base = _base_lm(lm)
    return None if getattr(base, _HEAD_IS_PLAIN, None) is False else head_weight(base)


@torch.no_grad()
def _head_agrees(lm: Any, weight: Tensor, states: Tensor, logits: Tensor) -> bool:
    """On a model's first call, whether W·h equals its own logits (B, V) at one position; a model
    whose head does more (e.g. soft-capping) is marked to use the plain route from then on."""
    base = _base_lm(lm)
    if getattr(base, _HEAD_IS_PLAIN, None) is not None:
        return True  # checked, and agreed (a model that did not no longer reaches here)
    mine, theirs = (states @ weight.T).float(), logits.float()
    agrees = bool(torch.allclose(mine, theirs, rtol=1e-2, atol=1e-2 * float(theirs.abs().max().clamp(min=1.0))))
    setattr(base, _HEAD_IS_PLAIN, agrees)
    return agrees


def _repeat_rows(cache: Any, rows: Tensor) -> None:
    """Replace the cache's batch rows by rows[0], rows[1], ... (differentiable; backward sums repeats)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)


def _single_pass(lm: Any, batch: PairBatch, layers: Sequence[int], with_logits: bool,
                 recompute: bool = False) -> PassOutput:
    """One forward over [left-padded prompt | right-padded completion] rows."""
    prompt_ids, prompt_mask = batch.prompt_ids.index_select(0, batch.owner), batch.prompt_mask.index_select(0, batch.owner)
    ids = torch.cat([prompt_ids, batch.completion_ids], 1)  # (B, P + C)
    attention = torch.cat([prompt_mask, batch.completion_mask], 1)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0, as in generation
    P, C = prompt_ids.shape[1], batch.completion_ids.shape[1]
    with checkpointed_layers(_base_lm(lm), recompute):
        out = lm(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=False,
                 output_hidden_states=bool(layers), logits_to_keep=C + 1 if with_logits else 1)
    hidden = {layer: _layer(out.hidden_states, layer)[:, P:] for layer in layers}  # each (B, C, D)
    if not with_logits:
        return PassOutput(None, None, hidden)
    return PassOutput(out.logits[:, :1], out.logits[:, 1:C], hidden)  # column P − 1 + t predicts token t


def _token_logp(pieces: Sequence[tuple[Tensor, Tensor]], temperature: float,
                with_entropy: bool) -> tuple[Tensor, Tensor | None]:
    """log π_T(y) = l[y] − logsumexp(l), l = logits / T, per (logits (B, c, V), targets (B, c)) piece,
    concatenated over the pieces; and the no-grad entropy H = logsumexp(l) − Σ softmax(l)·l."""
    logps, entropies = [], []
    for logits, targets in pieces:
        logits = logits.float()  # no copy for a float32 model
        if temperature != 1.0:
            logits = logits / temperature
        lse = torch.logsumexp(logits, dim=-1)  # (B, c); backward keeps `logits`, no second copy
        logps.append(logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse)
        if with_entropy:
            entropies.append(_entropy(logits.detach(), lse.detach()))
    return torch.cat(logps, 1), (torch.cat(entropies, 1) if with_entropy else None)


@torch.no_grad()
def _entropy(logits: Tensor, lse: Tensor) -> Tensor:
    """(B, c) entropy from logits (B, c, V) and their logsumexp, a few rows at a time."""
    parts = []
    for start in range(0, logits.shape[0], _ENTROPY_ROWS):
        chunk, norm = logits[start: start + _ENTROPY_ROWS], lse[start: start + _ENTROPY_ROWS]
        probs = torch.exp(chunk - norm.unsqueeze(-1))
        parts.append(norm - (probs * chunk).sum(-1))
    return torch.cat(parts)


def _plain_dynamic(cache: Any) -> bool:
    """True when every cache layer is a full-attention dynamic layer (rows can be repeated freely)."""
    layers: list[Any] = list(getattr(cache, "layers", None) or [])
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _base_lm(lm: Any) -> Any:
    """The transformers model under a PEFT wrapper (its forward names the cache argument)."""
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


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


def _layout(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, device: torch.device) -> PairBatch:
    """Stems shared by the distinct prompts (`backends.decode.shared_stems`, the sampler's rule),
    the rest of each distinct prompt (first-seen order), and the completions (right-padded)."""
    rows: dict[tuple[int, ...], int] = {}
    owner = [rows.setdefault(tuple(prompt), len(rows)) for prompt, _ in pairs]
    prompts = [list(p) for p in rows]
    stems, stem_of = shared_stems(prompts)
    stem_ids, stem_mask = left_pad(stems, pad_id, "cpu") if any(stems) else _empty(len(stems))
    suffix_ids, suffix_mask = left_pad([p[len(stems[stem_of[u]]):] for u, p in enumerate(prompts)], pad_id, "cpu")
    C = max(len(c) for _, c in pairs)
    completion_ids = torch.full((len(pairs), C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(pairs), C), dtype=torch.long)
    for b, (_, completion) in enumerate(pairs):
        completion_ids[b, : len(completion)] = torch.tensor(list(completion), dtype=torch.long)
        completion_mask[b, : len(completion)] = 1
    return PairBatch(stem_ids.to(device), stem_mask.to(device), torch.tensor(stem_of, device=device),
                     suffix_ids.to(device), suffix_mask.to(device), torch.tensor(owner, device=device),
                     completion_ids.to(device), completion_mask.to(device))


def _empty(n_rows: int) -> tuple[Tensor, Tensor]:
    """(ids, mask) of n_rows empty stems: zero columns."""
    return torch.zeros((n_rows, 0), dtype=torch.long), torch.zeros((n_rows, 0), dtype=torch.long)


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
