"""`si rank --until-decided`: prompts are added in rounds, and a set whose rank is decided stops
receiving them (SI-SPEC §5 applied as a race).

Round 0 samples and scores every set on the first n prompts (n = --n-prompts or the profile's).
Each later round takes the next `round_prompts` prompts of the prompt set's fixed order (so the
units of earlier rounds stay valid: `load_prompts` is prefix-consistent) and gives them to the
sets still undecided, until none is or --max-prompts is reached. After every round the
estimate stage runs on everything sampled so far, and a set's rank is decided when

- its rank interval has width 1 (the joint paired bootstrap over the prompts every set has), or
- it is not the leader and the CI of its ΔSI to the leader excludes 0 (paired bootstrap on the
  prompts the two share), or
- it is the leader and no other set can be first (each is below the leader by the rule above,
  or has a rank interval that excludes rank 1).

Sets then hold different numbers of prompts, always a prefix of the same order. Every
comparison stays paired: ΔSI to the leader uses the prompts the two sets share (all of a
stopped set's prompts; every prompt so far for two sets still racing), and the rank intervals
and split-half reliability use the prompts every set has, so they stop narrowing once a set
has stopped; the paired ΔSI decides the later rounds. A set's SI is its mean over its own
prompts. The race also ends when a single set is undecided: more prompts for one set alone
would be compared with no other set's. A stopped set that becomes undecided again (the leader
changed) re-enters and gets every prompt up to the current round.

The manifest records every round under `racing.rounds` (its size, the sets it sampled, then the
leader and each set's decision), and `racing.result` at the end (why the race stopped, prompts
per set, model calls against sampling every set at --max-prompts). A killed run resumes the
recorded round; decisions are a function of the (seeded) data, so a rerun ends the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

from si_toolkit.backends.base import Backend
from si_toolkit.errors import SIError
from si_toolkit.rank.runs import RunFolder, Shard, round_bounds, set_prompt_counts

__all__ = ["RANK_INTERVAL_ONE", "BELOW_LEADER", "CLEAR_LEADER", "decisions", "next_round", "model_calls",
           "run_racing"]

# Why a set stops receiving prompts: the values of `decided` in a round record (None = undecided).
RANK_INTERVAL_ONE = "rank_interval"  # its rank interval has width 1: its place is decided
BELOW_LEADER = "below_leader"  # the CI of its ΔSI to the leader excludes 0: it is not first
CLEAR_LEADER = "clear_leader"  # it leads and no other set is tied with it: it is first


def decisions(ranking: Sequence[Mapping[str, Any]]) -> dict[str, str | None]:
    """set -> why its rank is decided, or None, from the `ranking` rows of estimates.json.

    Uses only numbers the estimate stage computed (rank_interval, tied_with_leader); see the
    module docstring for the three rules.
    """
    out: dict[str, str | None] = {}
    for n, row in enumerate(ranking):
        interval = row.get("rank_interval")
        if interval is not None and interval[0] == interval[1]:
            out[row["set"]] = RANK_INTERVAL_ONE
        elif n > 0 and not row["tied_with_leader"]:
            out[row["set"]] = BELOW_LEADER
        else:
            out[row["set"]] = None
    if ranking and out[ranking[0]["set"]] is None and all(_not_first(row) for row in ranking[1:]):
        out[ranking[0]["set"]] = CLEAR_LEADER
    return out


def _not_first(row: Mapping[str, Any]) -> bool:
    """A set other than the leader cannot be first: its ΔSI to the leader excludes 0, or its rank
    interval excludes rank 1."""
    interval = row.get("rank_interval")
    return not row["tied_with_leader"] or (interval is not None and interval[0] > 1)


def _racing(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return dict(manifest.get("racing") or {"rounds": []})


def next_round(manifest: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The next round to play as a manifest record, or (None, why the race is over)."""
    bounds = round_bounds(dict(manifest))
    rounds = _racing(manifest)["rounds"]
    if not rounds:
        return {"round": 1, "n_prompts": bounds[0], "sets": list(manifest["sets"]), "status": "planned"}, ""
    decided = rounds[-1]["decided"]
    undecided = [name for name in manifest["sets"] if decided.get(name, RANK_INTERVAL_ONE) is None]
    if not undecided:
        return None, "every set is decided"
    if len(undecided) == 1:
        return None, (f"only {undecided[0]} is undecided, and prompts for one set alone would be "
                      "compared with no other set's")
    if len(rounds) >= len(bounds):
        return None, f"--max-prompts {bounds[-1]} reached with {len(undecided)} sets undecided"
    return {"round": len(rounds) + 1, "n_prompts": bounds[len(rounds)], "sets": undecided, "status": "planned"}, ""


def model_calls(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled sequences (n·K·R per set) and scored (response, condition) pairs (n·K²·R per
    set) of the run, against the same run with every set at --max-prompts; ratio = the run's
    total calls (sequences + pairs) over the fixed run's."""
    counts = set_prompt_counts(dict(manifest))
    top = round_bounds(dict(manifest))[-1]
    r = int(manifest["config"]["sampling"].get("replicates", 1))
    ks = {name: int(meta["K"]) for name, meta in manifest["sets"].items()}
    seqs = sum(counts[s] * k * r for s, k in ks.items())
    pairs = sum(counts[s] * k * k * r for s, k in ks.items())
    fixed_seqs = sum(top * k * r for k in ks.values())
    fixed_pairs = sum(top * k * k * r for k in ks.values())
    return {"sampled_sequences": seqs, "scored_pairs": pairs, "fixed_sampled_sequences": fixed_seqs,
            "fixed_scored_pairs": fixed_pairs, "ratio": (seqs + pairs) / (fixed_seqs + fixed_pairs)}


class _Model:
    """The backend, built only when some unit needs it, and closed at the end if built here."""

    def __init__(self, run: RunFolder, backend: Backend | None, trust_remote_code: bool) -> None:
        self.run, self.backend, self.trust_remote_code, self.owned = run, backend, trust_remote_code, False

    def get(self) -> Backend:
        if self.backend is None:
            from si_toolkit.rank.pipeline import run_backend

            self.backend = run_backend(self.run, trust_remote_code=self.trust_remote_code)
            self.owned = True
        return self.backend

    def close(self) -> None:
        if self.owned and self.backend is not None:
            self.backend.close()


def _update(run: RunFolder, change: Callable[[dict[str, Any]], None]) -> None:
    """Read the manifest, change its `racing` block, write it back atomically."""
    manifest = run.read_manifest()
    racing = _racing(manifest)
    change(racing)
    manifest["racing"] = racing
    run.write_manifest(manifest)


def _play_round(run: RunFolder, model: _Model, progress: Any, label: str) -> dict[str, Any]:
    """Sample and score the units the recorded round added, estimate, record the decisions."""
    from si_toolkit.rank.pipeline import estimate_stage, sample_stage, score_stage, units_left

    for stage, work in (("sample", sample_stage), ("score", score_stage)):
        left = units_left(run, stage, Shard())
        backend = model.get() if left else None
        name = {"sample": "sampling", "score": "scoring"}[stage]
        with (progress(f"{label}: {name}", left) if progress else nullcontext(None)) as advance:
            if not work(run, backend, Shard(), advance):  # type: ignore[arg-type]  # None only when nothing is left
                raise SIError(f"{run.path}: {stage} did not complete; rerun the same `si rank` command")
    estimates = estimate_stage(run.path)
    decided = decisions(estimates["ranking"])

    def record(racing: dict[str, Any]) -> None:
        racing["rounds"][-1].update(status="done", leader=estimates["ranking"][0]["set"], decided=decided)

    _update(run, record)
    return estimates


def run_racing(run: RunFolder, *, backend: Backend | None = None, trust_remote_code: bool = False,
               progress: Any = None) -> dict[str, Any]:
    """Play (or resume) the race of a run folder made with `config.racing`; returns the estimates.

    backend: a ready backend to use; None builds the one the manifest records, only if some unit
    still needs a model. progress: a pipeline.ProgressFactory, or None.
    """
    if not run.read_manifest()["config"].get("racing"):
        raise SIError(f"{run.path}: not a --until-decided run (manifest config.racing is empty); use `si rank`")
    model = _Model(run, backend, trust_remote_code)
    estimates = None
    try:
        while True:
            manifest = run.read_manifest()
            rounds = _racing(manifest)["rounds"]
            if not rounds or rounds[-1]["status"] == "done":  # else: resume the recorded round
                planned, stop = next_round(manifest)
                if planned is None:
                    break
                _update(run, _appender(planned))
                rounds = [*rounds, planned]
            label = f"round {len(rounds)} of at most {len(round_bounds(manifest))}"
            estimates = _play_round(run, model, progress, label)
    finally:
        model.close()
    if estimates is None:  # the race had ended before this call: nothing sampled, same estimates
        from si_toolkit.rank.pipeline import estimate_stage

        estimates = estimate_stage(run.path)
    finished = run.read_manifest()
    result = {"stopped": stop, "rounds": len(_racing(finished)["rounds"]), "prompts": set_prompt_counts(finished),
              "model_calls": model_calls(finished)}
    _update(run, lambda racing: racing.update(result=result))
    return estimates


def _appender(record: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def append(racing: dict[str, Any]) -> None:
        racing.setdefault("rounds", []).append(record)

    return append
