"""Admissibility by seed fidelity (si_toolkit.evolve.fidelity)."""

from __future__ import annotations

import numpy as np
import pytest

from si_toolkit.errors import SIError
from si_toolkit.evolve.fidelity import admission, check_tolerance, clearly_inadmissible
from si_toolkit.evolve.measure import Measurement


def _m(fidelity: list[float], seed_accuracy: list[float]) -> Measurement:
    n = len(fidelity)
    return Measurement(prompt_ids=tuple(f"p{i}" for i in range(n)), si=np.zeros(n),
                       fidelity=np.array(fidelity), fidelity_per_variant=np.array([0.5, 0.5]),
                       seed_accuracy=np.array(seed_accuracy), format_rate=1.0)


def test_admissible_iff_fidelity_at_least_seed_accuracy_minus_tolerance() -> None:
    # seed accuracy 0.75, tolerance 0.1: the bar is 0.65
    assert admission(_m([0.65, 0.65], [0.75, 0.75]), 0.1).admissible
    rejected = admission(_m([0.5, 0.75], [0.75, 0.75]), 0.1)  # mean 0.625 < 0.65
    assert not rejected.admissible
    assert rejected.reason == "seed fidelity 0.62 < seed accuracy 0.75 − tolerance 0.10 on 2 prompts"
    same = _m([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    assert admission(same, 0.0).admissible  # the seed is admissible against itself at any tolerance


def test_clearly_inadmissible_needs_the_whole_ci_below_the_bar() -> None:
    far = _m([0.0] * 10 + [0.5] * 2, [1.0] * 12)
    assert clearly_inadmissible(far, 0.1, n_bootstrap=500, seed=0)
    noisy = _m([0.5, 1.0, 0.0, 1.0, 0.5, 1.0], [1.0, 0.5, 1.0, 1.0, 0.5, 1.0])
    assert not admission(noisy, 0.1).admissible  # the point rule would reject it ...
    assert not clearly_inadmissible(noisy, 0.1, n_bootstrap=500, seed=0)  # ... but not clearly: it races on


@pytest.mark.parametrize("tolerance", [-0.1, 1.5])
def test_tolerance_range(tolerance) -> None:
    with pytest.raises(SIError, match="--tolerance"):
        check_tolerance(tolerance)
