"""Principle creation (`si evolve`): search for wordings with a higher held-out SI (SI-SPEC §7).

`evolve(seed_yaml, ...)` recombines the seed's sentences (and a pool's, and optionally a model's
rewrites) into candidate sets, races them on selection prompts with successive halving, admits
only candidates whose responses still read like the seed (seed fidelity), and compares the best
with the seed on held-out prompts. Modules: `pool` (clauses, the pool file), `candidate` (a set
in clause form), `operators` (seeded edits), `proposer` (model rewrites), `cache` (samples and
scores by text hash), `measure` (sampling, scoring, tensors), `fidelity` (admissibility),
`search` (racing), `lineage` (lineage.jsonl), `verdict` (held-out numbers, flags), `report`
(report.html / report.md), `pipeline` (the run).
"""

from si_toolkit.evolve.config import EvolveConfig
from si_toolkit.evolve.lineage import lineage_frame, read_lineage
from si_toolkit.evolve.pipeline import EvolveResult, evolve

__all__ = ["evolve", "EvolveConfig", "EvolveResult", "read_lineage", "lineage_frame"]

# `si.evolve(...)` runs `evolve`: the package itself is callable (see si_toolkit._callable).
from si_toolkit._callable import make_callable  # noqa: E402

make_callable(__name__, "si_toolkit.evolve.pipeline:evolve")
