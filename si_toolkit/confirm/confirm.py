"""`si confirm`: does a higher SI predict better training? Rank, train, evaluate, compare.

Steps (each writes into the confirmation folder, and each is skipped when its output exists,
so a killed run resumes):

1. **Rank** the sets by SI (or reuse a ranking run folder).
2. **Train** the top-k and bottom-k sets with `enigma` and a `grpo` ablation, for each seed, on
   the training split of the prompts (`evaluate.heldout_split`).
3. **Evaluate** the base model and every checkpoint on the held-out arithmetic benchmark,
   and measure **adherence**: the SI of each model on its set, on held-out prompts.
4. **Steadiness** of every training run from its metrics.jsonl.
5. **Geometry** of each enigma checkpoint against the base.
6. **Analyse**: Spearman ρ between the sets' SI and each outcome, with a bootstrap CI over
   sets; the ablation table (enigma vs grpo vs base, paired CIs). The verdict says whether the
   data supports the claim and how certain that is; with fewer than 4 sets or 2 seeds it says
   the data cannot support a correlation claim.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from si_toolkit.confirm.analysis import analyse, write_confirm_report
from si_toolkit.errors import SIError
from si_toolkit.principles import PrincipleSet, load_principle_sets
from si_toolkit.safeio import atomic_write_json, atomic_write_text

__all__ = ["ConfirmConfig", "CONFIRM_PROFILES", "run_confirm", "select_sets"]

Log = Callable[[str], None]
ALL_SETS = 10**6  # --top value meaning "every set given" (select_sets caps it at the number of sets)

# Sizes per profile. `quick` runs end to end on 2 CPU cores in well under 30 minutes and
# cannot support a claim (two sets, one seed, few steps); `cpu` is the largest design that
# finishes in under 2 hours on 2 CPU cores (every set given, 2 seeds; the calculation from
# measured step times is in docs/evaluation.md); `standard` is for a GPU host (a few GPU-hours
# for 4 sets x 3 seeds on a 1B model).
# "design" sets the defaults of --top/--bottom/--seeds ("all": every set given is trained);
# "primary" is the (outcome, contrast) the verdict tests (analysis.OUTCOMES, analysis.CONTRASTS).
CONFIRM_PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "design": {"top": 1, "bottom": 1, "seeds": 1},
        "primary": ("adherence_gain", "difference"),
        "rank": {"profile": "quick", "n_prompts": 10, "max_new_tokens": 40},
        "train": {"max_steps": 6, "prompts_per_step": 2, "max_completion_length": 40, "learning_rate": 2e-5,
                  "monitor_off_terms": False},
        "eval": {"n_items": 12, "max_new_tokens": 96, "batch_size": 12},
        "adherence": {"n_prompts": 6, "max_new_tokens": 32},
        "geometry": {"n_prompts": 6},
    },
    "cpu": {
        "design": {"top": "all", "bottom": 0, "seeds": 2},
        "primary": ("adherence_gain", "difference"),
        "rank": {"profile": "quick", "n_prompts": 16, "max_new_tokens": 48},
        # grpo runs log the SAMI and Sinkhorn terms without training on them, so KL and
        # Sinkhorn drift compare like with like; only the final checkpoint is kept, model-only.
        "train": {"max_steps": 14, "prompts_per_step": 1, "max_completion_length": 64, "learning_rate": 3e-5,
                  "warmup_steps": 2, "monitor_off_terms": True, "save_every": 0, "save_final_optimizer": False,
                  "tensorboard": False},
        "eval": {"max_new_tokens": 96, "batch_size": 24},
        "adherence": {"n_prompts": 16, "max_new_tokens": 48},
        "geometry": {"n_prompts": 6},
    },
    "standard": {
        "design": {"top": 2, "bottom": 2, "seeds": 3},
        "primary": ("accuracy_gain", "enigma"),
        "rank": {"profile": "standard"},
        "train": {"max_steps": 200, "prompts_per_step": 8, "max_completion_length": 256, "learning_rate": 1e-6},
        "eval": {"max_new_tokens": 256},
        "adherence": {"n_prompts": 64, "max_new_tokens": 256},
        "geometry": {"n_prompts": 32},
    },
}


@dataclass(frozen=True)
class ConfirmConfig:
    """What `si confirm` runs (recorded in confirm.json)."""

    model: str = field(default="embedded", metadata={"help": "Base model to rank with and train."})
    profile: str = field(default="quick", metadata={"help": "quick (CPU smoke test), cpu (CPU, < 2 h) or standard (GPU host)."})
    top: int | None = field(default=None, metadata={"help": "How many of the highest-SI sets to train (default: the profile's)."})
    bottom: int | None = field(default=None, metadata={"help": "How many of the lowest-SI sets to train (default: the profile's)."})
    seeds: int | None = field(default=None, metadata={"help": "Training seeds per set and preset (default: the profile's)."})
    ranking: str | None = field(default=None, metadata={"help": "Reuse this ranking run folder instead of ranking."})

    def __post_init__(self) -> None:
        if self.profile not in CONFIRM_PROFILES:
            raise SIError(f"--profile {self.profile!r}: use one of {list(CONFIRM_PROFILES)}")
        design = CONFIRM_PROFILES[self.profile]["design"]
        for name in ("top", "bottom", "seeds"):  # the profile fills what the user left out
            if getattr(self, name) is None:
                value = design[name]
                object.__setattr__(self, name, ALL_SETS if value == "all" else value)
        if self.top < 0 or self.bottom < 0 or self.top + self.bottom < 1:
            raise SIError(f"--top {self.top} --bottom {self.bottom}: need top + bottom >= 1, both >= 0")
        if self.seeds < 1:
            raise SIError(f"--seeds {self.seeds}: must be >= 1")


def select_sets(ranking: list[dict[str, Any]], top: int, bottom: int) -> list[str]:
    """Top-k and bottom-k set names by SI (each set once, in ranking order)."""
    names = [entry["set"] for entry in sorted(ranking, key=lambda e: e["rank"])]
    chosen = names[:top] + (names[-bottom:] if bottom else [])
    return list(dict.fromkeys(chosen))


def run_confirm(files: list[Path], config: ConfirmConfig, out: Path, *, log: Log = print) -> dict[str, Any]:
    """Run every step (resuming finished ones) and write confirm.json / confirm.md / confirm.html."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    sizes = CONFIRM_PROFILES[config.profile]
    sets = {s.name: s for s in load_principle_sets(list(files))}
    train_file, heldout_file = _write_splits(out)
    estimates = _rank(files, config, sizes, out, log)
    chosen = select_sets(estimates["ranking"], config.top, config.bottom)
    runs = [_train(sets[name], preset, seed, config, sizes, train_file, out, log)
            for name in chosen for seed in range(config.seeds) for preset in ("enigma", "grpo")]
    evals = {"base": _evaluate(config.model, "base", sizes, out, log)}
    for run in runs:
        evals[run["name"]] = _evaluate(run["checkpoint"], run["name"], sizes, out, log)
    adherence = _adherence(config, sets, chosen, runs, sizes, heldout_file, out, log)
    geometry = {name: _geometry(config.model, next(r for r in runs if r["set"] == name and r["preset"] == "enigma"),
                                sets[name], sizes, out, log) for name in chosen}
    result = analyse(config, estimates, chosen, runs, evals, adherence, geometry, primary=sizes["primary"])
    result["seconds"] = round(time.monotonic() - start, 1)
    atomic_write_json(out / "confirm.json", result)
    write_confirm_report(result, runs, out)
    return result


def _write_splits(out: Path) -> tuple[Path, Path]:
    """Training prompts and held-out prompts as files, so every step reads the same split."""
    from si_toolkit.confirm.evaluate import heldout_split
    from si_toolkit.prompts import load_prompts

    train, heldout = heldout_split(load_prompts("builtin:mixed"))
    paths = []
    for name, part in (("train-prompts.jsonl", train), ("heldout-prompts.jsonl", heldout)):
        lines = [json.dumps({"id": p.id, "prompt": p.text, **({"answer": p.answer} if p.answer else {})})
                 for p in part.prompts]
        atomic_write_text(out / name, "\n".join(lines) + "\n")
        paths.append(out / name)
    return paths[0], paths[1]


def _rank(files: list[Path], config: ConfirmConfig, sizes: dict[str, Any], out: Path, log: Log) -> dict[str, Any]:
    from si_toolkit.rank.api import rank

    if config.ranking:
        path = Path(config.ranking) / "estimates.json"
        if not path.is_file():
            raise SIError(f"--ranking {config.ranking}: no estimates.json; run `si rank` there first")
        return dict(json.loads(path.read_text()))
    log("rank: SI of every set")
    return rank(files, model=config.model, out=out / "ranking", report=False, **sizes["rank"]).estimates


def _train(principle_set: PrincipleSet, preset: str, seed: int, config: ConfirmConfig, sizes: dict[str, Any],
           train_file: Path, out: Path, log: Log) -> dict[str, Any]:
    from si_toolkit.confirm.steadiness import read_metrics, steadiness
    from si_toolkit.train.checkpoint import latest_checkpoint
    from si_toolkit.train.config import load_train_config
    from si_toolkit.train.trainer import train

    name = f"{principle_set.name}--{preset}--seed{seed}"
    folder = out / "train" / name
    K = principle_set.K
    # SAMI needs one completion per variant in every group: G a multiple of K (at least 4).
    generations = K * max(1, -(-4 // K))
    overrides = {**sizes["train"], "model": config.model, "preset": preset, "seed": seed,
                 "prompts": str(train_file), "num_generations": generations}
    final = folder / f"checkpoint-{overrides['max_steps']}"
    if not (final / "config.json").is_file():
        log(f"train: {name}")
        if folder.exists() and latest_checkpoint(folder) is None:
            shutil.rmtree(folder)  # killed before its first checkpoint: nothing to resume, start clean
        train(load_train_config(None, overrides), principle_set, folder, resume=folder.exists())
    rows = read_metrics(folder / "metrics.jsonl")
    return {"name": name, "set": principle_set.name, "preset": preset, "seed": seed, "checkpoint": str(final),
            "folder": str(folder), "steadiness": steadiness(rows).to_dict(), "rows": rows}


def _evaluate(model_ref: str, name: str, sizes: dict[str, Any], out: Path, log: Log) -> dict[str, Any]:
    from si_toolkit.confirm.evaluate import EvalConfig, evaluate_checkpoint, read_items

    folder = out / "eval" / name
    if not (folder / "summary.json").is_file():
        log(f"evaluate: {name}")
        evaluate_checkpoint(model_ref, EvalConfig(**sizes["eval"]), folder)
    return {"summary": json.loads((folder / "summary.json").read_text()), "items": read_items(folder / "items.jsonl")}


def _adherence(config: ConfirmConfig, sets: dict[str, PrincipleSet], chosen: list[str], runs: list[dict[str, Any]],
               sizes: dict[str, Any], heldout_file: Path, out: Path, log: Log) -> dict[str, Any]:
    """SI of base and trained models on each chosen set, on the same held-out prompts."""
    from si_toolkit.rank.api import rank

    def si_of(model_ref: str, names: list[str], folder: Path) -> dict[str, Any]:
        log(f"adherence: SI of {folder.name}")
        ranking = rank([sets[n] for n in names], str(heldout_file), model_ref, out=folder, dtype="float32",
                       report=False, **sizes["adherence"])
        return dict(ranking.estimates["sets"])

    result = {"base": {n: s["si"] for n, s in si_of(config.model, chosen, out / "adherence" / "base").items()}}
    for run in runs:
        result[run["name"]] = si_of(run["checkpoint"], [run["set"]], out / "adherence" / run["name"])[run["set"]]["si"]
    return result


def _geometry(base: str, run: dict[str, Any], principle_set: PrincipleSet, sizes: dict[str, Any], out: Path,
              log: Log) -> dict[str, Any]:
    from si_toolkit.confirm.geometry import GeometryConfig, analyze_geometry, write_geometry

    folder = out / "geometry" / run["name"]
    if (folder / "geometry.json").is_file():
        return dict(json.loads((folder / "geometry.json").read_text()))
    log(f"geometry: {run['name']}")
    result = analyze_geometry(base, run["checkpoint"], principle_set.path, GeometryConfig(**sizes["geometry"]))
    write_geometry(result, folder)
    return result
