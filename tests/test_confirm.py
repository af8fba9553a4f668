"""`si confirm` analysis: set selection, Spearman with CI, the verdict never overstates."""

from __future__ import annotations

import numpy as np
import pytest

from si_toolkit.confirm.analysis import verdict
from si_toolkit.confirm.confirm import ConfirmConfig, select_sets
from si_toolkit.estimators import spearman_with_ci
from si_toolkit.errors import SIError

RANKING = [{"set": s, "rank": r} for r, s in enumerate(["a", "b", "c", "d", "e"], start=1)]


def test_select_top_and_bottom() -> None:
    assert select_sets(RANKING, 1, 1) == ["a", "e"]
    assert select_sets(RANKING, 2, 0) == ["a", "b"]
    assert select_sets(RANKING, 0, 2) == ["d", "e"]
    assert select_sets(RANKING, 4, 4) == ["a", "b", "c", "d", "e"]  # overlap counted once


def test_spearman_perfect_and_undefined() -> None:
    x = np.arange(8.0)
    perfect = spearman_with_ci(x, x**2)
    assert perfect["rho"] == pytest.approx(1.0) and perfect["ci"][0] > 0.9
    assert spearman_with_ci(x[:2], x[:2])["rho"] is None  # two points: undefined, not "1.0"
    assert spearman_with_ci(x, np.ones(8))["rho"] is None


def test_spearman_ci_covers_zero_for_independent_data() -> None:
    rng = np.random.default_rng(0)
    result = spearman_with_ci(rng.normal(size=12), rng.normal(size=12))
    assert result["ci"][0] < 0 < result["ci"][1]


def _result(rho, ci, n_sets, deltas):
    return {"sets": [f"s{i}" for i in range(n_sets)],
            "correlations": {"accuracy_gain": {"rho": rho, "ci": ci, "n": n_sets}},
            "ablation": [{"set": "s0", "seed": 0, "delta": d, "delta_ci": c} for d, c in deltas]}


def test_verdict_refuses_claims_from_few_sets_or_seeds() -> None:
    text = verdict(_result(None, None, 2, [(0.1, [-0.2, 0.4])]), n_seeds=1)
    assert text.startswith("Inconclusive by design") and "0 of 1" in text
    assert "Supported" not in verdict(_result(0.9, [0.5, 1.0], 5, []), n_seeds=1)


def test_verdict_supported_only_when_ci_excludes_zero() -> None:
    assert verdict(_result(0.9, [0.4, 1.0], 5, [(0.2, [0.05, 0.3])]), n_seeds=3).startswith("Supported")
    assert verdict(_result(0.5, [-0.3, 0.9], 5, []), n_seeds=3).startswith("Not supported")


def test_confirm_config_validation() -> None:
    for bad in ({"profile": "huge"}, {"top": 0, "bottom": 0}, {"seeds": 0}):
        with pytest.raises(SIError):
            ConfirmConfig(**bad)
