"""Admissibility by seed fidelity (SI-SPEC §7).

A candidate's **seed fidelity** is the tie-aware identification accuracy of seed variant j for
responses sampled under candidate variant j, scored under the seed variants as conditions
(`estimators.seed_fidelity_per_prompt`). It stays high while variant j still reads, to the
model, like the principle the user wrote; a candidate that drifts to another meaning or to a
surface marker loses it. The seed's own accuracy on the same prompts is the reference:

    admissible  ⇔  mean fidelity ≥ mean seed accuracy − tolerance     (default tolerance 0.1)

on the prompts the candidate was measured on. While racing, a candidate is dropped early only
when it is *clearly* inadmissible: the paired bootstrap CI of fidelity − seed accuracy lies
wholly below −tolerance, so a few unlucky prompts do not end a faithful candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

from si_toolkit import estimators as est
from si_toolkit.errors import SIError
from si_toolkit.evolve.measure import Measurement

__all__ = ["DEFAULT_TOLERANCE", "Admission", "admission", "clearly_inadmissible", "check_tolerance"]

DEFAULT_TOLERANCE = 0.1  # SI-SPEC §7: accuracy points a candidate may lose against the seed's own


@dataclass(frozen=True)
class Admission:
    """The point rule on the measured prompts; `reason` says why not when inadmissible."""

    admissible: bool
    fidelity: float
    seed_accuracy: float
    reason: str | None


def check_tolerance(tolerance: float) -> float:
    if not 0.0 <= tolerance <= 1.0:
        raise SIError(f"--tolerance {tolerance}: must be in [0, 1] (accuracy points; default {DEFAULT_TOLERANCE})")
    return tolerance


def admission(m: Measurement, tolerance: float) -> Admission:
    fidelity = float(m.fidelity.mean())
    reference = float(m.seed_accuracy.mean())
    # A candidate identical to the seed has fidelity == seed accuracy exactly; the small slack
    # only absorbs floating-point rounding of the two means.
    ok = fidelity >= reference - tolerance - 1e-12
    reason = None if ok else (f"seed fidelity {fidelity:.2f} < seed accuracy {reference:.2f} − tolerance "
                              f"{tolerance:.2f} on {len(m.prompt_ids)} prompts")
    return Admission(ok, fidelity, reference, reason)


def clearly_inadmissible(m: Measurement, tolerance: float, *, n_bootstrap: int, seed: int) -> bool:
    """True when the CI of mean(fidelity − seed accuracy) lies wholly below −tolerance."""
    if len(m.prompt_ids) < 2:
        return False
    comparison = est.paired_comparison(m.fidelity, m.seed_accuracy, n_resamples=n_bootstrap, seed=seed)
    return comparison.ci.high is not None and comparison.ci.high < -tolerance
