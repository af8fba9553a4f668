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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from si_toolkit.backends.base import Backend, SamplingConfig, prompt_seeds
from si_toolkit.chat import parse_response, render_prompt_ids
from si_toolkit.errors import SIError
from si_toolkit.rank.runs import RunFolder, Shard, unit_seed

__all__ = ["UNIT_PROMPTS", "StagePlan", "plan_units", "units_per_call", "unit_groups", "owned_units", "run_sampling",
           "merge_stage", "render_unit_prompts", "check_context"]

UNIT_PROMPTS = 4  # prompts per work unit: small enough that a kill loses little work
SEQUENCES_PER_CALL = 64  # sequences per backend call, roughly: units are grouped up to this
SAMPLE_COLUMNS = [
    "set", "prompt_id", "variant", "variant_label", "replicate", "token_ids", "text",
    "cot_end", "n_tokens", "format_ok", "finish_reason",
]

Progress = Callable[[int], None]


@dataclass(frozen=True)
class StagePlan:
    """The units of one stage for one set: unit index -> prompt records."""

    set_name: str
    units: list[list[dict[str, Any]]]


def plan_units(manifest: dict[str, Any]) -> list[StagePlan]:
    prompts = manifest["prompts"]
    chunks = [prompts[k : k + UNIT_PROMPTS] for k in range(0, len(prompts), UNIT_PROMPTS)]
    return [StagePlan(name, chunks) for name in manifest["sets"]]


def render_unit_prompts(tokenizer: Any, variant_texts: list[str], prompts: list[dict[str, Any]], *,
                        prefill: bool) -> dict[tuple[str, int], list[int]]:
    """Rendered prompt ids for every (prompt id, variant index) of a unit."""
    return {
        (p["id"], i): render_prompt_ids(tokenizer, text, p["text"], prefill=prefill)
        for p in prompts
        for i, text in enumerate(variant_texts)
    }


def units_per_call(manifest: dict[str, Any], set_name: str) -> int:
    """How many consecutive units of a set share one backend call (fixed by the manifest)."""
    config = manifest["config"]["sampling"]
    per_unit = UNIT_PROMPTS * len(manifest["sets"][set_name]["variant_texts"]) * int(config.get("replicates", 1))
    return max(1, SEQUENCES_PER_CALL // per_unit)


def unit_groups(manifest: dict[str, Any], plan: StagePlan) -> list[range]:
    """The set's units in the fixed groups that share a backend call."""
    size = units_per_call(manifest, plan.set_name)
    return [range(first, min(first + size, len(plan.units))) for first in range(0, len(plan.units), size)]


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


def merge_stage(run: RunFolder, stage: str, table: str, sort_keys: list[str]) -> bool:
    """When every unit of every set has its shard, write the merged, sorted table atomically.

    Checks that no unit is missing and no row is duplicated (sharded runs write into one folder).
    """
    manifest = run.read_manifest()
    plans = plan_units(manifest)
    missing = [
        f"{p.set_name}/u{u:05d}" for p in plans for u in range(len(p.units))
        if u not in run.done_units(stage, p.set_name)
    ]
    if missing:
        return False
    frame = pd.concat([run.read_shards(stage, p.set_name) for p in plans], ignore_index=True)
    dupes = frame.duplicated(subset=sort_keys, keep=False)
    if dupes.any():
        first = frame.loc[dupes, sort_keys].iloc[0].to_dict()
        raise SIError(f"{run.path}: duplicate {stage} rows (e.g. {first}); remove the run's shards/{stage} and rerun")
    run.write_table(table, frame.sort_values(sort_keys, kind="stable").reset_index(drop=True))
    return True
