"""The report's headline, reliability line, run details and method text (SI-SPEC wording).

Formula text uses `_{...}` for a subscript and `^{...}` for a superscript; the renderers turn
these into <sub>/<sup> (only in toolkit-written text, never in user text).
"""

from __future__ import annotations

from typing import Any

from si_toolkit.estimators import RELIABLE, UNRELIABLE
from si_toolkit.report.document import Table
from si_toolkit.report.flags import MIN_FORMAT_RATE, MIN_PROMPTS, run_flags
from si_toolkit.report.tables import (
    NA,
    confidence_label,
    fmt,
    fmt_ci,
    fmt_p,
    fmt_pct,
    fmt_rank_interval,
    ordered_sets,
    rank_rows,
)

__all__ = [
    "headline", "reliability_line", "run_flags", "run_details", "method_definitions", "MIN_PROMPTS",
    "MIN_FORMAT_RATE", "NO_FLAGS",
]

NO_FLAGS = "No flags: T = 1 sampling, n ≥ 20 prompts, format rate ≥ 50 %, same sampling and scoring model."


def headline(est: dict[str, Any]) -> tuple[str, bool | None]:
    """The opening sentences: which set ranks first, how surely, by how much, and whether the lead is clear.

    Returns (text, clear) where clear is None with a single set, else whether the runner-up's
    paired ΔSI CI excludes 0 (SI-SPEC §5). ΔSI is SI(set) − SI(leader), as everywhere.
    """
    names = ordered_sets(est)
    conf = confidence_label(est)
    lead = est["sets"][names[0]]
    ranks = rank_rows(est)
    opening = f"{names[0]} ranks first with SI = {fmt(lead['si'])} ({conf} CI {fmt_ci(lead['si_ci'])})"
    first = ranks.get(names[0], {})
    if first.get("p_rank1") is not None and len(names) > 1:
        interval = fmt_rank_interval(first.get("rank_interval"))
        which = f"rank {interval} only" if interval.isdigit() else f"ranks {interval}"
        opening += (f"; it ranks first in {fmt_pct(first['p_rank1'])} of the prompt resamples "
                    f"({conf} rank interval: {which})")
    opening += "."
    if len(names) == 1:
        return f"{opening} It is the only set in this run, so there is no comparison.", None
    second = names[1]
    row = ranks.get(second, {})
    delta, ci = row.get("delta_to_leader"), row.get("delta_ci")
    if delta is None:
        delta = float(est["sets"][second]["si"]) - float(lead["si"])
    gap = (
        f"Next is {second} (SI = {fmt(est['sets'][second]['si'])}): ΔSI = SI({second}) − SI({names[0]}) = "
        f"{fmt(delta)} ({conf} CI {fmt_ci(ci)}, paired bootstrap over prompts, {_p_clause(row, est)})."
    )
    tied = [n for n in names[1:] if ranks.get(n, {}).get("tied_with_leader")]
    clear = not (ci[0] <= 0.0 <= ci[1]) if ci is not None else not tied
    if clear:
        verdict = "The lead is statistically clear: the CI of the difference excludes 0."
    else:
        who = ", ".join(tied) if tied else second
        verdict = f"The lead is not statistically clear: the CI of the difference includes 0, so it is tied with {who}."
    return f"{opening} {gap} {verdict}", clear


def _p_clause(row: dict[str, Any], est: dict[str, Any]) -> str:
    text = fmt_p(row.get("p_value"), row.get("p_at_floor"))
    if text == NA:
        return "p n/a"
    if not text.startswith("≤"):
        return f"p = {text}"
    floor, n_boot = row.get("p_floor") or row["p_value"], est.get("settings", {}).get("n_bootstrap")
    if n_boot and abs(float(floor) - 1.0 / float(n_boot)) < 1e-12:
        return f"p {text}, the finest p {n_boot} bootstrap resamples resolve"
    return f"p {text}, the finest p {round(1.0 / float(floor))} prompts resolve"


def reliability_line(est: dict[str, Any]) -> str:
    """How reproducible the ordering is with this many prompts (SI-SPEC §5), in one sentence."""
    rel = est.get("reliability")
    if not isinstance(rel, dict) or not rel.get("reading"):
        return "The reliability of the ordering is not available: estimates.json holds no per-prompt SI."
    return str(rel["reading"])


def run_details(manifest: dict[str, Any], est: dict[str, Any]) -> Table:
    """Model, backend, prompts, K per set, R and sampling settings, as the manifest records them."""
    config = manifest.get("config", {}) if isinstance(manifest.get("config"), dict) else {}
    model = manifest.get("model", {}) if isinstance(manifest.get("model"), dict) else {}
    sampling = config.get("sampling", {}) if isinstance(config.get("sampling"), dict) else {}
    names = ordered_sets(est)
    versions = manifest.get("versions", {}) if isinstance(manifest.get("versions"), dict) else {}
    settings = est.get("settings", {})
    rows = (
        ("Model", f"{model.get('name', NA)} (ref {model.get('ref', config.get('model', NA))})"),
        ("Scoring model", str(model.get("scoring_model", model.get("name", NA)))),
        ("Backend, dtype",
         f"{model.get('backend', config.get('backend', NA))}, {model.get('dtype', config.get('dtype', NA))}"),
        ("Prompts", f"{config.get('prompts', NA)}, {_prompt_counts(est, names)}"),
        ("K per set", ", ".join(f"{n}: {int(est['sets'][n]['K'])}" for n in names)),
        ("Replicates R", str(sampling.get("replicates", est["sets"][names[0]]["replicates"]))),
        ("Sampling", ", ".join(f"{k} = {v}" for k, v in sampling.items() if k != "replicates") or NA),
        ("Prefill <think>", str(config.get("prefill", NA))),
        ("Estimator", f"span {settings.get('span', NA)}, critic {settings.get('critic', NA)}, "
         f"{settings.get('n_bootstrap', NA)} bootstrap resamples, {confidence_label(est)} CIs, "
         f"seed {settings.get('seed', NA)}"),
        ("Created", str(manifest.get("created", NA))),
        ("Versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or NA),
        ("Git commit", str(manifest.get("git_sha") or NA)),
    )
    return Table(caption="The run, as manifest.json records it.", columns=("Setting", "Value"), rows=rows)


def _prompt_counts(est: dict[str, Any], names: list[str]) -> str:
    """The prompts each set's estimate is on. The config's n_prompts is only the first round of a
    race (--until-decided), after which sets stop at different numbers of prompts."""
    counts = {name: int(est["sets"][name]["n_prompts"]) for name in names}
    if len(set(counts.values())) == 1:
        return f"n = {counts[names[0]]}"
    return "n per set: " + ", ".join(f"{name}: {n}" for name, n in counts.items())


def method_definitions(est: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The definitions behind every number, in SI-SPEC wording (sections in brackets)."""
    settings = est.get("settings", {})
    n_boot = settings.get("n_bootstrap", NA)
    return (
        ("Score tensor (§2)",
         "L_{s}[x, i, (j,r)] = Σ_{t ∈ span s} log π(y_{j,r,t} | x, c_{i}, y_{j,r,<t}), in nats, computed by "
         "teacher-forcing the generated token ids of response (j, r) after the prompt rendered for condition "
         "c_{i}."),
        ("Spans (§1)",
         "cot = the tokens of the chain of thought (closing </think> included); answer = the tokens after "
         "</think>; full = every generated token, so L_{full} = L_{cot} + L_{answer}."),
        ("Critic (§3)",
         "sum = the summed log-probability L (exact posterior under T = 1 sampling and the uniform prior); "
         "mean = L / n_{tokens}, the length-normalised SAMI critic. SI uses the summed critic."),
        ("Posterior bound (§3)",
         "ℓ_{col}(j,r) = L[j,(j,r)] − logsumexp_{i} L[i,(j,r)] is the log posterior of the true variant; "
         "Î_{col}(x) = log K + mean_{j,r} ℓ_{col}(j,r), averaged over prompts. Bits = nats / ln 2."),
        ("Row and symmetric bounds (§3)",
         "Î_{row}(x) = log K + mean_{i,r} (L[i,(i,r)] − logsumexp_{j} L[i,(j,r)]) compares the K different "
         "responses of one replicate, so under the summed critic response length dominates it (values of "
         "−10 nats and below are normal and mean nothing). It is shown for the mean critic only, with "
         "Î_{sym} = (Î_{row} + Î_{col}) / 2, in nats per token: not comparable with SI."),
        ("Sufficiency Index (§4)",
         "SI(S) = Î_{col}(C; COT | X) / log K (span cot, critic sum): the fraction of the principle's identity "
         "(H(C) = log K) that the chain of thought alone suffices to recover. 0 = the CoT carries no trace of "
         "which principle was given; 1 = the CoT always reveals it."),
        ("Identification accuracy (§3)",
         "The mean over responses of 1[j ∈ argmax_{i} L[i,(j,r)]] / |argmax_{i} L[i,(j,r)]|: a response earns 1 "
         "when its true variant alone scores highest and 1/m when it ties with m − 1 others, against chance "
         "1/K. Identical variants therefore score exactly chance."),
        ("CoT share (§4)",
         "Î(C; COT | X) / Î(C; Y | X): how much of the principle information in the whole response is already "
         "in the reasoning. n/a when the answer span is empty (then Y = COT and the ratio is 1 by construction) "
         "or the whole-response MI is 0."),
        ("Per-principle and per-variant SI (§4)",
         "Per principle (antithesis sets): the estimator on the two variants {all-positive, that principle "
         "flipped}, K = 2. Per variant: (log K + mean ℓ_{col} over the variant's responses) / log K."),
        ("Confusion matrix",
         "Row j, column i: the mean posterior p(c_{i} | CoT) over responses sampled under variant j."),
        ("Uncertainty and ranking (§5)",
         f"Prompts are the independent unit: CIs come from a prompt-level bootstrap ({n_boot} resamples, "
         "BCa where defined, else percentile). Sets scored on the same prompts are compared with a paired "
         "bootstrap of the per-prompt difference ΔSI = SI(set) − SI(leader); a set whose ΔSI CI includes 0 "
         "is tied with the leader. The p-value inverts that same interval (the smallest 1 − confidence at "
         "which it excludes 0), so the CI excludes 0 exactly when p < 1 − confidence. No p below 1/n is "
         f"shown with n < {MIN_PROMPTS} prompts, nor below 1/B for B resamples: such a p reads \"p ≤ …\"."),
        ("Rank intervals (§5)",
         "All sets are resampled together on their common prompts; in each resample the sets are ranked by "
         "mean SI (rank 1 = highest). A set's rank interval is the central interval of its ranks, and "
         "P(rank 1) the share of resamples in which it ranks first. A rank is decided when its interval is "
         "a single rank."),
        ("Reliability (§5)",
         "Split-half reliability of the ordering: the prompts are split at random into two disjoint halves, "
         "the sets' SIs on the two halves are compared by Spearman ρ, ρ is averaged over splits and corrected "
         "to the full number of prompts by Spearman–Brown, ρ_{SB} = 2ρ / (1 + ρ) (a negative ρ is kept as "
         f"is). ρ_{{SB}} ≥ {RELIABLE:g} reads as reliable, below {UNRELIABLE:g} as unreliable; it needs at "
         "least 3 sets and 4 prompts."),
    )
