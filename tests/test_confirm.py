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


def _result(rho, ci, n_sets, deltas, *, p=0.5, p_less=0.5, detectable=0.88):
    return {"sets": [f"s{i}" for i in range(n_sets)],
            "primary": {"outcome": "adherence_gain", "contrast": "difference", "rho": rho, "ci": ci, "n": n_sets,
                        "p_value": p, "p_value_less": p_less, "alpha": 0.05, "power": 0.8, "detectable_rho": detectable},
            "ablation": [{"set": "s0", "seed": 0, "delta": d, "delta_ci": c} for d, c in deltas]}


def test_verdict_refuses_claims_from_few_sets_or_seeds() -> None:
    text = verdict(_result(None, None, 2, [(0.1, [-0.2, 0.4])]), n_seeds=1)
    assert text.startswith("Inconclusive by design") and "0 of 1" in text
    assert "Supported" not in verdict(_result(0.9, [0.5, 1.0], 5, [], p=0.01), n_seeds=1)


def test_verdict_follows_the_preregistered_test() -> None:
    supported = verdict(_result(0.9, [0.4, 1.0], 7, [(0.2, [0.05, 0.3])], p=0.003), n_seeds=2)
    assert supported.startswith("Supported") and "ENIGMA − GRPO adherence gain" in supported
    assert "1 of 1" in supported
    # a large ρ whose one-sided p misses α is not support, whatever its bootstrap CI says
    assert verdict(_result(0.7, [0.1, 1.0], 7, [], p=0.06), n_seeds=2).startswith("Not supported by this data, and a weak test")
    assert verdict(_result(-0.9, [-1.0, -0.5], 7, [], p=0.99, p_less=0.003), n_seeds=2).startswith("Against the claim")
    # the CI rules out the strong relation the design could detect: evidence against it
    assert "evidence against a strong relation" in verdict(_result(-0.2, [-0.8, 0.5], 7, [], p=0.7), n_seeds=2)
    assert verdict(_result(None, None, 7, []), n_seeds=2).startswith("Inconclusive: the ENIGMA − GRPO adherence gain")


def test_power_statement_names_the_detectable_rho() -> None:
    from si_toolkit.confirm.analysis import power_statement

    text = power_statement(_result(0.1, [-0.5, 0.6], 7, [])["primary"])
    assert "ρ ≥ 0.88" in text and "80 %" in text and "7 sets" in text
    assert "cannot reach" in power_statement(_result(0.1, None, 3, [], detectable=None)["primary"])


def test_profiles_fill_the_design_the_user_left_out() -> None:
    assert (ConfirmConfig().top, ConfirmConfig().bottom, ConfirmConfig().seeds) == (1, 1, 1)
    cpu = ConfirmConfig(profile="cpu")
    assert cpu.seeds == 2 and select_sets(RANKING, cpu.top, cpu.bottom) == ["a", "b", "c", "d", "e"]
    assert ConfirmConfig(profile="cpu", seeds=3).seeds == 3  # an explicit option wins


def test_confirm_config_validation() -> None:
    for bad in ({"profile": "huge"}, {"top": 0, "bottom": 0}, {"seeds": 0}):
        with pytest.raises(SIError):
            ConfirmConfig(**bad)
