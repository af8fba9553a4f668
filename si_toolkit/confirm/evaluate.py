"""The offline benchmark: exact-match accuracy and format rate of a checkpoint on held-out problems.

Definitions (docs/evaluation.md):

- **Items**: prompts with a numeric reference answer (default ``builtin:arithmetic``), restricted
  to the **held-out** part of `heldout_split`, the one split the trainer also uses, so a trained
  checkpoint is never scored on a problem it was trained on.
- **Decoding**: greedy by default (temperature 0): the answer is then a deterministic function of
  the weights, so two checkpoints differ item by item only because their weights differ.
  ``temperature > 0`` samples untruncated at that temperature under ``seed``.
- **Rendering**: `si_toolkit.chat.render_prompt_ids` with a neutral system text (``--system``),
  the CoT instruction and the ``<think>`` prefill, exactly as the ranking stage renders.
- **Correct**: `si_toolkit.train.rewards.correctness_reward`, i.e. the LAST number
  (`extract_number`) of the LAST ``<answer>`` block (`answer_text`) equals the reference's number
  (math.isclose, rel 1e-6). **Lenient** correctness reads the whole response when there is no
  ``<answer>`` tag, separating arithmetic skill from format-following.
- **Format OK**: `si_toolkit.chat.is_exact_format`.

Per-item results go to ``items.jsonl`` so two checkpoints can be compared item by item with a
paired bootstrap (`compare_items`). The lm-evaluation-harness bridge is in
`si_toolkit.confirm.harness`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from si_toolkit.chat import is_exact_format, parse_response, render_prompt_ids
from si_toolkit.errors import SIError
from si_toolkit.estimators import bootstrap_mean_ci, paired_comparison
from si_toolkit.prompts import Prompt, PromptSet, load_prompts
from si_toolkit.safeio import atomic_write_json, atomic_write_text
from si_toolkit.train.rewards import ANSWER_OPEN, answer_text, correctness_reward, extract_number, graded_format_reward

__all__ = [
    "DEFAULT_SYSTEM",
    "EVAL_SCHEMA",
    "HELDOUT_FRACTION",
    "ITEM_METRICS",
    "EvalConfig",
    "benchmark_items",
    "compare_items",
    "evaluate_checkpoint",
    "generate_items",
    "heldout_split",
    "is_heldout",
    "read_items",
    "score_response",
    "summarize_items",
]

EVAL_SCHEMA = "si-toolkit/eval/v1"
COMPARISON_SCHEMA = "si-toolkit/eval-comparison/v1"
# One third of the prompts are held out: 23 of the 72 built-in arithmetic problems, 17 of the 56
# open prompts. A prompt's side depends only on its id (see `is_heldout`).
HELDOUT_FRACTION = 1.0 / 3.0
_SPLIT_SALT = b"si-toolkit/heldout-split/v1\x00"  # changing it re-draws every split: never do
DEFAULT_SYSTEM = "You are a helpful assistant."
ITEM_METRICS = ("correct", "correct_lenient", "format_ok", "graded_format")  # per-item values that are compared
# What each per-item metric is called in summary.json (the mean over items).
SUMMARY_NAMES = {"correct": "accuracy", "correct_lenient": "accuracy_lenient", "format_ok": "format_rate",
                 "graded_format": "graded_format_mean"}
Progress = Callable[[int], None]


# --------------------------------------------------------------------------------- held-out split


def is_heldout(prompt_id: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """True when the prompt is held out from training.

        u(id) = int(sha256(salt ‖ id)[:8 bytes]) / 2^64 ∈ [0, 1),   held out ⇔ u(id) < fraction

    The side of a prompt depends on nothing but its id: adding, removing or reordering prompts
    never moves another prompt across the split, and the trainer and `si eval` agree by
    construction.
    """
    if not 0.0 < fraction < 1.0:
        raise SIError(f"held-out fraction = {fraction}: must be in (0, 1) (default {HELDOUT_FRACTION:.3f})")
    digest = hashlib.sha256(_SPLIT_SALT + prompt_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def heldout_split(prompts: PromptSet, *, fraction: float = HELDOUT_FRACTION) -> tuple[PromptSet, PromptSet]:
    """(train, held-out) parts of a prompt set, each in the set's order (see `is_heldout`).

    The trainer trains on the first part; `si eval` and `si geometry` use the second.
    Either part may be empty for a very small set; callers that need one raise an SIError.
    """
    train = tuple(p for p in prompts.prompts if not is_heldout(p.id, fraction))
    heldout = tuple(p for p in prompts.prompts if is_heldout(p.id, fraction))
    return (
        PromptSet(name=prompts.name, source=f"{prompts.source}#train", prompts=train),
        PromptSet(name=prompts.name, source=f"{prompts.source}#heldout", prompts=heldout),
    )


# --------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides a benchmark result (recorded in summary.json)."""

    prompts: str = field(default="builtin:arithmetic", metadata={"help": "builtin:NAME or a prompt file with numeric answers."})
    split: str = field(default="heldout", metadata={"help": "'heldout' (items never trained on) or 'all'."})
    n_items: int | None = field(default=None, metadata={"help": "Use the first n items after the split (None = all)."})
    system: str = field(default=DEFAULT_SYSTEM, metadata={"help": "System text put before the CoT instruction."})
    prefill: bool = field(default=True, metadata={"help": "Prefill the assistant turn with '<think>\\n'."})
    max_new_tokens: int = field(default=192, metadata={"help": "Generated tokens per item (>= 1)."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (default); > 0 samples untruncated."})
    seed: int = field(default=0, metadata={"help": "Sampling seed (used only when temperature > 0)."})
    dtype: str = field(default="bfloat16", metadata={"help": "float32, bfloat16 (default, as `si rank`) or float16 weights."})
    batch_size: int = field(default=16, metadata={"help": "Items per generation batch (outputs depend on it slightly)."})

    def __post_init__(self) -> None:
        if self.split not in ("heldout", "all"):
            raise SIError(f"--split {self.split!r}: use 'heldout' or 'all'")
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise SIError(f"--{name.replace('_', '-')} = {getattr(self, name)}: must be >= 1")
        if self.n_items is not None and self.n_items < 1:
            raise SIError(f"--n-items = {self.n_items}: must be >= 1")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 10.0):
            raise SIError(f"--temperature = {self.temperature}: must be in [0, 10] (0 = greedy)")
        if not self.system.strip():
            raise SIError("--system is empty; give a system text (default: a neutral assistant line)")


def benchmark_items(config: EvalConfig) -> PromptSet:
    """The benchmark items: the split's prompts, first `n_items`, each with a numeric answer."""
    loaded = load_prompts(config.prompts)
    items = heldout_split(loaded)[1] if config.split == "heldout" else loaded
    if not items.prompts:
        raise SIError(f"{config.prompts}: no held-out prompts (the set is too small); use --split all or a larger set")
    for p in items.prompts:
        number = extract_number(p.answer) if p.answer is not None else None
        if number is None or not math.isfinite(number):
            raise SIError(
                f"{config.prompts}: prompt '{p.id}' has reference answer {p.answer!r}, not a number; the "
                "benchmark needs a numeric 'answer' for every prompt (e.g. builtin:arithmetic)"
            )
    if config.n_items is not None:
        if config.n_items > len(items):
            raise SIError(f"--n-items {config.n_items}: the {config.split} split of {config.prompts} has only {len(items)} items")
        items = PromptSet(items.name, items.source, items.prompts[: config.n_items])
    return items


def _item_hash(prompts: Sequence[Prompt]) -> str:
    payload = json.dumps([[p.id, p.text, p.answer] for p in prompts], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


# --------------------------------------------------------------------------------- scoring


def score_response(text: str, reference: str, *, prefill: bool = True) -> dict[str, Any]:
    """Grade one response against its reference answer (the documented extractor, no other).

    Returns ``answer`` (`answer_text`: content of the last <answer> block, or None),
    ``predicted`` (`extract_number` of it, or None), ``correct`` (`correctness_reward` == 1),
    ``correct_lenient`` (the same match, reading the whole response when it has no <answer>
    tag), ``format_ok`` (`is_exact_format`) and ``graded_format`` (the trainer's partial-credit
    format reward, `graded_format_reward`, in [0, 1]: it moves before the exact format does).
    """
    answer = answer_text(text)
    predicted = extract_number(answer) if answer is not None else None
    lenient_text = text if answer is not None else ANSWER_OPEN + text  # no tag: the whole response is the answer
    return {
        "answer": answer,
        "predicted": predicted if predicted is None or math.isfinite(predicted) else None,
        "correct": correctness_reward(text, reference) == 1.0,
        "correct_lenient": correctness_reward(lenient_text, reference) == 1.0,
        "format_ok": is_exact_format(text, prefill=prefill),
        "graded_format": graded_format_reward(text, prefill=prefill),
    }


def summarize_items(items: Sequence[dict[str, Any]], *, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean of each per-item metric with its bootstrap CI over items (items are independent)."""
    if not items:
        raise ValueError("no items to summarise")
    out: dict[str, Any] = {"n_items": len(items)}
    for metric in ITEM_METRICS:
        values = np.array([float(item[metric]) for item in items])
        ci = bootstrap_mean_ci(values, n_resamples=n_resamples, seed=seed)
        name = SUMMARY_NAMES[metric]
        out[name] = float(values.mean())
        out[f"{name}_ci"] = None if ci.low is None else [ci.low, ci.high]
    out["mean_tokens"] = float(np.mean([item["n_tokens"] for item in items]))
    out["truncated_rate"] = float(np.mean([item["finish_reason"] == "length" for item in items]))
    return out


# --------------------------------------------------------------------------------- generation


def _greedy(backend: Any, prompt_ids: list[list[int]], config: EvalConfig, progress: Progress | None) -> list[tuple[list[int], str]]:
    out: list[tuple[list[int], str]] = []
    for start in range(0, len(prompt_ids), config.batch_size):  # batches of batch_size, for progress
        batch = prompt_ids[start : start + config.batch_size]
        out += [(g.token_ids, g.finish_reason) for g in backend.greedy(batch, config.max_new_tokens, batch_size=config.batch_size)]
        if progress:
            progress(len(batch))
    return out


def _sampled(backend: Any, prompt_ids: list[list[int]], config: EvalConfig, progress: Progress | None) -> list[tuple[list[int], str]]:
    from si_toolkit.backends.base import SamplingConfig

    sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    generations = backend.generate(prompt_ids, sampling, config.seed)
    if progress:
        progress(len(prompt_ids))
    return [(list(g[0].token_ids), g[0].finish_reason) for g in generations]


def generate_items(backend: Any, items: PromptSet, config: EvalConfig, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Render, generate and grade every item; one dict per item (the items.jsonl rows)."""
    tokenizer = backend.tokenizer
    prompt_ids = [render_prompt_ids(tokenizer, config.system, p.text, prefill=config.prefill) for p in items.prompts]
    for p, ids in zip(items.prompts, prompt_ids):
        if len(ids) + config.max_new_tokens > backend.max_context:
            raise SIError(f"item '{p.id}': {len(ids)} prompt tokens + --max-new-tokens {config.max_new_tokens} exceed "
                          f"the model context ({backend.max_context}); lower --max-new-tokens")
    decode = _greedy if config.temperature == 0.0 else _sampled
    rows = []
    for p, (token_ids, finish) in zip(items.prompts, decode(backend, prompt_ids, config, progress)):
        parsed = parse_response(tokenizer, token_ids, prefill=config.prefill)
        reference = str(p.answer)  # benchmark_items checked that every item has a numeric answer
        rows.append({"id": p.id, "prompt": p.text, "reference": reference, "response": parsed.text,
                     **score_response(parsed.text, reference, prefill=config.prefill),
                     "n_tokens": parsed.n_tokens, "finish_reason": finish})
    return rows


def evaluate_checkpoint(model_ref: str, config: EvalConfig, out_dir: Path, *, progress: Progress | None = None,
                        trust_remote_code: bool = False) -> dict[str, Any]:
    """Run the benchmark on one checkpoint; write items.jsonl and summary.json into `out_dir`.

    Returns the summary (also written): model, config, item hash, accuracy, lenient accuracy and
    format rate with 95 % bootstrap CIs over items, mean tokens, the truncated fraction.
    """
    from si_toolkit.backends.hf import HFBackend

    items = benchmark_items(config)
    start = time.monotonic()
    backend = HFBackend(model_ref, dtype=config.dtype, trust_remote_code=trust_remote_code)
    try:
        rows = generate_items(backend, items, config, progress)
    finally:
        backend.close()
    summary = {
        "schema": EVAL_SCHEMA,
        "model": {"ref": model_ref, "name": backend.resolved.name, "path": backend.resolved.path},
        "config": asdict(config),
        "items_source": items.source,
        "item_hash": _item_hash(items.prompts),
        **summarize_items(rows, seed=config.seed),
        "seconds": round(time.monotonic() - start, 2),
    }
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "items.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------- comparison


def read_items(path: Path) -> list[dict[str, Any]]:
    """Read an items.jsonl written by `evaluate_checkpoint` (SIError naming the line if broken)."""
    path = Path(path)
    if not path.is_file():
        raise SIError(f"{path}: no such per-item results file; run `si eval CHECKPOINT --out DIR` first")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SIError(f"{path}: line {lineno}: malformed JSON ({err.msg}); rerun `si eval` to rewrite it") from None
        if isinstance(row, dict) and "graded_format" not in row and isinstance(row.get("response"), str):
            # files written before the graded metric existed: it is a function of the stored response
            row["graded_format"] = graded_format_reward(row["response"], prefill=bool(row.get("prefill", True)))
        missing = [k for k in ("id", "reference", *ITEM_METRICS) if not isinstance(row, dict) or k not in row]
        if missing:
            raise SIError(f"{path}: line {lineno}: missing field(s) {missing}; this is not an `si eval` items.jsonl")
        rows.append(row)
    if not rows:
        raise SIError(f"{path}: holds no items")
    return rows


def compare_items(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]], *, n_resamples: int = 2000,
                  seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two checkpoints on the same items: A − B for each per-item metric.

    For metric m ∈ ITEM_METRICS and item x, d(x) = m_A(x) − m_B(x);
    ``delta`` = mean_x d(x) with a paired bootstrap CI and two-sided p-value
    (`estimators.paired_comparison`), plus the 2×2 agreement counts. Items are matched by id;
    both sides must hold the same ids with the same reference answers.
    """
    by_a, by_b = {r["id"]: r for r in a}, {r["id"]: r for r in b}
    if set(by_a) != set(by_b):
        only_a, only_b = sorted(set(by_a) - set(by_b)), sorted(set(by_b) - set(by_a))
        raise SIError(f"the two results hold different items ({len(only_a)} only in A, e.g. {only_a[:3]}; "
                      f"{len(only_b)} only in B, e.g. {only_b[:3]}); evaluate both with the same --prompts/--split/--n-items")
    ids = sorted(by_a)
    differing = [i for i in ids if str(by_a[i]["reference"]) != str(by_b[i]["reference"])]
    if differing:
        raise SIError(f"items {differing[:3]} have different reference answers in A and B; they come from different prompt files")
    out: dict[str, Any] = {"schema": COMPARISON_SCHEMA, "n_items": len(ids), "metrics": {}}
    for metric in ITEM_METRICS:
        va = np.array([float(by_a[i][metric]) for i in ids])
        vb = np.array([float(by_b[i][metric]) for i in ids])
        result = paired_comparison(va, vb, n_resamples=n_resamples, seed=seed)
        binary = bool(np.all(np.isin(va, (0.0, 1.0))) and np.all(np.isin(vb, (0.0, 1.0))))
        counts = {"both": int(np.sum((va == 1) & (vb == 1))), "only_a": int(np.sum((va == 1) & (vb == 0))),
                  "only_b": int(np.sum((va == 0) & (vb == 1))), "neither": int(np.sum((va == 0) & (vb == 0)))}
        out["metrics"][metric] = {
            "a": float(va.mean()), "b": float(vb.mean()), "delta": result.delta,
            "delta_ci": result.ci.to_list(), "p_value": result.p_value, "p_at_floor": result.p_at_floor,
            # the 2×2 agreement counts mean something only for 0/1 metrics (graded_format is in [0, 1])
            **(counts if binary else dict.fromkeys(counts)),
        }
    return out
