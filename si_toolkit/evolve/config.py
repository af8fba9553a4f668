"""The evolve configuration and the checked inputs it names.

Every knob that changes results is a field of `EvolveConfig` (recorded in manifest.json; a
rerun into the same folder must match it). The time budget, output folder and display options
do not change what a finished run computes, so they are not part of it. `load_inputs` checks
everything a user can get wrong before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from si_toolkit.errors import SIError
from si_toolkit.evolve.candidate import Candidate, from_principle_set
from si_toolkit.evolve.fidelity import DEFAULT_TOLERANCE, check_tolerance
from si_toolkit.evolve.pool import Pool, load_pool, split_clauses
from si_toolkit.principles import PrincipleSet, load_principle_set
from si_toolkit.prompts import PromptSet, load_prompts, prompt_hash
from si_toolkit.safeio import read_yaml_mapping

__all__ = ["EvolveConfig", "Inputs", "load_inputs", "check_budget", "MIN_SELECTION_PROMPTS"]

MIN_SELECTION_PROMPTS = 4  # the first racing round needs a CI
MIN_HOLDOUT_PROMPTS = 2  # a paired bootstrap CI needs 2 prompts (20+ for a useful one)


@dataclass(frozen=True)
class EvolveConfig:
    """What determines an evolve run's results (defaults finish in under 30 min on 2 CPU cores)."""

    model: str = field(default="embedded", metadata={"help": "Policy that samples and scores: embedded, a model "
                                                                  "folder, or a cached HF id."})
    backend: str = field(default="hf", metadata={"help": "hf, vllm, or auto."})
    dtype: str = field(default="bfloat16", metadata={"help": "float32 or bfloat16."})
    prompts: str = field(default="builtin:mixed", metadata={"help": "builtin:NAME or a prompt file; split into "
                                                                        "selection and held-out prompts."})
    selection_prompts: int = field(default=48, metadata={"help": "Prompts the search may use (N)."})
    holdout_prompts: int = field(default=48, metadata={"help": "Prompts only the final comparison uses (M)."})
    population: int = field(default=8, metadata={"help": "New candidates per generation."})
    generations: int = field(default=4, metadata={"help": "Generations of the search."})
    proposer: str = field(default="none", metadata={"help": "none (pool operators only), embedded, or a model "
                                                                "that rewrites principles."})
    tolerance: float = field(default=DEFAULT_TOLERANCE, metadata={"help": "Accuracy points a candidate's seed "
                                                                          "fidelity may fall below the seed's own."})
    max_new_tokens: int = field(default=48, metadata={"help": "Tokens per response (the quick profile's 48)."})
    seed: int = field(default=0, metadata={"help": "Seed of the prompt split, the operators, sampling and the "
                                                       "bootstrap."})
    prefill: bool = field(default=True, metadata={"help": "Prefill the assistant turn with <think>."})
    n_bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples per CI."})

    def __post_init__(self) -> None:
        for name, low in (("selection_prompts", MIN_SELECTION_PROMPTS), ("holdout_prompts", MIN_HOLDOUT_PROMPTS),
                          ("population", 1), ("generations", 1), ("max_new_tokens", 1), ("n_bootstrap", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise SIError(f"--{name.replace('_', '-')} {value}: must be an integer >= {low}")
        check_tolerance(self.tolerance)
        if not self.proposer.strip():
            raise SIError("--proposer is empty: give none, embedded, or a model folder / cached HF id")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_budget(minutes: float | None) -> float | None:
    if minutes is not None and not minutes > 0:
        raise SIError(f"--budget-minutes {minutes}: must be > 0 (omit it for no limit)")
    return minutes


@dataclass(frozen=True)
class Inputs:
    """The checked inputs of a run."""

    seed_set: PrincipleSet
    seed: Candidate
    pool: Pool | None
    user_clauses: tuple[str, ...]  # every clause a pool operator may use: the seed's, then the pool's
    insertable: tuple[str, ...]  # the clauses add/swap draw from: seed principle texts, then the pool
    prompts: dict[str, str]  # id -> text, selection and held-out prompts only
    selection: tuple[str, ...]
    holdout: tuple[str, ...]
    prompt_hash: str

    def fingerprint(self) -> dict[str, Any]:
        """Hashes of the inputs, recorded with the config (any change refuses a resume)."""
        return {"seed_set_hash": _sha([v.text for v in self.seed_set.variants]),
                "pool_hash": self.pool.sha if self.pool else None, "prompt_hash": self.prompt_hash}


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _split_prompts(config: EvolveConfig) -> tuple[PromptSet, tuple[str, ...], tuple[str, ...]]:
    prompts = load_prompts(config.prompts, seed=config.seed)
    n, sel, hold = len(prompts), config.selection_prompts, config.holdout_prompts
    if hold > n:
        raise SIError(f"--holdout-prompts {hold} is larger than the prompt set {config.prompts} ({n} prompts); "
                      f"use at most {n - MIN_SELECTION_PROMPTS} or add prompts")
    if sel + hold > n:
        raise SIError(f"--selection-prompts {sel} + --holdout-prompts {hold} = {sel + hold} exceed the {n} prompts "
                      f"of {config.prompts}; the two splits must be disjoint: lower one of them")
    ids = [p.id for p in prompts.prompts]
    return prompts, tuple(ids[:sel]), tuple(ids[sel:sel + hold])


def load_inputs(seed_path: Path, config: EvolveConfig, pool_path: Path | None) -> Inputs:
    """Load and check the seed set, pool and prompts; raises SIError naming what is wrong."""
    seed_path = Path(seed_path)
    seed_set = load_principle_set(seed_path)
    preamble = str(read_yaml_mapping(seed_path, "principle set").get("preamble") or "")
    seed = from_principle_set(seed_set, preamble)
    if seed.variant_texts() != tuple(v.text for v in seed_set.variants):
        raise RuntimeError(f"{seed_path}: the clause form does not rebuild the seed's variants")
    pool = load_pool(pool_path) if pool_path is not None else None
    seed_clauses = [c for slot in seed.slots() for c in seed.get(slot)]
    text_clauses = [c for k in range(len(seed.ids)) for c in seed.texts[k]]
    pool_clauses = list(pool.clauses) if pool else []
    if preamble:
        seed_clauses = split_clauses(preamble) + seed_clauses
    prompt_set, selection, holdout = _split_prompts(config)
    texts = {p.id: p.text for p in prompt_set.prompts if p.id in set(selection) | set(holdout)}
    return Inputs(seed_set=seed_set, seed=seed, pool=pool,
                  user_clauses=tuple(dict.fromkeys(seed_clauses + pool_clauses)),
                  insertable=tuple(dict.fromkeys(text_clauses + pool_clauses)), prompts=texts,
                  selection=selection, holdout=holdout, prompt_hash=prompt_hash(prompt_set))
