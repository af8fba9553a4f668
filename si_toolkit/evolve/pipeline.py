"""`evolve()`: check the inputs, run or resume the search, compare the best with the seed on the
held-out prompts, and write best.yaml, lineage.jsonl, result.json and the report.

The output folder holds manifest.json (the config and input hashes: a rerun with another config
is refused, naming the differing keys), cache/ (every sample, score and proposal), and the
files above. Rerunning the same command replays the finished work from the cache without model
calls and continues; the outputs are rewritten atomically.
"""

from __future__ import annotations

import dataclasses

import datetime as dt
import importlib.metadata
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from si_toolkit.backends import Backend, SamplingConfig, make_backend
from si_toolkit.errors import SIError
from si_toolkit.evolve.cache import EvalCache
from si_toolkit.evolve.candidate import evolved_name
from si_toolkit.evolve.config import EvolveConfig, Inputs, check_budget, load_inputs
from si_toolkit.evolve.fidelity import admission
from si_toolkit.evolve.lineage import LINEAGE_FILE, lineage_frame, make_record, write_lineage
from si_toolkit.evolve.measure import Budget, Evaluator
from si_toolkit.evolve.proposer import Proposer
from si_toolkit.evolve.search import SEED_ID, SearchOutcome, SearchSettings, run_search
from si_toolkit.evolve.verdict import flags_for, held_out_numbers, verdict_line
from si_toolkit.principles import PrincipleSet, principle_set_from_mapping
from si_toolkit.rank import config_diff
from si_toolkit.safeio import atomic_write_json, atomic_write_text

__all__ = ["EvolveResult", "evolve", "MANIFEST_SCHEMA"]

MANIFEST_SCHEMA = "si-toolkit/evolve-manifest/v1"
RESULT_SCHEMA = "si-toolkit/evolve-result/v1"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EvolveResult:
    """What `evolve` returns: `lineage` has one row per measured candidate."""

    out_dir: Path
    best_path: Path
    best: PrincipleSet
    verdict: str
    lineage: pd.DataFrame
    summary: dict[str, Any]  # the result.json content


def _config_from(options: dict[str, Any]) -> EvolveConfig:
    known = {f.name for f in dataclasses.fields(EvolveConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SIError(f"evolve: unknown option(s) {unknown}; the options are {sorted(known)}")
    return EvolveConfig(**options)


class _Backends:
    """The policy backend and the proposer's, built on first use and closed at the end."""

    def __init__(self, config: EvolveConfig, given: Backend | None) -> None:
        self.config = config
        self.main: Backend | None = given
        self.other: Backend | None = None
        self._owned: list[Backend] = []

    def policy(self) -> Backend:
        if self.main is None:
            self.main = make_backend(self.config.backend, self.config.model, dtype=self.config.dtype)
            self._owned.append(self.main)
        return self.main

    def proposer(self) -> Backend:
        if self.config.proposer == self.config.model:
            return self.policy()
        if self.other is None:
            self.other = make_backend(self.config.backend, self.config.proposer, dtype=self.config.dtype)
            self._owned.append(self.other)
        return self.other

    def close(self) -> None:
        for backend in self._owned:
            backend.close()


def _model_name(config: EvolveConfig, given: Backend | None) -> str:
    from si_toolkit.models import resolve_model

    if config.proposer not in ("none", config.model):
        resolve_model(config.proposer)  # a missing proposer model is bad input, refused before any write
    return given.model_name if given is not None else resolve_model(config.model).name


def _manifest(config: EvolveConfig, inputs: Inputs, model_name: str, seed_path: Path, command: str) -> dict[str, Any]:
    versions = {}
    for pkg in ("si-toolkit", "torch", "transformers", "numpy", "scipy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"schema": MANIFEST_SCHEMA, "command": command, "config": {**config.to_dict(), **inputs.fingerprint()},
            "model_name": model_name, "seed_set": {"path": str(seed_path), "name": inputs.seed_set.name},
            "pool": {"source": inputs.pool.source, "clauses": len(inputs.pool.clauses)} if inputs.pool else None,
            "prompts": {"selection": list(inputs.selection), "holdout": list(inputs.holdout)},
            "versions": versions, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _open_folder(out: Path, manifest: dict[str, Any]) -> None:
    """Create the folder, or reopen it when its config equals this one (else refuse, naming keys)."""
    path = out / "manifest.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SIError(f"{path}: unreadable ({err}); use another --out") from None
        if not isinstance(old, dict) or old.get("schema") != MANIFEST_SCHEMA:
            raise SIError(f"{out}: not an si evolve folder; choose another --out")
        diffs = config_diff(old.get("config", {}), manifest["config"])
        if diffs:
            raise SIError(f"{out}: this folder was made with a different config (differs in: {', '.join(diffs)}); "
                          "rerun with the same options to resume, or use another --out")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SIError(f"{out}: exists and is not an si evolve folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)


def _records(outcome: SearchOutcome, inputs: Inputs, best: str | None) -> list[dict[str, Any]]:
    """Lineage records of the measured candidates, in creation order (`infos` keeps it)."""
    user = set(inputs.user_clauses)
    return [make_record(info, outcome.results[cid], user_clauses=user, best=cid == best)
            for cid, info in outcome.infos.items() if cid in outcome.results]


def _write_best(out: Path, inputs: Inputs, outcome: SearchOutcome) -> tuple[Path, PrincipleSet]:
    best = outcome.infos[outcome.best].candidate
    seed = inputs.seed_set
    note = ("the seed as written: no admissible candidate beat it" if outcome.best == SEED_ID
            else f"candidate {outcome.best} of si evolve")
    mapping = best.to_mapping(name=evolved_name(seed.name),
                              description=f"{seed.description} (created from {seed.name}: {note})".strip())
    principle_set = principle_set_from_mapping(mapping, where=str(out / "best.yaml"), default_name=mapping["name"])
    text = (f"# Created by si evolve from the set {seed.name}; lineage.jsonl and report.html in this folder\n"
            "# say how, and how it compares with the seed on held-out prompts.\n"
            + yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True, width=100))
    atomic_write_text(out / "best.yaml", text)
    return out / "best.yaml", principle_set


def _held_out(evaluator: Evaluator, inputs: Inputs, outcome: SearchOutcome, config: EvolveConfig) -> dict[str, Any]:
    """Seed and best on the held-out prompts only (no budget: the verdict needs it)."""
    best_texts = outcome.infos[outcome.best].texts
    evaluator.budget = Budget(None)
    evaluator.fill([best_texts], inputs.holdout)
    m_best = evaluator.measure(best_texts, inputs.holdout)
    m_seed = evaluator.measure(inputs.seed.variant_texts(), inputs.holdout)
    if m_best.prompt_ids != m_seed.prompt_ids:
        raise RuntimeError("held-out tensors of the seed and the best cover different prompts")
    return held_out_numbers(m_best, m_seed, admission(m_best, config.tolerance), n_bootstrap=config.n_bootstrap,
                            bootstrap_seed=config.seed)


def evolve(principles: Path | str, *, pool: Path | str | None = None, config: EvolveConfig | None = None,
           budget_minutes: float | None = None, out: Path | str | None = None, backend: Backend | None = None,
           progress: Progress | None = None, command: str | None = None, **options: Any) -> EvolveResult:
    """Search for a principle set with a higher held-out SI than `principles` (SI-SPEC §7).

    `config` holds every option that changes results (EvolveConfig), or give them as keywords
    with the command line's names (``population=8, generations=4, proposer="embedded"``, ...;
    `si evolve --help`); `budget_minutes` bounds the
    search (the held-out comparison after it always runs); `backend` is an already-built
    Backend to sample and score with (else one is built from config.model on first need).
    Writes into `out` (default reports/evolve-<set>) and resumes a folder made by the same call.
    """
    if config is not None and options:
        raise SIError(f"give the options either as config=EvolveConfig(...) or as keywords, not both: {sorted(options)}")
    config = config or _config_from(options)
    check_budget(budget_minutes)
    say = progress or (lambda _: None)
    seed_path = Path(principles)
    inputs = load_inputs(seed_path, config, Path(pool) if pool is not None else None)
    model_name = _model_name(config, backend)
    out_dir = Path(out) if out is not None else Path("reports") / f"evolve-{inputs.seed_set.name}"
    command = command or f"si evolve {seed_path}"
    _open_folder(out_dir, _manifest(config, inputs, model_name, seed_path, command))
    start = time.monotonic()
    backends = _Backends(config, backend)
    try:
        budget = Budget(budget_minutes)
        cache = EvalCache(out_dir / "cache").load()
        sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, seed=config.seed)  # T=1, untruncated
        evaluator = Evaluator(cache=cache, prompts=inputs.prompts, seed_texts=inputs.seed.variant_texts(),
                              sampling=sampling, prefill=config.prefill, backend=backends.policy, budget=budget)
        rewriter = None if config.proposer == "none" else Proposer(
            backends.proposer, config.proposer, cache, budget)
        settings = SearchSettings(population=config.population, generations=config.generations,
                                  selection=inputs.selection, tolerance=config.tolerance, seed=config.seed,
                                  n_bootstrap=config.n_bootstrap)
        outcome = run_search(settings, evaluator, inputs.seed, inputs.insertable, rewriter=rewriter, progress=say,
                             on_generation=lambda o: write_lineage(out_dir / LINEAGE_FILE, _records(o, inputs, None)))
        search_seconds = time.monotonic() - start
        say(f"held-out comparison on {len(inputs.holdout)} prompts: seed vs {outcome.best}")
        held_out = _held_out(evaluator, inputs, outcome, config)
    finally:
        backends.close()
    records = _records(outcome, inputs, outcome.best)
    write_lineage(out_dir / LINEAGE_FILE, records)
    best_path, best_set = _write_best(out_dir, inputs, outcome)
    summary = _summary(outcome, inputs, config, held_out, records, evaluator,
                       {"search": round(search_seconds, 1), "total": round(time.monotonic() - start, 1)})
    atomic_write_json(out_dir / "result.json", summary)
    from si_toolkit.evolve.report import write_report

    write_report(out_dir)
    return EvolveResult(out_dir, best_path, best_set, summary["verdict"], lineage_frame(records), summary)


def _summary(outcome: SearchOutcome, inputs: Inputs, config: EvolveConfig, held_out: dict[str, Any],
             records: list[dict[str, Any]], evaluator: Evaluator, seconds: dict[str, float]) -> dict[str, Any]:
    best_record = next(r for r in records if r["id"] == outcome.best) if outcome.results else None
    summary = {
        "schema": RESULT_SCHEMA, "best": outcome.best, "best_on_all_selection_prompts": outcome.best_on_all_prompts,
        "stopped_by_budget": outcome.stopped, "candidates": len(records), "generations": outcome.generations,
        "selection_prompts": len(inputs.selection), "held_out": held_out,
        "best_selection": best_record["selection"] if best_record else None,
        "model_calls": dict(evaluator.model_calls), "cache": evaluator.cache.stats(), "seconds": seconds,
        "tolerance": config.tolerance,
    }
    summary["flags"] = flags_for(summary, records)
    summary["verdict"] = verdict_line(summary)
    return summary

