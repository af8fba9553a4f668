"""Assemble the report's content (a `Report`) from a loaded run folder."""

from __future__ import annotations

import math
import shlex
from dataclasses import replace
from typing import Any

from si_toolkit._version import __version__
from si_toolkit.errors import SIError
from si_toolkit.report.document import Report, SetSection
from si_toolkit.report.evidence import Evidence, response_log_posteriors, select_evidence
from si_toolkit.report.figures import breakdown_figure, confusion_figure, rank_figure, ranking_figure
from si_toolkit.report.flags import set_role
from si_toolkit.report.load import RunData
from si_toolkit.report.racing import racing_table
from si_toolkit.report.summary import headline, method_definitions, reliability_line, run_details, run_flags
from si_toolkit.report.tables import (
    breakdown_table,
    confidence_label,
    ordered_sets,
    rank_rows,
    ranking_table,
    set_summary_table,
)

__all__ = ["assemble_report", "prompt_texts", "MAX_EVIDENCE_VARIANTS"]

MAX_PROMPT_CHARS = 600  # characters of a prompt shown above its example
MAX_EVIDENCE_VARIANTS = 12  # variants per set with examples; a 64-variant factorial set would drown the page


def assemble_report(run: RunData, notes: tuple[str, ...] = ()) -> Report:
    """Build every table, figure and text of the report from `run` (no file is written).

    `run.estimates` must hold every key the report shows (`upgrade.complete_estimates` fills
    them in for an older file); `notes` are shown under the headline.
    """
    est, manifest = run.estimates, run.manifest
    text, clear = headline(est)
    ranks = rank_rows(est)
    sections = tuple(
        _set_section(n, name, run, ranks.get(name, {}).get("rank")) for n, name in enumerate(ordered_sets(est), 1)
    )
    command = manifest.get("command")
    return Report(
        title=f"Sufficiency Index report: {run.run_dir.name}",
        headline=text,
        lead_clear=clear,
        reliability=reliability_line(est),
        flags=tuple(run_flags(manifest, est)),
        run_details=run_details(manifest, est),
        ranking=ranking_table(est, manifest),
        ranking_figure=ranking_figure(est),
        rank_figure=rank_figure(est),
        sets=sections,
        method=method_definitions(est),
        command=str(command) if command else "(manifest.json records no command)",
        footer=(
            f"Written by si-toolkit {__version__} from the run folder alone. Regenerate it with: "
            f"si report {shlex.quote(str(run.run_dir))}"
        ),
        extra_notes=tuple(n for n in notes if n),
        racing=racing_table(manifest, ordered_sets(est)),
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def variant_labels(entry: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """Variant labels from the manifest, else from per_variant, else the indices 0..K-1."""
    k = int(entry["K"])
    labels = meta.get("variant_labels")
    if isinstance(labels, list) and len(labels) == k:
        return [str(lab) for lab in labels]
    by_index = {v.get("variant"): v.get("label") for v in entry.get("per_variant") or []}
    return [str(by_index.get(j) if by_index.get(j) is not None else j) for j in range(k)]


def _set_section(index: int, name: str, run: RunData, rank: int | None) -> SetSection:
    entry = run.estimates["sets"][name]
    meta = _dict(_dict(run.manifest.get("sets")).get(name))
    labels = variant_labels(entry, meta)
    texts = meta.get("variant_texts")
    variants = tuple(zip(labels, [str(t) for t in texts])) if isinstance(texts, list) else ()
    figures = tuple(
        f for f in (breakdown_figure(index, name, entry), confusion_figure(index, name, entry, labels)) if f is not None
    )
    evidence, note = _evidence(run, name, int(entry["K"]))
    return SetSection(
        name=name,
        anchor=f"set-{index}",
        rank=rank,
        mode=str(meta.get("mode", "n/a")),
        role=set_role(name, run.manifest),
        description=str(meta.get("description") or ""),
        summary=set_summary_table(entry, confidence_label(run.estimates),
                                  str(run.estimates.get("settings", {}).get("critic", "sum"))),
        breakdown=breakdown_table(entry, labels, confidence_label(run.estimates)),
        variants=variants,
        figures=figures,
        evidence=tuple(evidence),
        evidence_note=note,
    )


def _evidence(run: RunData, name: str, k: int) -> tuple[list[Evidence], str]:
    """Examples per variant (2 most + 1 least surely identified for K <= 4, else 1 + 1)."""
    samples, scores = run.samples, run.scores
    if samples is None or scores is None:
        missing = [f for f, df in (("samples.parquet", samples), ("scores.parquet", scores)) if df is None]
        return [], (
            f"{' and '.join(missing)} not found in the run folder, so no examples are shown; "
            f"run `si sample` and `si score` on {run.run_dir} to add them."
        )
    try:
        log_post = response_log_posteriors(scores, name, k)
    except SIError as err:
        # The estimates exist, so the report is still worth writing; say why examples are missing.
        return [], f"No examples: {err}"
    ell = log_post["log_post"].to_numpy()
    if ell.size and float(ell.max()) == float(ell.min()):
        # e.g. a null control: every response has p(true variant | CoT) = 1/K exactly, so none is
        # more or less surely identified than another and "most / least surely" would mislead.
        return [], (
            f"No examples: every response of this set has the same posterior for its true variant, "
            f"p(true variant | CoT) = {math.exp(float(ell[0])):.3f} (chance is 1/K = {1 / k:.3f}). The "
            "variants score every response identically, so no chain of thought carries more or less of "
            "the principle than another."
        )
    n_most, n_least = (2, 1) if k <= 4 else (1, 1)
    prompts = prompt_texts(run.manifest)
    chosen = [
        replace(e, prompt=_cut(prompts.get(e.prompt_id, ""), MAX_PROMPT_CHARS))
        for e in select_evidence(log_post, samples, name, n_most, n_least)
    ]
    notes = []
    if not chosen:
        notes.append("No response of this set has both its text and its scores under every condition yet.")
    if k > MAX_EVIDENCE_VARIANTS:
        chosen = [e for e in chosen if e.variant < MAX_EVIDENCE_VARIANTS]
        notes.append(f"Examples are shown for the first {MAX_EVIDENCE_VARIANTS} of {k} variants.")
    return chosen, " ".join(notes)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def prompt_texts(manifest: dict[str, Any]) -> dict[str, str]:
    """prompt id -> prompt text, from manifest.json's `prompts` list (empty when absent)."""
    prompts = manifest.get("prompts")
    if not isinstance(prompts, list):
        return {}
    return {str(p["id"]): str(p.get("text", "")) for p in prompts if isinstance(p, dict) and "id" in p}
