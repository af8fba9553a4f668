"""The sampling stage: R responses per (prompt, variant), written to the run folder in units.

Everything the stage needs (variant texts, prompts, sampling config) is read from the run
folder's manifest, so `si sample RUN_DIR` can resume a killed run with no other input.
A unit is `UNIT_PROMPTS` prompts of one set with all K variants; its seed depends only on the
run seed, the set and the unit index (runs.unit_seed), so resumed and sharded runs draw the
same samples as an uninterrupted one.

Units are sampled in fixed groups of consecutive units, one backend call per group, because a
small model on a CPU samples several times faster in batches of ~64 sequences than of 16. Every
prompt carries its own seed (its unit's seed and its place in the unit), so a unit draws the
same streams in any batch; and since a group's members depend only on the manifest, a resumed
run re-samples an unfinished group exactly as the first run did (finished units are not
rewritten).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from si_toolkit.backends.base import Backend, SamplingConfig, prompt_seeds
from si_toolkit.chat import parse_response, render_unit_prompts
from si_toolkit.errors import SIError
from si_toolkit.rank.runs import UNIT_PROMPTS, Progress, RunFolder, Shard, StagePlan, merge_stage, plan_units, unit_seed

__all__ = ["units_per_call", "unit_groups", "owned_units", "run_sampling", "check_context"]

SEQUENCES_PER_CALL = 64  # sequences per backend call, roughly: units are grouped up to this
SAMPLE_COLUMNS = [
    "set", "prompt_id", "variant", "variant_label", "replicate", "token_ids", "text",
    "cot_end", "n_tokens", "format_ok", "finish_reason",
]

def units_per_call(manifest: dict[str, Any], set_name: str) -> int:
    """How many consecutive units of a set share one backend call (fixed by the manifest)."""
    config = manifest["config"]["sampling"]
    per_unit = UNIT_PROMPTS * len(manifest["sets"][set_name]["variant_texts"]) * int(config.get("replicates", 1))
    return max(1, SEQUENCES_PER_CALL // per_unit)


def unit_groups(manifest: dict[str, Any], plan: StagePlan) -> list[range]:
    """The set's units in the fixed groups that share a backend call (a group never spans two
    rounds of `si rank --until-decided`, so a round samples only its own units)."""
    size = units_per_call(manifest, plan.set_name)
    bounds = [*plan.round_starts, len(plan.units)]
    return [range(first, min(first + size, end)) for begin, end in zip(bounds, bounds[1:])
            for first in range(begin, end, size)]


def owned_units(manifest: dict[str, Any], plan: StagePlan, shard: Shard) -> list[int]:
    """The units of a set that `--shard I/N` samples: those of the groups g with g % N == I."""
    return [u for g, units in enumerate(unit_groups(manifest, plan)) if shard.owns(g) for u in units]


def run_sampling(run: RunFolder, backend: Backend, *, shard: Shard = Shard(), progress: Progress | None = None) -> bool:
    """Sample every unit this shard owns that has no shard file yet. Returns True when the whole
    stage (all shards) is complete and samples.parquet has been written.

    With `--shard I/N` this process owns the unit groups g with g % N == I.
    """
    manifest = run.read_manifest()
    config = SamplingConfig(**manifest["config"]["sampling"])
    prefill = bool(manifest["config"].get("prefill", True))
    for plan in plan_units(manifest):
        meta = manifest["sets"][plan.set_name]
        done = run.done_units("sample", plan.set_name)  # groups are disjoint: one listing per set
        for group, units in enumerate(unit_groups(manifest, plan)):
            if not shard.owns(group) or all(u in done for u in units):
                continue
            frames = _sample_units(backend, plan.set_name, meta, {u: plan.units[u] for u in units}, config, prefill)
            for unit, rows in frames.items():
                if unit not in done:
                    run.write_shard("sample", plan.set_name, unit, rows)
                    if progress:
                        progress(1)
    return merge_stage(run, "sample", "samples.parquet", ["set", "prompt_id", "variant", "replicate"])


def _sample_units(backend: Backend, set_name: str, meta: dict[str, Any], units: dict[int, list[dict[str, Any]]],
                  config: SamplingConfig, prefill: bool) -> dict[int, pd.DataFrame]:
    """Sample several units in one backend call; each prompt is seeded from its own unit's seed."""
    tokenizer = backend.tokenizer
    keys: list[tuple[int, str, int]] = []  # (unit, prompt id, variant)
    prompt_ids: list[list[int]] = []
    seeds: list[int] = []
    for unit, prompts in units.items():
        rendered = render_unit_prompts(tokenizer, meta["variant_texts"], prompts, prefill=prefill)
        check_context(backend, set_name, rendered, config)
        unit_seeds = prompt_seeds(unit_seed(config.seed, set_name, unit), len(rendered))
        for (prompt_id, variant), seed in zip(rendered, unit_seeds):
            keys.append((unit, prompt_id, variant))
            prompt_ids.append(rendered[prompt_id, variant])
            seeds.append(seed)
    generations = backend.generate(prompt_ids, config, seeds)
    rows: dict[int, list[dict[str, Any]]] = {unit: [] for unit in units}
    for (unit, prompt_id, variant), replicas in zip(keys, generations):
        for r, gen in enumerate(replicas):
            parsed = parse_response(tokenizer, gen.token_ids, prefill=prefill)
            rows[unit].append({
                "set": set_name, "prompt_id": prompt_id, "variant": variant,
                "variant_label": meta["variant_labels"][variant], "replicate": r,
                "token_ids": list(gen.token_ids), "text": parsed.text, "cot_end": parsed.cot_end,
                "n_tokens": parsed.n_tokens, "format_ok": parsed.format_ok, "finish_reason": gen.finish_reason,
            })
    return {unit: pd.DataFrame(unit_rows, columns=SAMPLE_COLUMNS) for unit, unit_rows in rows.items()}


def check_context(backend: Backend, set_name: str, rendered: dict[tuple[str, int], list[int]],
                   config: SamplingConfig) -> None:
    for (prompt_id, _), ids in rendered.items():
        if len(ids) + config.max_new_tokens > backend.max_context:
            raise SIError(
                f"prompt '{prompt_id}' of set '{set_name}': {len(ids)} prompt tokens + max_new_tokens "
                f"{config.max_new_tokens} exceed the model context ({backend.max_context}); shorten the "
                "prompt or principle, or lower --max-new-tokens"
            )
