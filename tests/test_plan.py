"""`si plan` on synthetic pilot run folders whose per-prompt SI is set by construction."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from si_toolkit import estimators as est
from si_toolkit.cli import app
from si_toolkit.errors import SIError
from si_toolkit.rank.plan import MIN_RUN_PROMPTS, PlanConfig, plan_run, read_pilot
from si_toolkit.rank.runs import MANIFEST_SCHEMA
from si_toolkit.tensors import score_tensor

runner = CliRunner()
Z95 = NormalDist().inv_cdf(0.975)  # 1.95996...
FAST = {"simulations": 40, "n_bootstrap": 500}


def _gap(si: float) -> float:
    """The score gap d that gives one response of a K = 2 set exactly this SI.

    Scores: L[true] = −5, L[other] = −5 − d, so ℓ_col = −log(1 + e^{−d}) and
    SI = 1 + ℓ_col / log 2 = 1 − log(1 + e^{−d}) / log 2; solving, e^{−d} = 2^{1 − SI} − 1.
    """
    return -math.log(2.0 ** (1.0 - si) - 1.0)


def write_pilot(folder: Path, si: dict[str, np.ndarray]) -> Path:
    """A run folder (manifest + scores.parquet) of K = 2 sets; si[set] is (n, R) per-response SI (< 1)."""
    rows = []
    for name, values in si.items():
        for (x, r), value in np.ndenumerate(values):
            d = _gap(float(value))
            for i in (0, 1):
                for j in (0, 1):
                    cot = -5.0 if i == j else -5.0 - d
                    for span, logp, n_tokens in (("cot", cot, 3), ("answer", -1.0, 2), ("full", cot - 1.0, 5)):
                        rows.append({"set": name, "prompt_id": f"p{x:03d}", "condition": i, "variant": j,
                                     "replicate": r, "span": span, "logp_sum": logp, "n_tokens": n_tokens})
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(folder / "scores.parquet", index=False)
    n = max(v.shape[0] for v in si.values())
    manifest = {"schema": MANIFEST_SCHEMA, "config": {}, "prompts": [{"id": f"p{x:03d}"} for x in range(n)],
                "sets": {name: {"K": 2, "variant_labels": ["a", "b"], "principle_pairs": [], "mode": "alternatives"}
                         for name in si}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _rows(result: dict, **match) -> list[dict]:
    return [r for r in result["rows"] if all(r[k] == v for k, v in match.items())]


def test_pilot_values_are_the_designed_per_prompt_si(tmp_path: Path) -> None:
    design = np.random.default_rng(0).uniform(-0.5, 0.9, size=(12, 3))
    run = write_pilot(tmp_path / "run", {"s": design})
    pilot = read_pilot(run)
    np.testing.assert_allclose(pilot.values["s"], design, atol=1e-9)
    # a prompt's SI with R replicates is the mean of its single-replicate SIs (SI-SPEC §3: Î_col averages responses)
    t = score_tensor(pd.read_parquet(run / "scores.parquet"), "s", "cot", k=2)
    np.testing.assert_allclose(pilot.values["s"].mean(axis=1), est.si_per_prompt(t.L), atol=1e-12)


def test_half_width_answer_scales_like_one_over_root_n(tmp_path: Path) -> None:
    values = np.random.default_rng(1).normal(0.4, 0.2, size=(40, 1))
    run = write_pilot(tmp_path / "run", {"s": values})
    sd = float(values.std())  # the spread of the distribution the simulations draw prompts from
    answers = {}
    for w in (0.04, 0.02):
        row = plan_run(run, PlanConfig(target_half_width=w, **FAST))["rows"][0]
        assert row["status"] == "ok" and row["achieved"] <= w
        answers[w] = row["n_prompts"]
        # CLT: half-width ≈ z·sd/√n, so n ≈ (z·sd/w)² — here 94 and 376 prompts
        assert answers[w] == pytest.approx((Z95 * sd / w) ** 2, rel=0.12)
        assert row["responses"] == answers[w] * 1 * 2  # prompts × R × K
    assert answers[0.02] / answers[0.04] == pytest.approx(4.0, rel=0.12)  # half the width, four times the prompts


def test_replicates_trade_against_prompts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    # prompt effect sd 0.1, response noise sd 0.3: a second replicate nearly halves the per-prompt variance
    values = np.minimum(rng.normal(0.3, 0.1, size=(60, 1)) + rng.normal(0.0, 0.3, size=(60, 2)), 0.95)  # SI < 1
    run = write_pilot(tmp_path / "run", {"s": values})
    result = plan_run(run, PlanConfig(target_half_width=0.05, **FAST))
    one, two = (_rows(result, replicates=r)[0] for r in (1, 2))
    # prompts needed ∝ variance of a prompt's value: one random replicate vs the mean of both
    expected = float(values.var()) / float(values.mean(axis=1).var())
    assert one["n_prompts"] / two["n_prompts"] == pytest.approx(expected, rel=0.15)
    cheapest = min((one, two), key=lambda r: r["responses"])
    assert cheapest["cheapest"] and not max((one, two), key=lambda r: r["responses"])["cheapest"]
    with pytest.raises(SIError, match="has R = 2"):  # a resample cannot show what 4 replicates buy
        plan_run(run, PlanConfig(target_half_width=0.05, replicates=(4,), **FAST))


def test_separation_needs_the_prompts_a_paired_test_needs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    b = rng.uniform(-0.2, 0.2, size=(40, 1))
    a = b + rng.normal(0.12, 0.25, size=(40, 1))  # below 0.95: SI < 1
    run = write_pilot(tmp_path / "run", {"a": a, "b": b})
    row = plan_run(run, PlanConfig(separate=("a", "b"), power=0.8, simulations=200, n_bootstrap=500))["rows"][0]
    assert row["goal"] == "separate" and row["status"] == "ok" and row["achieved"] >= 0.8
    delta = (a - b)[:, 0]
    # normal approximation of a paired two-sided test: n ≈ ((z_{α/2} + z_power) · sd / mean)²
    analytic = ((Z95 + NormalDist().inv_cdf(0.8)) * delta.std() / delta.mean()) ** 2
    assert row["n_prompts"] == pytest.approx(analytic, rel=0.25)
    assert row["pilot"]["mean"] == pytest.approx(delta.mean())


def test_what_the_pilot_cannot_tell_is_said(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    small = write_pilot(tmp_path / "small", {"s": rng.normal(0.4, 0.2, size=(6, 1))})
    row = plan_run(small, PlanConfig(target_half_width=0.05, **FAST))["rows"][0]
    assert row["status"] == "pilot_too_small" and row["n_prompts"] is None and "6 prompts" in row["note"]
    values = rng.normal(0.4, 0.2, size=(30, 1))
    run = write_pilot(tmp_path / "run", {"null": np.zeros((30, 1)), "s": values, "twin": values.copy()})
    result = plan_run(run, PlanConfig(target_half_width=0.05, separate=("s", "twin"), **FAST))
    null = _rows(result, set="null")[0]
    assert null["status"] == "no_variation" and null["n_prompts"] is None
    assert _rows(result, goal="separate")[0]["status"] == "no_variation"  # identical sets: ΔSI is 0 everywhere
    capped = plan_run(run, PlanConfig(target_half_width=0.001, max_prompts=60, **FAST))
    assert _rows(capped, set="s")[0]["status"] == "unreachable" and "--max-prompts" in _rows(capped, set="s")[0]["note"]
    easy = plan_run(run, PlanConfig(target_half_width=0.5, **FAST))
    assert _rows(easy, set="s")[0]["n_prompts"] == MIN_RUN_PROMPTS  # never fewer than the few-prompts limit


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({}, "--target-half-width"), ({"target_half_width": -1.0}, "positive"), ({"separate": ("a", "a")}, "two different"),
     ({"target_half_width": 0.1, "power": 1.0}, "--power"), ({"target_half_width": 0.1, "simulations": 5}, "--simulations")],
    ids=["no-goal", "negative-width", "same-set", "power-1", "few-simulations"],
)
def test_plan_config_refuses_bad_settings(kwargs: dict, needle: str) -> None:
    with pytest.raises(SIError, match=needle):
        PlanConfig(**kwargs)


def test_si_plan_prints_and_jsons_the_same_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    run = write_pilot(tmp_path / "run", {"alpha": rng.uniform(0.0, 0.9, size=(24, 1)),
                                          "beta": rng.uniform(-0.2, 0.6, size=(24, 1))})
    args = ["plan", str(run), "--target-half-width", "0.1", "--separate", "alpha", "beta", "--simulations", "40",
            "--n-bootstrap", "500"]
    data = json.loads(runner.invoke(app, [*args, "--json"], catch_exceptions=False).stdout)
    assert data["schema"] == "si-toolkit/plan/v1" and len(data["rows"]) == 3
    assert data["settings"]["separate"] == ["alpha", "beta"] and data["settings"]["target_half_width"] == 0.1
    table = runner.invoke(app, args, catch_exceptions=False)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    for row in data["rows"]:
        name = row["set"] if row["versus"] is None else f"{row['set']} vs"
        line = next(x for x in lines if name in x and f"{row['target']:g}" in x)
        assert f" {row['n_prompts']} " in line and f" {row['responses']} " in line and f"{row['achieved']:.3f}" in line


@pytest.mark.parametrize(
    ("extra", "needle"),
    [([], "nothing to plan"), (["--separate", "alpha", "gamma"], "its sets are ['alpha', 'beta']"),
     (["--target-half-width", "0.1", "--replicates", "2"], "has R = 1")],
    ids=["no-goal", "unknown-set", "replicates-beyond-pilot"],
)
def test_si_plan_bad_input_exits_2_with_one_line(tmp_path: Path, extra: list[str], needle: str) -> None:
    rng = np.random.default_rng(6)
    run = write_pilot(tmp_path / "run", {"alpha": rng.uniform(0.0, 0.9, size=(12, 1)),
                                          "beta": rng.uniform(-0.2, 0.6, size=(12, 1))})
    result = runner.invoke(app, ["plan", str(run), *extra])
    assert result.exit_code == 2 and needle in result.output.replace("\n", " ") and "Traceback" not in result.output
    missing = runner.invoke(app, ["plan", str(tmp_path / "nowhere"), "--target-half-width", "0.1"])
    assert missing.exit_code == 2 and "not a run folder" in missing.output
