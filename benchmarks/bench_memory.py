"""Peak memory of a standard `si rank` run on the embedded model, and whether it grows with n.

    .venv/bin/python benchmarks/bench_memory.py

Runs `si rank --profile standard` (384-token responses, R = 2) twice in child processes on
the same sets, with n and 2n prompts (the profile's 200 prompts would take hours on a CPU;
memory does not depend on n, which is what the second run checks), and reads each child's
peak RSS (resource.getrusage). Stages stream unit shards to the run folder, so the ratio
should stay near 1; the absolute peak must stay below 4 GiB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import common


def peak_rss_gib(args: list[str]) -> float:
    # Each child runs alone, so RUSAGE_CHILDREN's max RSS after it is that child's peak
    # (it is a maximum over children, and the runs below grow in size).
    subprocess.run([sys.executable, "-m", "si_toolkit", *args], check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-prompts", type=int, default=4)
    args = parser.parse_args()
    sets = [str(common.ROOT / "principles" / f) for f in ("editorial-standards.yaml", "null-control.yaml")]
    with tempfile.TemporaryDirectory() as tmp:
        peaks = []
        for n in (args.n_prompts, 2 * args.n_prompts):
            peaks.append(peak_rss_gib(["rank", *sets, "--profile", "standard", "--n-prompts", str(n),
                                       "--out", str(Path(tmp) / f"n{n}"), "--quiet"]))
    result = {"profile": "standard", "n_prompts": [args.n_prompts, 2 * args.n_prompts], "peak_rss_gib": peaks,
              "ratio_2n_vs_n": peaks[1] / peaks[0]}
    common.record("memory", result)
    print(f"peak RSS {peaks[0]:.2f} GiB (n={args.n_prompts}) -> {peaks[1]:.2f} GiB (n={2 * args.n_prompts}); "
          f"ratio {result['ratio_2n_vs_n']:.2f}x")


if __name__ == "__main__":
    main()
