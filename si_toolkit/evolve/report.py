"""report.html and report.md of an evolve folder, from its files alone (no model).

Reads manifest.json, result.json and lineage.jsonl and lays out: the verdict and every flag,
the held-out comparison of seed and best, the best SI per generation (table and figure), the
winner's lineage as clause-level text diffs against the seed (difflib), every candidate, and
how to read the three numbers. Principles and model output are user text: the page writers of
`si_toolkit.report` escape all of it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure as MplFigure

from si_toolkit.errors import SIError
from si_toolkit.evolve.lineage import LINEAGE_FILE, read_lineage
from si_toolkit.evolve.pool import split_clauses
from si_toolkit.report import (Bullets, Figure, Page, Paragraph, Preformatted, Section, Table,
                               figure_from_matplotlib, render_page_html, render_page_markdown)
from si_toolkit.safeio import atomic_write_bytes, atomic_write_text

__all__ = ["write_report", "text_diff", "METHOD"]

METHOD = (
    ("Held-out SI gain", "ΔSI = SI(best) − SI(seed) on held-out prompts that no selection step saw, with a paired "
     "prompt-level bootstrap CI. This is the gain. The best's SI on the selection prompts is biased upward: it won "
     "the race partly because its noise there was favourable (winner's curse)."),
    ("Seed fidelity", "Responses sampled under candidate variant j, scored under the seed's variants: how often seed "
     "variant j is identified (ties among m variants count 1/m). It stays high while variant j still reads, to the "
     "model, like the principle you wrote. A candidate is admissible when its fidelity is at least the seed's own "
     "accuracy on the same prompts minus the tolerance; inadmissible candidates never win."),
    ("Text provenance", "Every candidate records its parent, the operator that made it and its full text. Pool "
     "operators only recombine sentences a person wrote (the seed's and the pool's); a model rewrite is marked "
     "model-written. Read the diffs: a higher SI can come from wording about the form of the answer rather than "
     "the principle itself."),
    ("Goodhart caveat", "Maximising SI alone rewards whatever makes variants easy to tell apart, e.g. asking for a "
     "surface marker (\"answer in French\") instead of the organisation's principle. Fidelity and the diffs are the "
     "guard; the choice to adopt a created set stays with a person who reads it."),
    ("Racing", "Each generation races the best so far against new children on growing prefixes of the selection "
     "prompts; after each round a challenger is dropped when clearly inadmissible, when its SI upper bound is below "
     "the best lower bound, or when it is not in the better half (successive halving). The best so far always runs "
     "to the end, so a challenger wins only by beating it on every selection prompt. Samples and scores are cached "
     "by text hash, prompt and seed, so nothing is sampled twice."),
)


def _ci(ci: list[float] | None, signed: bool = False) -> str:
    if not ci:
        return "n/a"
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if signed else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SIError(f"{path}: missing; rerun `si evolve` with the same options to finish the run")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise SIError(f"{path}: not a JSON object; rerun `si evolve` to rewrite it")
    return data


def text_diff(seed: dict[str, Any], record: dict[str, Any]) -> str:
    """Unified diff, one clause per line, of each variant of `record` against the seed's."""
    parts: list[str] = []
    for label, old, new in zip(seed["variant_labels"], seed["variant_texts"], record["variant_texts"], strict=True):
        if old == new:
            continue
        parts += difflib.unified_diff(split_clauses(old), split_clauses(new), fromfile=f"seed: {label}",
                                      tofile=f"{record['id']}: {label}", lineterm="", n=20)
    return "\n".join(parts) or "(same text as the seed)"


def _chain(records: dict[str, dict[str, Any]], best: str) -> list[dict[str, Any]]:
    chain, cid = [], best
    while cid is not None and cid in records:
        chain.append(records[cid])
        cid = records[cid]["parent"]
    return chain[::-1]


def _held_out_table(h: dict[str, Any], best: str) -> Table:
    b, s = h["best"], h["seed"]
    rows = (("seed", f"{s['si']:.3f}", _ci(s["si_ci"]), f"{s['accuracy']:.2f} (its accuracy)", f"{s['format_rate']:.0%}"),
            (f"best ({best})", f"{b['si']:.3f}", _ci(b["si_ci"]), f"{b['fidelity']:.2f}", f"{b['format_rate']:.0%}"),
            ("ΔSI = best − seed", f"{h['delta_si']:+.3f}", _ci(h["delta_ci"], signed=True),
             "p = n/a" if h["p_value"] is None else f"p = {h['p_value']:.3f}", ""))
    return Table(caption=f"On {h['n_prompts']} held-out prompts; 95 % prompt-level bootstrap CIs (paired for ΔSI).",
                 columns=("set", "SI", "95% CI", "seed fidelity", "format"), rows=rows,
                 numeric=(False, True, True, True, True))


def _generation_table(gens: list[dict[str, Any]]) -> Table:
    rows = []
    for g in gens:
        top, best = g.get("top"), g.get("best_so_far")
        rows.append((str(g["generation"]), top["id"] if top else "none", f"{top['si']:.3f}" if top else "",
                     _ci(top["si_ci"]) if top else "", str(top["n_prompts"]) if top else "",
                     f"{top['fidelity']:.2f}" if top else "", best["id"] if best else "none",
                     "stopped by the budget" if g.get("stopped") else ""))
    return Table(caption="The admissible finalist with the highest SI on all selection prompts, per generation "
                 "(selection SI: biased upward, see the held-out comparison).",
                 columns=("generation", "top", "SI", "95% CI", "prompts", "fidelity", "best so far", "note"),
                 rows=tuple(rows), numeric=(True, False, True, True, True, True, False, False))


def _generation_figure(gens: list[dict[str, Any]], seed: dict[str, Any] | None) -> Any:
    fig = MplFigure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.subplots()
    points = [(g["generation"], g["top"]) for g in gens if g.get("top")]
    for x, top in points:
        ci = top["si_ci"]
        err = None if not ci else [[top["si"] - ci[0]], [ci[1] - top["si"]]]
        ax.errorbar(x, top["si"], yerr=err, fmt="o", mfc="white", mec="black", ecolor="black", capsize=4)
    best = [(g["generation"], g["best_so_far"]["si"]) for g in gens if g.get("best_so_far")]
    if best:
        ax.plot([b[0] for b in best], [b[1] for b in best], color="black", ls="--", lw=1, label="best so far")
    if seed is not None and seed["selection"]["n_prompts"] == max((t["n_prompts"] for _, t in points), default=-1):
        ax.axhline(seed["selection"]["si"], color="black", ls=":", lw=1.5, label="seed")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="lower right", fontsize=8)
    ax.axhline(0.0, color="0.3", lw=1)
    ax.set_xticks([g["generation"] for g in gens])
    ax.set_xlabel("generation")
    ax.set_ylabel("selection SI  (fraction of log K)")
    ax.set_title("Top SI per generation, selection prompts")
    return figure_from_matplotlib(fig, filename="generations.png", alt="Top selection SI per generation with CIs",
                                  caption="Circles: each generation's top admissible finalist with its 95 % CI; "
                                          "dashed: the best so far; dotted: the seed, on the same prompts.")


def _candidates_table(records: list[dict[str, Any]]) -> Table:
    rows = []
    for r in records:
        sel = r["selection"]
        why = r.get("inadmissible_reason") or r.get("status_reason") or ""
        rows.append((r["id"] + (" (best)" if r.get("best") else ""), r["parent"] or "", r["operator"],
                     "yes" if r.get("model_written") else "", f"{sel['si']:.3f}", _ci(sel["si_ci"]),
                     str(sel["n_prompts"]), f"{sel['fidelity']:.2f}", f"{sel['seed_accuracy']:.2f}",
                     "yes" if r["admissible"] else "no", r["status"], why, r.get("detail", "")))
    return Table(caption="Every measured candidate, selection-prompt numbers (lineage.jsonl has the full texts).",
                 columns=("id", "parent", "operator", "model-written", "SI", "95% CI", "prompts", "fidelity",
                          "seed acc.", "admissible", "race", "why", "edit"),
                 rows=tuple(rows), numeric=(False, False, False, False, True, True, True, True, True, False,
                                            False, False, False))


def _sections(manifest: dict[str, Any], result: dict[str, Any], records: list[dict[str, Any]]) -> list[Section]:
    by_id = {r["id"]: r for r in records}
    seed = by_id.get("seed") or {"variant_labels": [], "variant_texts": []}
    cfg = manifest["config"]
    details = Table(caption="Run details (manifest.json and result.json hold them all).", columns=("", ""), rows=(
        ("seed set", f"{manifest['seed_set']['name']} ({manifest['seed_set']['path']})"),
        ("model", manifest["model_name"]), ("proposer", cfg["proposer"]),
        ("pool", f"{manifest['pool']['source']} ({manifest['pool']['clauses']} sentences)" if manifest["pool"] else "none"),
        ("prompts", f"{cfg['prompts']}: {result['selection_prompts']} selection, {result['held_out']['n_prompts']} held-out"),
        ("search", f"population {cfg['population']}, {cfg['generations']} generations, tolerance {cfg['tolerance']}, "
                   f"{cfg['max_new_tokens']} new tokens, seed {cfg['seed']}"),
        ("work", f"{result['candidates']} candidates measured; {result['model_calls']['generate']} responses sampled, "
                 f"{result['model_calls']['score']} scored in this invocation; {result['seconds']['total']} s")))
    chain = _chain(by_id, result["best"])
    lineage = [Preformatted(text_diff(seed, r), f"{r['id']} ({r['operator']}, parent {r['parent']}"
                            + (f" + {r['second_parent']}" if r.get("second_parent") else "") + f"): {r['detail']}"
                            + (" [model-written text]" if r.get("model_written") else "")) for r in chain[1:]]
    gens = result["generations"]
    return [
        Section("Verdict", "verdict", (Paragraph(result["verdict"]),
                                       Bullets(tuple(result["flags"]), "Flags raised for this run", warn=True)
                                       if result["flags"] else Paragraph("No flags."), details)),
        Section("Held-out comparison", "held-out", (_held_out_table(result["held_out"], result["best"]),)),
        Section("Search", "search", (_generation_table(gens),
                                     *((_generation_figure(gens, by_id.get("seed")),) if gens else ()))),
        Section("The winner's lineage", "lineage", tuple(lineage) or (Paragraph("The best is the seed itself."),)),
        Section("All candidates", "candidates", (_candidates_table(records),)),
        Section("Method", "method", tuple(Paragraph(f"{term}: {text}") for term, text in METHOD)
                + (Preformatted(manifest["command"], "Reproduce this run"),)),
    ]


def write_report(out_dir: Path) -> tuple[Path, Path]:
    """Write report.html, report.md and figures/ into an evolve folder; returns the two paths."""
    out_dir = Path(out_dir)
    manifest = _read_json(out_dir / "manifest.json")
    result = _read_json(out_dir / "result.json")
    records = read_lineage(out_dir / LINEAGE_FILE)
    page = Page(title=f"si evolve: {manifest['seed_set']['name']}", sections=tuple(_sections(manifest, result, records)),
                footer="Made by si-toolkit's si evolve. Numbers: SI-SPEC §3-5 and §7.")
    for section in page.sections:
        for block in section.blocks:
            if isinstance(block, Figure):
                atomic_write_bytes(out_dir / "figures" / block.filename, block.png)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(md_path, render_page_markdown(page))
    atomic_write_text(html_path, render_page_html(page))
    return html_path, md_path
