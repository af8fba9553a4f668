"""The sampling stage: R responses per (prompt, variant), written to the run folder in units.

Everything the stage needs (variant texts, prompts, sampling config) is read from the run
folder's manifest, so `si sample RUN_DIR` can resume a killed run with no other input.
A unit is `UNIT_PROMPTS` prompts of one set with all K variants; its seed depends only on the
run seed, the set and the unit index (runs.unit_seed), so resumed and sharded runs draw the
same samples as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from si_toolkit.backends.base import Backend, SamplingConfig
from si_toolkit.chat import parse_response, render_prompt_ids
from si_toolkit.errors import SIError
from si_toolkit.runs import RunFolder, Shard, unit_seed

__all__ = ["UNIT_PROMPTS", "StagePlan", "plan_units", "run_sampling", "merge_stage", "render_unit_prompts"]

UNIT_PROMPTS = 4  # prompts per work unit: small enough that a kill loses little work
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


def run_sampling(run: RunFolder, backend: Backend, *, shard: Shard = Shard(), progress: Progress | None = None) -> bool:
    """Sample every unit this shard owns that has no shard file yet. Returns True when the whole
    stage (all shards) is complete and samples.parquet has been written."""
    manifest = run.read_manifest()
    config = SamplingConfig(**manifest["config"]["sampling"])
    prefill = bool(manifest["config"].get("prefill", True))
    for plan in plan_units(manifest):
        meta = manifest["sets"][plan.set_name]
        done = run.done_units("sample", plan.set_name)
        for unit, prompts in enumerate(plan.units):
            if unit in done or not shard.owns(unit):
                continue
            rows = _sample_unit(backend, plan.set_name, meta, prompts, config, prefill,
                                unit_seed(config.seed, plan.set_name, unit))
            run.write_shard("sample", plan.set_name, unit, rows)
            if progress:
                progress(1)
    return merge_stage(run, "sample", "samples.parquet", ["set", "prompt_id", "variant", "replicate"])


def _sample_unit(backend: Backend, set_name: str, meta: dict[str, Any], prompts: list[dict[str, Any]],
                 config: SamplingConfig, prefill: bool, seed: int) -> pd.DataFrame:
    tokenizer = backend.tokenizer
    rendered = render_unit_prompts(tokenizer, meta["variant_texts"], prompts, prefill=prefill)
    keys = list(rendered)
    for (prompt_id, _), ids in rendered.items():
        if len(ids) + config.max_new_tokens > backend.max_context:
            raise SIError(
                f"prompt '{prompt_id}' of set '{set_name}': {len(ids)} prompt tokens + max_new_tokens "
                f"{config.max_new_tokens} exceed the model context ({backend.max_context}); shorten the "
                "prompt or principle, or lower --max-new-tokens"
            )
    generations = backend.generate([rendered[k] for k in keys], config, seed)
    rows = []
    for (prompt_id, variant), replicas in zip(keys, generations):
        for r, gen in enumerate(replicas):
            parsed = parse_response(tokenizer, gen.token_ids, prefill=prefill)
            rows.append({
                "set": set_name, "prompt_id": prompt_id, "variant": variant,
                "variant_label": meta["variant_labels"][variant], "replicate": r,
                "token_ids": list(gen.token_ids), "text": parsed.text, "cot_end": parsed.cot_end,
                "n_tokens": parsed.n_tokens, "format_ok": parsed.format_ok, "finish_reason": gen.finish_reason,
            })
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


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
