"""The scoring stage: every response scored under every condition, per span (SI-SPEC §2).

For prompt x, condition i and response (j, r), the backend teacher-forces the *generated* token
ids of y_{j,r} after the prompt rendered for c_i and returns per-token log-probs; the stage sums
them over the `cot`, `answer` and `full` spans. Units are the same as the sampling stage's, so
a killed run resumes at the first unit without a shard.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from si_toolkit.backends.base import Backend, ScoreRequest
from si_toolkit.chat import render_unit_prompts
from si_toolkit.rank.runs import Progress, RunFolder, Shard, merge_stage, plan_units
from si_toolkit.tensors import SCORE_COLUMNS

__all__ = ["run_scoring", "span_sums"]


def span_sums(token_logprobs: np.ndarray, cot_end: int) -> dict[str, tuple[float, int]]:
    """(logp_sum, n_tokens) per span; `full` is cot + answer so SI-SPEC §6.6 holds exactly."""
    cot = float(token_logprobs[:cot_end].sum())
    answer = float(token_logprobs[cot_end:].sum())
    n = len(token_logprobs)
    return {"cot": (cot, cot_end), "answer": (answer, n - cot_end), "full": (cot + answer, n)}


def run_scoring(run: RunFolder, backend: Backend, *, shard: Shard = Shard(), progress: Progress | None = None) -> bool:
    """Score every unit this shard owns that has no shard yet; True when the stage is complete."""
    manifest = run.read_manifest()
    samples = run.read_table("samples.parquet")
    prefill = bool(manifest["config"].get("prefill", True))
    for plan in plan_units(manifest):
        meta = manifest["sets"][plan.set_name]
        done = run.done_units("score", plan.set_name)
        set_samples = samples[samples["set"] == plan.set_name]
        for unit, prompts in enumerate(plan.units):
            if unit in done or not shard.owns(unit):
                continue
            unit_samples = set_samples[set_samples["prompt_id"].isin([p["id"] for p in prompts])]
            rows = _score_unit(backend, plan.set_name, meta, prompts, unit_samples, prefill)
            run.write_shard("score", plan.set_name, unit, rows)
            if progress:
                progress(1)
    return merge_stage(run, "score", "scores.parquet", list(SCORE_COLUMNS[:6]))  # one row per cell and span


def _score_unit(backend: Backend, set_name: str, meta: dict[str, Any], prompts: list[dict[str, Any]],
                samples: pd.DataFrame, prefill: bool) -> pd.DataFrame:
    tokenizer = backend.tokenizer
    rendered = render_unit_prompts(tokenizer, meta["variant_texts"], prompts, prefill=prefill)
    K = len(meta["variant_texts"])
    responses = list(samples.itertuples(index=False))
    requests, keys = [], []
    for resp in responses:
        for i in range(K):
            requests.append(ScoreRequest(tuple(rendered[(resp.prompt_id, i)]), tuple(int(t) for t in resp.token_ids)))
            keys.append((resp, i))
    logprobs = backend.score(requests)
    rows = []
    for (resp, i), lp in zip(keys, logprobs):
        for span, (total, n) in span_sums(lp, int(resp.cot_end)).items():
            rows.append((set_name, resp.prompt_id, i, int(resp.variant), int(resp.replicate), span, total, n))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)
