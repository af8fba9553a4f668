"""Rank principle sets from Python, as a notebook would (the test suite runs this file).

    .venv/bin/python examples/quickstart.py                  # embedded model, about a minute on a CPU
    .venv/bin/python examples/quickstart.py --n-prompts 24   # tighter intervals, slower
"""

from __future__ import annotations

import argparse
from pathlib import Path

import si_toolkit as si

HERE = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--n-prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", default="reports/quickstart")
    args = parser.parse_args()

    # Principle sets: shipped files, and one written inline (no temporary file needed).
    tone = si.PrincipleSet.from_dict({
        "name": "tone", "mode": "alternatives",
        "principles": [{"id": "warm", "text": "Be warm and encouraging; acknowledge how the user feels."},
                       {"id": "terse", "text": "Be terse: give only the answer, no pleasantries."}],
    })
    sets = [HERE / "principles" / "strong-control.yaml", HERE / "principles" / "null-control.yaml", tone]
    # Prompts: records in memory (a DataFrame with a `prompt` column works too).
    prompts = si.PromptSet.from_records([
        {"id": "tea", "prompt": "How do I make a good cup of tea?"},
        {"id": "sum", "prompt": "What is 17 plus 25?"},
        {"id": "late", "prompt": "My train is late and I will miss my meeting. What should I do?"},
        {"id": "plants", "prompt": "Why do plants need sunlight?"},
        {"id": "gift", "prompt": "Suggest a gift for a friend who likes hiking."},
        {"id": "split", "prompt": "Three friends share a 45 euro bill equally. How much does each pay?"},
    ])

    ranking = si.rank(sets, prompts, args.model, n_prompts=args.n_prompts, max_new_tokens=args.max_new_tokens,
                      out=args.out)
    columns = ["rank", "set", "K", "si", "si_lo", "si_hi", "accuracy", "chance", "tied_with_leader"]
    print(ranking.table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"leader: {ranking.leader}; report: {ranking.report_path}")

    # Everything is in the run folder; load it back (e.g. in another notebook).
    run = si.load_run(ranking.run_dir)
    print(f"{len(run.samples)} responses, {len(run.scores)} scores")
    mean = run.estimate(critic="mean")  # another critic, nothing written
    print("SI with the length-normalised critic:", {name: round(s["si"], 3) for name, s in mean["sets"].items()})
    print("reproduce from the command line:", run.manifest["command"])


if __name__ == "__main__":
    main()
