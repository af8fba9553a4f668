"""The report's headline, flags, run details and method text (SI-SPEC wording)."""

from __future__ import annotations

from typing import Any

from si_toolkit.report.document import Table
from si_toolkit.report.tables import (
    NA,
    confidence_label,
    fmt,
    fmt_ci,
    fmt_p,
    fmt_pct,
    ordered_sets,
    oriented_delta,
    rank_rows,
)

__all__ = [
    "headline", "run_flags", "run_details", "method_definitions", "MIN_PROMPTS", "MIN_FORMAT_RATE", "NO_FLAGS",
]

MIN_PROMPTS = 20  # SI-SPEC §5: warn below 20 prompts
MIN_FORMAT_RATE = 0.5  # SI-SPEC §5: warn when fewer than half the responses follow the format
NO_FLAGS = "No flags: T = 1 sampling, n ≥ 20 prompts, format rate ≥ 50 %, same sampling and scoring model."


def headline(est: dict[str, Any]) -> tuple[str, bool | None]:
    """The opening sentences: which set ranks first, by how much, and whether the lead is clear.

    Returns (text, clear) where clear is None with a single set, else whether the runner-up's
    paired ΔSI CI excludes 0 (SI-SPEC §5).
    """
    names = ordered_sets(est)
    conf = confidence_label(est)
    lead = est["sets"][names[0]]
    opening = f"{names[0]} ranks first with SI = {fmt(lead['si'])} ({conf} CI {fmt_ci(lead['si_ci'])})."
    if len(names) == 1:
        return f"{opening} It is the only set in this run, so there is no comparison.", None
    ranks = rank_rows(est)
    second = names[1]
    delta, ci = oriented_delta(float(lead["si"]), ranks.get(second, {}))
    if delta is None:
        delta = float(lead["si"]) - float(est["sets"][second]["si"])
    gap = (
        f"It leads {second} (SI = {fmt(est['sets'][second]['si'])}) by ΔSI = {fmt(delta)}"
        f" ({conf} CI {fmt_ci(ci)}, paired bootstrap over prompts, {_p_clause(ranks.get(second, {}).get('p_value'))})."
    )
    tied = [n for n in names[1:] if ranks.get(n, {}).get("tied_with_leader")]
    if ci is not None:
        clear = not (ci[0] <= 0.0 <= ci[1])
    else:
        clear = not tied
    if clear:
        verdict = "The lead is statistically clear: the CI of the difference excludes 0."
    else:
        who = ", ".join(tied) if tied else second
        verdict = f"The lead is not statistically clear: the CI of the difference includes 0, so it is tied with {who}."
    return f"{opening} {gap} {verdict}", clear


def _p_clause(p: Any) -> str:
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def run_flags(manifest: dict[str, Any], est: dict[str, Any]) -> list[str]:
    """Warnings a reader must see next to the headline (SI-SPEC §1 and §5)."""
    flags = _sampling_flags(manifest)
    model = manifest.get("model", {}) if isinstance(manifest.get("model"), dict) else {}
    sampler, scorer = model.get("name"), model.get("scoring_model")
    if sampler and scorer and scorer != sampler:
        flags.append(
            f"The scoring model ({scorer}) is not the sampling model ({sampler}): the numbers are "
            "contrastive scores, not the sampling model's mutual information (SI-SPEC §1)."
        )
    names = ordered_sets(est)
    few = [f"{n} (n = {int(est['sets'][n]['n_prompts'])})" for n in names if est["sets"][n]["n_prompts"] < MIN_PROMPTS]
    if few:
        flags.append(
            f"Few prompts (n < {MIN_PROMPTS}): {', '.join(few)}. The CIs are wide and the ranking may "
            "change with more prompts (SI-SPEC §5)."
        )
    low = [
        f"{n} ({fmt_pct(est['sets'][n]['format_rate'])})"
        for n in names
        if est["sets"][n].get("format_rate") is not None and est["sets"][n]["format_rate"] < MIN_FORMAT_RATE
    ]
    if low:
        flags.append(
            f"Low format rate (< {fmt_pct(MIN_FORMAT_RATE)}): {', '.join(low)}. For a broken response "
            "the cot span is the text up to the answer tag, or all of it (SI-SPEC §1)."
        )
    settings = est.get("settings", {})
    if settings.get("span", "cot") != "cot" or settings.get("critic", "sum") != "sum":
        flags.append(
            f"Estimated with span = {settings.get('span')}, critic = {settings.get('critic')}; SI as "
            "SI-SPEC §4 defines it uses span cot with the summed critic."
        )
    stages = manifest.get("stages", {}) if isinstance(manifest.get("stages"), dict) else {}
    unfinished = [
        f"{k} ({v.get('status')})" for k, v in stages.items() if isinstance(v, dict) and v.get("status") != "done"
    ]
    if unfinished:
        flags.append(f"Unfinished stages in manifest.json: {', '.join(unfinished)}; the report may be partial.")
    return flags


def _sampling_flags(manifest: dict[str, Any]) -> list[str]:
    config = manifest.get("config", {}) if isinstance(manifest.get("config"), dict) else {}
    sampling = config.get("sampling", {}) if isinstance(config.get("sampling"), dict) else {}
    # (key, value that means "no change to the model's distribution")
    neutral = (("temperature", 1.0), ("top_p", 1.0), ("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0))
    off = [
        f"{key} = {sampling[key]}"
        for key, ok in neutral
        if sampling.get(key) is not None and not (key == "top_k" and sampling[key] in (0, -1)) and sampling[key] != ok
    ]
    if not off:
        return []
    return [
        f"Sampling was not T = 1 without truncation ({', '.join(off)}): the estimates are then not "
        "the model's mutual information, only a contrastive score (SI-SPEC §1)."
    ]


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
        ("Prompts", f"{config.get('prompts', NA)}, n = {config.get('n_prompts', est['sets'][names[0]]['n_prompts'])}"),
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


def method_definitions(est: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The definitions behind every number, in SI-SPEC wording (sections in brackets)."""
    settings = est.get("settings", {})
    n_boot = settings.get("n_bootstrap", NA)
    return (
        ("Score tensor (§2)",
         "L_s[x, i, (j,r)] = Σ_{t in span s} log π(y_{j,r,t} | x, c_i, y_{j,r,<t}), in nats, computed by "
         "teacher-forcing the generated token ids of response (j, r) after the prompt rendered for condition c_i."),
        ("Spans (§1)",
         "cot = the tokens of the chain of thought (closing </think> included); answer = the tokens after "
         "</think>; full = every generated token, so L_full = L_cot + L_answer."),
        ("Critic (§3)",
         "sum = the summed log-probability L (exact posterior under T = 1 sampling and the uniform prior); "
         "mean = L / n_tokens, the length-normalised SAMI critic. SI uses the summed critic."),
        ("Posterior bound (§3)",
         "ℓ_col(j,r) = L[j,(j,r)] − logsumexp_i L[i,(j,r)] is the log posterior of the true variant; "
         "Î_col(x) = log K + mean_{j,r} ℓ_col(j,r), averaged over prompts. Bits = nats / ln 2."),
        ("Sufficiency Index (§4)",
         "SI(S) = Î_col(C; COT | X) / log K (span cot, critic sum): the fraction of the principle's identity "
         "(H(C) = log K) that the chain of thought alone suffices to recover. 0 = the CoT carries no trace of "
         "which principle was given; 1 = the CoT always reveals it."),
        ("Identification accuracy (§3)",
         "The fraction of responses with argmax_i L[i,(j,r)] = j (ties count as misses), against chance 1/K."),
        ("CoT share (§4)",
         "Î(C; COT | X) / Î(C; Y | X): how much of the principle information in the whole response is already "
         "in the reasoning."),
        ("Per-principle and per-variant SI (§4)",
         "Per principle (antithesis sets): the estimator on the two variants {all-positive, that principle "
         "flipped}, K = 2. Per variant: (log K + mean ℓ_col over the variant's responses) / log K."),
        ("Confusion matrix",
         "Row j, column i: the mean posterior p(c_i | CoT) over responses sampled under variant j."),
        ("Uncertainty and ranking (§5)",
         f"Prompts are the independent unit: CIs come from a prompt-level bootstrap ({n_boot} resamples, "
         "BCa where defined, else percentile). Sets scored on the same prompts are compared with a paired "
         "bootstrap of the per-prompt difference; a set whose ΔSI CI includes 0 is tied with the leader."),
    )
