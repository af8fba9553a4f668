"""The rank pipeline: run folder, sampling, scoring, estimation (SI-SPEC §1-5).

`si.rank(sets, prompts, model, profile, **options)` calls `si_toolkit.rank.api.rank`: the package
itself is callable (see `si_toolkit._callable`), and its help is `help(si_toolkit.rank.api.rank)`.
The names below are what other packages (evolve) use of it: how a (variant, prompt) pair is
checked against the context, how a work unit's seed is derived, how per-token log-probs are
summed into spans, and how two configs are compared.
"""

from si_toolkit._callable import make_callable
from si_toolkit.rank.runs import config_diff, unit_seed
from si_toolkit.rank.sampling import check_context
from si_toolkit.rank.scoring import span_sums

__all__ = ["check_context", "config_diff", "span_sums", "unit_seed"]

make_callable(__name__, "si_toolkit.rank.api:rank")
