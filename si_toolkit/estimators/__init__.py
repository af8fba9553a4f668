"""Estimators of SI-SPEC §3-5: MI bounds, the Sufficiency Index, bootstrap CIs, paired tests.

Every number si-toolkit prints about principles is computed here, by exactly one pure function
(numpy/scipy only, no I/O, no torch). The common input is a **score tensor**

    L : float array, shape (n, K, K, R), nats
        L[x, i, j, r] = Σ_t log π(y_{j,r,t} | x, c_i, y_{j,r,<t})  (SI-SPEC §2)

for n prompts x, K conditions i, K sampled-under variants j and R replicates r. Axis 1 is
the condition (the candidate principle), axis 2 the variant the response was sampled under.
Per-prompt functions return arrays of shape (n,); prompts are the independent unit, so a set's
estimate is the mean over prompts and its CI a prompt-level (cluster) bootstrap (§5).

Modules (private; import the names from ``si_toolkit.estimators``): ``_bounds`` (critics,
posteriors, MI bounds, accuracy, SI; §3-4), ``_bootstrap`` (CIs, CoT share; §4-5),
``_compare`` (paired comparison with its test-inversion p-value; §5), ``_ranking`` (ranking
with ties, rank intervals; §5), ``_correlation`` (Spearman with CI, split-half reliability; §5).
"""

from si_toolkit.estimators._bootstrap import Interval, Ratio, bootstrap_ci, bootstrap_mean_ci, cot_share
from si_toolkit.estimators._bounds import (
    CRITICS,
    accuracy_per_prompt,
    confusion_matrix,
    critic_scores,
    identification_credit,
    identification_hits,
    log_posterior,
    log_posterior_true,
    mi_col_per_prompt,
    mi_row_per_prompt,
    mi_sym_per_prompt,
    nats_to_bits,
    per_principle_si_per_prompt,
    per_variant_accuracy,
    per_variant_fidelity,
    per_variant_si_per_prompt,
    restrict_variants,
    seed_fidelity_per_prompt,
    si_per_prompt,
)
from si_toolkit.estimators._compare import PairedComparison, p_value_floor, paired_comparison
from si_toolkit.estimators._correlation import (
    DEFAULT_N_SPLITS,
    RELIABLE,
    UNRELIABLE,
    SplitHalfReliability,
    describe_reliability,
    detectable_spearman,
    spearman_permutation_p,
    spearman_power,
    spearman_with_ci,
    split_half_reliability,
)
from si_toolkit.estimators._ranking import (
    RankEntry,
    RankUncertainty,
    common_prompt_matrix,
    rank_sets,
    rank_uncertainty,
)
from si_toolkit.estimators._types import DEFAULT_CONFIDENCE, DEFAULT_N_RESAMPLES, MIN_MI_NATS, MIN_PROMPTS

__all__ = [
    "CRITICS",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_N_RESAMPLES",
    "DEFAULT_N_SPLITS",
    "MIN_MI_NATS",
    "MIN_PROMPTS",
    "RELIABLE",
    "UNRELIABLE",
    "Interval",
    "PairedComparison",
    "RankEntry",
    "RankUncertainty",
    "Ratio",
    "SplitHalfReliability",
    "accuracy_per_prompt",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "common_prompt_matrix",
    "confusion_matrix",
    "cot_share",
    "critic_scores",
    "describe_reliability",
    "detectable_spearman",
    "identification_credit",
    "identification_hits",
    "log_posterior",
    "log_posterior_true",
    "mi_col_per_prompt",
    "mi_row_per_prompt",
    "mi_sym_per_prompt",
    "nats_to_bits",
    "p_value_floor",
    "paired_comparison",
    "per_principle_si_per_prompt",
    "per_variant_accuracy",
    "per_variant_fidelity",
    "per_variant_si_per_prompt",
    "rank_sets",
    "rank_uncertainty",
    "restrict_variants",
    "seed_fidelity_per_prompt",
    "si_per_prompt",
    "spearman_permutation_p",
    "spearman_power",
    "spearman_with_ci",
    "split_half_reliability",
]
