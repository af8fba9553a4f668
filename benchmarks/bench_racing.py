"""`si rank --until-decided` against a run of fixed size at --max-prompts, on the shipped sets.

    .venv/bin/python benchmarks/bench_racing.py [--n-prompts 8] [--max-prompts 24]

Both runs rank every `principles/*.yaml` set with the embedded model at the quick profile's
lengths (48 new tokens, R = 1, bf16, seed 0, prompts from builtin:mixed), each into a fresh
folder: the race starts with --n-prompts prompts per set and adds as many per round up to
--max-prompts; the baseline gives every set --max-prompts prompts. Measured within one run:

* the leader of each and whether it is decided (the race's rules applied to each run's
  estimates: `si_toolkit.rank.racing.decisions`), and whether the two leader decisions agree;
* model calls, counted from the run folders: sampled sequences (rows of samples.parquet) plus
  scored (response, condition) pairs (rows of scores.parquet for one span); the target is a
  ratio race / baseline ≤ 0.5;
* wall time of each run (a shared machine makes this noisy; the calls ratio is the measure).

Prints the ratio last; one JSON line goes to results.jsonl.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common


def _calls(run: Path) -> dict[str, int]:
    import pandas as pd

    samples = pd.read_parquet(run / "samples.parquet", columns=["set"])
    scores = pd.read_parquet(run / "scores.parquet", columns=["set", "span"])
    return {"sampled_sequences": len(samples), "scored_pairs": int((scores["span"] == "cot").sum())}


def _leader(estimates: dict) -> tuple[str, str | None]:
    from si_toolkit.rank.racing import decisions

    leader = estimates["ranking"][0]["set"]
    return leader, decisions(estimates["ranking"])[leader]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-prompts", type=int, default=8, help="prompts in the first round and added per round")
    parser.add_argument("--max-prompts", type=int, default=24, help="the race's limit and the baseline's size")
    parser.add_argument("--model", default="embedded", help="embedded (the recorded numbers) or a model folder")
    parser.add_argument("--out", type=Path, default=None, help="folder for the two runs (default: a temp folder)")
    args = parser.parse_args()

    import si_toolkit as si

    sets = sorted(str(p) for p in (common.ROOT / "principles").glob("*.yaml"))
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-racing-"))
    options = {"profile": "quick", "seed": 0, "dtype": "bfloat16"}
    start = time.perf_counter()
    race = si.rank(sets, "builtin:mixed", args.model, n_prompts=args.n_prompts, max_prompts=args.max_prompts,
                   until_decided=True, out=root / "race", **options)
    race_s = time.perf_counter() - start
    start = time.perf_counter()
    fixed = si.rank(sets, "builtin:mixed", args.model, n_prompts=args.max_prompts, out=root / "fixed",
                    report=False, **options)
    fixed_s = time.perf_counter() - start

    race_calls, fixed_calls = _calls(race.run_dir), _calls(fixed.run_dir)
    race_leader, race_decision = _leader(race.estimates)
    fixed_leader, fixed_decision = _leader(fixed.estimates)
    ratio = sum(race_calls.values()) / sum(fixed_calls.values())
    result = {
        "model": args.model, "sets": len(sets), "n_prompts": args.n_prompts, "max_prompts": args.max_prompts,
        "max_new_tokens": 48, "replicates": 1, "dtype": "bfloat16", "runs": str(root),
        "race_rounds": [r["n_prompts"] for r in race.racing["rounds"]],
        "race_stopped": race.racing["result"]["stopped"],
        "race_prompts": race.racing["result"]["prompts"],
        "race_decisions": race.racing["rounds"][-1]["decided"],
        "race_leader": race_leader, "race_leader_decision": race_decision,
        "fixed_leader": fixed_leader, "fixed_leader_decision": fixed_decision,
        "same_leader": race_leader == fixed_leader,
        "same_leader_decision": race_leader == fixed_leader and (race_decision is None) == (fixed_decision is None),
        "race_calls": race_calls, "fixed_calls": fixed_calls,
        "race_calls_recorded": race.racing["result"]["model_calls"],
        "race_s": race_s, "fixed_s": fixed_s, "time_ratio": race_s / fixed_s,
        "race_order": [e["set"] for e in race.estimates["ranking"]],
        "fixed_order": [e["set"] for e in fixed.estimates["ranking"]],
        "calls_ratio": ratio,
    }
    common.record("racing", result)
    print(f"leader: race {race_leader} ({race_decision or 'undecided'}), fixed {fixed_leader} "
          f"({fixed_decision or 'undecided'}); same leader decision: {result['same_leader_decision']}")
    print(f"model calls, race / fixed at {args.max_prompts} prompts: {sum(race_calls.values()):,} / "
          f"{sum(fixed_calls.values()):,} = {ratio:.3f} (target <= 0.5)")


if __name__ == "__main__":
    main()
