"""Disk full, permission denied and Ctrl-C: a clear message, a non-zero exit, and a run folder
that stays valid and resumes to exactly the rows of an uninterrupted run."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import si_toolkit.rank.runs as runs
from si_toolkit.backends.hf import HFBackend
from si_toolkit.cli import app

runner = CliRunner()
SET = "mode: alternatives\nprinciples:\n  - id: a\n    text: Talk like a pirate.\n  - id: b\n    text: Talk like a butler.\n"


def _args(tiny_model_dir: Path, tmp_path: Path, out: str) -> list[str]:
    (tmp_path / "set.yaml").write_text(SET)
    return ["rank", str(tmp_path / "set.yaml"), "--model", str(tiny_model_dir), "--dtype", "float32",
            "--n-prompts", "9", "--max-new-tokens", "8", "--out", str(tmp_path / out), "--quiet", "--no-report"]


@pytest.fixture()
def reference(tiny_model_dir: Path, tmp_path: Path) -> Path:
    assert runner.invoke(app, _args(tiny_model_dir, tmp_path, "ref")).exit_code == 0
    return tmp_path / "ref"


def _same_tables(run: Path, ref: Path) -> None:
    for table in ("samples.parquet", "scores.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run / table), pd.read_parquet(ref / table))


def test_disk_full_mid_run_then_resume(tiny_model_dir, tmp_path, reference, monkeypatch) -> None:
    real_write, calls = runs.atomic_write_bytes, {"n": 0}

    def full_disk(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th shard write hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(runs, "atomic_write_bytes", full_disk)
    result = runner.invoke(app, _args(tiny_model_dir, tmp_path, "run"))
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "rerun the same command" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setattr(runs, "atomic_write_bytes", real_write)
    assert runner.invoke(app, _args(tiny_model_dir, tmp_path, "run")).exit_code == 0
    _same_tables(tmp_path / "run", reference)


def test_ctrl_c_during_scoring_then_resume(tiny_model_dir, tmp_path, reference, monkeypatch) -> None:
    real_score = HFBackend.score

    def interrupted(self, requests):
        raise KeyboardInterrupt

    monkeypatch.setattr(HFBackend, "score", interrupted)
    result = runner.invoke(app, _args(tiny_model_dir, tmp_path, "run"))
    assert result.exit_code == 130 and "interrupted" in result.output and "resume" in result.output
    assert (tmp_path / "run/samples.parquet").is_file()  # sampling had finished and is kept
    monkeypatch.setattr(HFBackend, "score", real_score)
    assert runner.invoke(app, _args(tiny_model_dir, tmp_path, "run")).exit_code == 0
    _same_tables(tmp_path / "run", reference)


def test_permission_denied_output_folder(tiny_model_dir, tmp_path) -> None:
    args = _args(tiny_model_dir, tmp_path, "unused")
    args[args.index("--out") + 1] = "/sys/si-toolkit-run"  # not writable, even for root
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "/sys/si-toolkit-run" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------- si train: the same contract


def _train_args(tiny_model_dir: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "set.yaml").write_text(SET)
    return ["train", "--principles", str(tmp_path / "set.yaml"), "--model", str(tiny_model_dir), "--out",
            str(tmp_path / "train"), "--quiet", "--set", "max_steps=2", "--set", "prompts_per_step=2",
            "--set", "num_generations=4", "--set", "max_completion_length=6", "--set", "n_prompts=4",
            "--set", "tensorboard=false", "--preset", "grpo"]


def test_train_disk_full_exits_1_naming_the_path(tiny_model_dir, tmp_path, monkeypatch) -> None:
    import si_toolkit.train.trainer as trainer

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "train" / "checkpoint-2"))

    monkeypatch.setattr(trainer, "save_checkpoint", full_disk)
    result = runner.invoke(app, _train_args(tiny_model_dir, tmp_path))
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "checkpoint-2" in result.output
    assert "Traceback" not in result.output


def test_train_ctrl_c_exits_130_with_the_resume_hint(tiny_model_dir, tmp_path, monkeypatch) -> None:
    import si_toolkit.train.trainer as trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_step", interrupted)
    result = runner.invoke(app, _train_args(tiny_model_dir, tmp_path))
    assert result.exit_code == 130
    assert "interrupted" in result.output and "rerun the same command to resume" in result.output


@pytest.mark.parametrize("command", [["train", "--principles", "missing.yaml"], ["rank", "missing.yaml"]],
                         ids=["train", "rank"])
def test_debug_shows_the_traceback_of_a_user_error(command, tmp_path, monkeypatch) -> None:
    from si_toolkit.errors import SIError

    monkeypatch.chdir(tmp_path)
    plain = runner.invoke(app, command)
    assert plain.exit_code == 2 and "missing.yaml" in plain.output and "Traceback" not in plain.output
    debug = runner.invoke(app, ["--debug", *command])
    assert isinstance(debug.exception, SIError) and "missing.yaml" in str(debug.exception)
