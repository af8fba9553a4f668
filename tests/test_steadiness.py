"""Steadiness metrics on synthetic training curves with known answers, and metrics.jsonl reading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from si_toolkit.errors import SIError
from si_toolkit.cli.confirm import steadiness_command
from si_toolkit.confirm.steadiness import (
    collapse_step,
    curve,
    default_warmup_steps,
    drift,
    read_metrics,
    slope,
    steadiness,
    tail_mean,
    volatility,
)


def _write(path: Path, rows: list[object], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- reading


def test_read_metrics_drops_a_truncated_last_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], '{"step": 3, "lo')
    with pytest.warns(RuntimeWarning, match="line 3 is truncated"):
        rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2]


def test_read_metrics_refuses_a_corrupt_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(SIError, match="line 2: malformed JSON"):
        read_metrics(path)


def test_read_metrics_needs_an_integer_step(tmp_path: Path) -> None:
    with pytest.raises(SIError, match="line 2: expected a JSON object with an integer 'step'"):
        read_metrics(_write(tmp_path / "m.jsonl", [{"step": 1}, {"loss": 2.0}, {"step": 3}]))
    with pytest.raises(SIError, match="not found"):
        read_metrics(tmp_path / "missing.jsonl")


def test_read_metrics_keeps_the_last_row_of_a_repeated_step(tmp_path: Path) -> None:
    # a resumed run re-logs steps after its last checkpoint: the later row is the one that counts
    rows = [{"step": 1, "loss": 9.0}, {"step": 2, "loss": 9.0}, {"step": 2, "loss": 2.0}, {"step": 0, "loss": 0.0}]
    assert [(r["step"], r["loss"]) for r in read_metrics(_write(tmp_path / "m.jsonl", rows))] == [
        (0, 0.0), (1, 9.0), (2, 2.0)]


def test_curve_skips_missing_and_non_finite_values() -> None:
    rows = [{"step": 0, "kl": 1.0}, {"step": 1}, {"step": 2, "kl": None}, {"step": 3, "kl": float("nan")},
            {"step": 4, "kl": True}, {"step": 5, "kl": 2.5}]
    steps, values = curve(rows, "kl")
    assert steps.tolist() == [0.0, 5.0] and values.tolist() == [1.0, 2.5]


# ----------------------------------------------------------------------------- definitions


def test_volatility_ignores_trend_and_measures_zigzag() -> None:
    assert volatility(np.linspace(0.0, 5.0, 20)) == pytest.approx(0.0, abs=1e-12)  # steady climb: Δ constant
    # +a, −a, +a, −a, +a: differences −2a, +2a, −2a, +2a, mean 0, std 2a
    assert volatility(np.array([0.3, -0.3, 0.3, -0.3, 0.3])) == pytest.approx(0.6)
    assert volatility(np.array([1.0, 2.0])) is None


def test_slope_and_drift_of_a_line() -> None:
    steps = np.arange(10, 60, 5, dtype=float)
    values = 3.0 + 0.5 * steps
    assert slope(steps, values) == pytest.approx(0.5)
    assert drift(steps, values) == pytest.approx(0.5 * (55 - 10))  # the line's net change over the run
    assert slope(np.array([1.0]), np.array([2.0])) is None
    assert slope(np.array([1.0, 1.0]), np.array([2.0, 3.0])) is None


def test_drift_reads_the_fitted_line_not_the_noisy_end_points() -> None:
    steps = np.arange(0, 11, dtype=float)
    values = 0.1 * steps
    values[-1] += 5.0  # one outlier at the end
    # final − initial would be 6.0; the least-squares line moves far less
    assert drift(steps, values) < 4.0


def test_collapse_step_of_an_exponential_decay() -> None:
    steps = np.arange(0, 21, dtype=float)
    entropy = 2.0 * np.exp(-steps / 10.0)
    # 2 e^{−s/10} < 1  ⇔  s > 10 ln 2 ≈ 6.93, so the first logged step below half is 7
    assert collapse_step(steps, entropy, 0.5) == 7
    assert collapse_step(steps, np.full(21, 2.0), 0.5) is None
    assert collapse_step(steps, -entropy, 0.5) is None  # no relative threshold below a non-positive start
    with pytest.raises(SIError, match="collapse fraction"):
        collapse_step(steps, entropy, 1.5)


def test_warmup_and_tail_windows() -> None:
    steps = np.arange(0, 101, dtype=float)
    assert default_warmup_steps(steps) == 10.0  # ⌈0.1 · 100⌉
    assert tail_mean(steps, steps) == pytest.approx(95.0)  # mean of steps 90..100


# ----------------------------------------------------------------------------- one run


def _synthetic_run() -> list[dict[str, object]]:
    rows = []
    for s in range(101):
        rows.append({
            "step": s,
            "reward_mean": 0.01 * s + 0.1 * (-1) ** s,  # trend + zig-zag of ±0.1
            "loss": 1.0,
            "entropy": 2.0 - 0.015 * s,
            "kl": 0.001 * s,
            "frac_zero_std_groups": float(s % 2),
        })
    return rows


def test_steadiness_of_a_synthetic_run() -> None:
    result = steadiness(_synthetic_run())
    assert result.n_steps == 101 and result.warmup_steps == 10.0
    # after warm-up (steps 10..100) the differences alternate 0.01 ∓ 0.2: 90 of them, mean 0.01, std 0.2
    assert result.reward_volatility == pytest.approx(0.2)
    assert result.loss_volatility == pytest.approx(0.0)
    assert result.entropy_slope == pytest.approx(-0.015)
    assert result.entropy_collapse_step == 67  # 2 − 0.015 s < 1  ⇔  s > 66.7
    assert result.kl_drift == pytest.approx(0.1)
    assert result.sinkhorn_drift is None  # not logged (λ_OT = 0)
    assert result.zero_std_fraction == pytest.approx(50 / 101)  # odd steps of 0..100
    # steps 90..100: 0.01 · 95 + 0.1 · (6 − 5) / 11
    assert result.final_reward == pytest.approx(0.95 + 0.1 / 11)
    assert math.isclose(steadiness(_synthetic_run(), warmup_steps=0).reward_volatility or 0, 0.2)


def test_steadiness_rejects_empty_runs_and_bad_warmup() -> None:
    with pytest.raises(SIError, match="no rows"):
        steadiness([])
    with pytest.raises(SIError, match="warmup_steps"):
        steadiness(_synthetic_run(), warmup_steps=-1)


def test_steadiness_command_reads_a_run_folder(tmp_path: Path) -> None:
    _write(tmp_path / "metrics.jsonl", _synthetic_run())
    app = typer.Typer()
    app.command("steadiness")(steadiness_command)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["steadiness", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["entropy_collapse_step"] == 67
    bad = CliRunner().invoke(app, ["steadiness", str(tmp_path / "nope.jsonl")])
    assert bad.exit_code == 2 and "not found" in bad.output
