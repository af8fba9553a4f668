"""The primary test of `si confirm`: permutation p-value of Spearman ρ and its power by simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from si_toolkit.estimators import detectable_spearman, spearman_permutation_p, spearman_power


def _brute_force_p(x: np.ndarray, y: np.ndarray) -> float:
    observed = stats.spearmanr(x, y).statistic
    rhos = [stats.spearmanr(x, y[list(order)]).statistic for order in itertools.permutations(range(len(x)))]
    return float(np.mean(np.asarray(rhos) >= observed - 1e-12))


def test_exact_p_matches_enumeration_with_scipy() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        x, y = rng.normal(size=6), rng.normal(size=6)
        assert spearman_permutation_p(x, y) == pytest.approx(_brute_force_p(x, y))


def test_p_extremes_and_directions() -> None:
    x = np.arange(7.0)
    assert spearman_permutation_p(x, x) == pytest.approx(1 / 5040)  # the one ordering as extreme
    assert spearman_permutation_p(x, -x) == pytest.approx(1.0)
    assert spearman_permutation_p(x, -x, alternative="less") == pytest.approx(1 / 5040)
    assert spearman_permutation_p(x, np.ones(7)) is None
    assert spearman_permutation_p(x[:2], x[:2]) is None


def test_monte_carlo_p_above_eight_units_agrees_with_scipy_asymptotics() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 0.4 * x + rng.normal(size=30)
    p = spearman_permutation_p(x, y, alternative="two-sided")
    assert p == pytest.approx(stats.spearmanr(x, y).pvalue, abs=0.01)


def test_power_is_alpha_under_the_null_and_grows_with_rho_and_units() -> None:
    assert spearman_power(7, 0.0) <= 0.05 + 0.01  # level held (the exact null is discrete: ≤ α)
    assert spearman_power(7, 0.5) < spearman_power(7, 0.9)
    assert spearman_power(7, 0.7) < spearman_power(20, 0.7)


def test_detectable_rho_for_few_sets_is_large() -> None:
    seven = detectable_spearman(7)
    assert 0.8 < seven < 0.95  # seven sets detect only strong relations
    assert detectable_spearman(20) < seven
    assert detectable_spearman(3) is None  # 1/3! > 0.05: no ordering is significant
