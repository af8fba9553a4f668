"""The verdict line and the flags of an evolve run (si_toolkit.evolve.verdict)."""

from __future__ import annotations

import numpy as np

from si_toolkit.evolve.fidelity import Admission
from si_toolkit.evolve.measure import Measurement
from si_toolkit.evolve.verdict import flags_for, held_out_numbers, verdict_line


def _m(si: list[float]) -> Measurement:
    n = len(si)
    return Measurement(tuple(f"p{i}" for i in range(n)), np.array(si), np.full(n, 0.9), np.array([0.9, 0.9]),
                       np.full(n, 0.95), 0.25)


def _summary(best: str, held: dict, **kw) -> dict:
    base = {"best": best, "held_out": held, "stopped_by_budget": False, "best_on_all_selection_prompts": True,
            "best_selection": {"si": 0.6, "n_prompts": 48}, "tolerance": 0.1}
    return {**base, **kw}


def test_held_out_numbers_and_verdict() -> None:
    best, seed = _m([0.5, 0.6, 0.4, 0.5] * 6), _m([0.2, 0.3, 0.3, 0.2] * 6)
    held = held_out_numbers(best, seed, Admission(True, 0.9, 0.95, None), n_bootstrap=500, bootstrap_seed=0)
    assert held["n_prompts"] == 24 and abs(held["delta_si"] - 0.25) < 1e-12
    assert 0.0 < held["delta_ci"][0] <= 0.25 <= held["delta_ci"][1]
    line = verdict_line(_summary("g1-c2", held))
    assert line.startswith("best: SI 0.50 [") and "vs seed 0.25 [" in line and "on 24 held-out prompts" in line
    assert "ΔSI +0.25 [+" in line and line.endswith("fidelity 0.90 (seed 0.95)")
    assert "\n" not in line


def test_seed_as_best_and_flags() -> None:
    same = _m([0.3, 0.1, 0.2, 0.4] * 3)
    held = held_out_numbers(same, same, Admission(True, 0.95, 0.95, None), n_bootstrap=200, bootstrap_seed=0)
    summary = _summary("seed", held, stopped_by_budget=True)
    assert verdict_line(summary).startswith("best: the seed itself")
    records = [{"id": "seed", "admissible": True}, {"id": "g0-c1", "admissible": False}]
    flags = " | ".join(flags_for(summary, records))
    for needle in ("time budget", "the seed itself", "1 candidate(s) were inadmissible", "Only 12 held-out prompts",
                   "25% of held-out responses follow"):
        assert needle in flags, needle


def test_flags_for_a_created_best() -> None:
    best, seed = _m([0.3, 0.5, 0.1, 0.4] * 6), _m([0.4, 0.2, 0.3, 0.3] * 6)
    held = held_out_numbers(best, seed, Admission(False, 0.6, 0.95, "seed fidelity 0.60 < ..."), n_bootstrap=300,
                            bootstrap_seed=0)
    records = [{"id": "seed", "admissible": True}, {"id": "g1-c1", "admissible": True, "model_written": True}]
    flags = " | ".join(flags_for(_summary("g1-c1", held), records))
    for needle in ("ΔSI CI includes 0", "winner's curse", "not admissible", "model-written"):
        assert needle in flags, needle
