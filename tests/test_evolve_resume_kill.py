"""Crash safety of `si evolve`: killed with SIGKILL at random points, then rerun with the same
command, it ends with exactly the lineage.jsonl and best.yaml of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from kill_points import kill_at_points

SEED = ("mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate. Say arr.\n"
        "  - id: butler\n    text: Talk like a butler. Say indeed.\n")
POOL = "Be brief.\nUse numbers.\nThank the person.\n"


def _command(model: Path, seed: Path, pool: Path, prompts: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "si_toolkit", "evolve", str(seed), "--pool", str(pool), "--prompts", str(prompts),
            "--model", str(model), "--dtype", "float32", "--population", "3", "--generations", "2",
            "--selection-prompts", "8", "--holdout-prompts", "4", "--max-new-tokens", "8", "--out", str(out),
            "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _shards(out: Path) -> int:
    return len(list((out / "cache").glob("*.parquet"))) if (out / "cache").is_dir() else 0


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path) -> None:
    seed, pool, prompts = tmp_path / "seed.yaml", tmp_path / "pool.txt", tmp_path / "prompts.jsonl"
    seed.write_text(SEED)
    pool.write_text(POOL)
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus {i}?"}) + "\n"
                               for i in range(12)))
    ref = tmp_path / "ref"
    subprocess.run(_command(tiny_model_dir, seed, pool, prompts, ref), env=_env(), check=True, capture_output=True)
    total = _shards(ref)
    assert total >= 6

    out = tmp_path / "killed"
    rng = random.Random(2024)
    kill_after = sorted(rng.sample(range(1, total - 1), 3))
    # kill once at least k shards exist (progress > k − 1)
    kills = kill_at_points(_command(tiny_model_dir, seed, pool, prompts, out), _env(), lambda: _shards(out),
                           [k - 1 for k in kill_after], rng, max_delay=0.3)
    assert kills >= 2
    result = subprocess.run(_command(tiny_model_dir, seed, pool, prompts, out), env=_env(), capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert (out / "lineage.jsonl").read_bytes() == (ref / "lineage.jsonl").read_bytes()
    assert (out / "best.yaml").read_bytes() == (ref / "best.yaml").read_bytes()
    verdict = json.loads((ref / "result.json").read_text())["verdict"]
    assert result.stdout.strip().splitlines()[-1] == verdict
