"""The rank pipeline: run folder, sampling, scoring, estimation (SI-SPEC §1-5).

The names below are what other packages (evolve) use of it: how a (variant, prompt) pair is
rendered and checked against the context, how a work unit's seed is derived, how per-token
log-probs are summed into spans, and how two configs are compared.
"""

from si_toolkit.rank.runs import config_diff, unit_seed
from si_toolkit.rank.sampling import check_context, render_unit_prompts
from si_toolkit.rank.scoring import span_sums

__all__ = ["check_context", "config_diff", "render_unit_prompts", "span_sums", "unit_seed"]
