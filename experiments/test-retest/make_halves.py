"""Write two disjoint 16-prompt halves of the first 32 prompts of builtin:mixed (see README.md).

    PYTHONPATH=. python experiments/test-retest/make_halves.py          # (re)write prompts/*.jsonl
    PYTHONPATH=. python experiments/test-retest/make_halves.py --check  # exit 1 if a file differs

builtin:mixed alternates arithmetic and open prompts, so the halves take alternate *pairs*
(half-a: pairs 0, 2, 4, ...; half-b: pairs 1, 3, 5, ...) and each holds 8 of each kind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from si_toolkit.prompts import PromptSet, load_prompts
from si_toolkit.safeio import atomic_write_text

HERE = Path(__file__).resolve().parent
N_TOTAL = 32


def halves() -> dict[str, str]:
    prompts = load_prompts("builtin:mixed", n=N_TOTAL).prompts
    pairs = [prompts[i:i + 2] for i in range(0, N_TOTAL, 2)]
    out = {}
    for name, parity in (("half-a", 0), ("half-b", 1)):
        chosen = tuple(p for pair in pairs[parity::2] for p in pair)
        out[name] = PromptSet(name, name, chosen).to_jsonl()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the files on disk")
    args = parser.parse_args()
    differing = []
    for name, text in halves().items():
        path = HERE / "prompts" / f"{name}.jsonl"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                differing.append(path.name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        print(f"wrote {path.relative_to(HERE.parents[1])}")
    if differing:
        print("differ from make_halves.py: " + ", ".join(differing), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
