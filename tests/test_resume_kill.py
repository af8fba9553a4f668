"""Crash safety: `si rank` killed with SIGKILL at random points, then rerun, gives exactly the
rows of an uninterrupted run (no duplicates, nothing truncated)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
from kill_points import kill_at_points

SETS = {
    "persona": "mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate.\n  - id: butler\n    text: Talk like a butler.\n",
    "constitution": ("mode: antithesis\nprinciples:\n  - id: brief\n    text: Be brief.\n    antithesis: Be long-winded.\n"
                     "  - id: kind\n    text: Be kind.\n    antithesis: Be rude.\n"),
}


def _command(model: Path, sets: list[Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "si_toolkit", "rank", *map(str, sets), "--model", str(model), "--dtype", "float32",
            "--n-prompts", "12", "--max-new-tokens", "12", "--out", str(out), "--quiet", "--no-report"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _tables(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(run / "samples.parquet"), pd.read_parquet(run / "scores.parquet")


def _shards(run: Path) -> int:
    return len(list((run / "shards").rglob("u*.parquet"))) if (run / "shards").is_dir() else 0


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tiny_model_dir, tmp_path) -> None:
    sets = []
    for name, text in SETS.items():
        sets.append(tmp_path / f"{name}.yaml")
        sets[-1].write_text(text)
    subprocess.run(_command(tiny_model_dir, sets, tmp_path / "ref"), env=_env(), check=True, capture_output=True)
    ref_samples, ref_scores = _tables(tmp_path / "ref")
    total_units = _shards(tmp_path / "ref")  # 2 stages x 2 sets x 3 units

    run = tmp_path / "killed"
    rng = random.Random(1234)
    # Seeded kill points: after k finished shards (k increasing over the rounds) plus a random
    # delay, so a kill can land while a unit is being computed or written, in either stage.
    kill_after = sorted(rng.sample(range(total_units - 1), 3))
    kills = kill_at_points(_command(tiny_model_dir, sets, run), _env(), lambda: _shards(run), kill_after, rng,
                           max_delay=0.3)
    assert kills >= 2
    # Every shard that exists after the kills is complete: SIGKILL can only leave hidden temp files.
    for shard in (run / "shards").rglob("u*.parquet"):
        pd.read_parquet(shard)
    result = subprocess.run(_command(tiny_model_dir, sets, run), env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    samples, scores = _tables(run)
    pd.testing.assert_frame_equal(samples, ref_samples)
    pd.testing.assert_frame_equal(scores, ref_scores)
