"""Tables of the report and si.csv, built from estimates.json and manifest.json.

Numbers are taken as the estimator wrote them (house rule 1: the report never recomputes an
SI-SPEC quantity); this module only orders, converts nats to bits and formats them.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from si_toolkit.report.document import Table

__all__ = [
    "fmt",
    "fmt_ci",
    "fmt_pct",
    "fmt_p",
    "fmt_rank_interval",
    "confidence_label",
    "ordered_sets",
    "ranking_table",
    "set_summary_table",
    "breakdown_table",
    "si_csv",
]

LN2 = math.log(2.0)
NA = "n/a"


def fmt(x: Any, digits: int = 3) -> str:
    """A number with `digits` decimals, or "n/a" when absent; never "-0.000"."""
    if x is None:
        return NA
    # Rounding error around an exact 0 (e.g. identical variants) would otherwise print as -0.000.
    value = round(float(x), digits) + 0.0
    return f"{value:.{digits}f}"


def fmt_ci(ci: Any, digits: int = 3, scale: float = 1.0) -> str:
    """An interval as "[low, high]", each end divided by `scale` (e.g. ln 2 for bits)."""
    if ci is None:
        return NA
    return f"[{fmt(float(ci[0]) / scale, digits)}, {fmt(float(ci[1]) / scale, digits)}]"


def fmt_pct(x: Any) -> str:
    return NA if x is None else f"{100.0 * float(x):.1f} %"


def fmt_p(p: Any, at_floor: Any = False) -> str:
    """A p-value, or "≤ p" when it is the resolution floor (1/n below 20 prompts, else 1/B).

    At the floor the test inversion gave p at most that value; printing "p = 0.25" with 4
    prompts would claim a precision the data do not have (SI-SPEC §5).
    """
    if p is None:
        return NA
    if at_floor:
        return f"≤ {float(p):.2g}"
    return "< 0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def fmt_rank_interval(interval: Any) -> str:
    """A rank interval as "2" when decided (width 1), else "1–3"; "n/a" when absent."""
    if not interval:
        return NA
    low, high = int(interval[0]), int(interval[1])
    return str(low) if low == high else f"{low}–{high}"


def confidence_label(est: dict[str, Any]) -> str:
    """The CI level of the run, e.g. "95 %" (estimates.json settings.confidence, default 0.95)."""
    level = est.get("settings", {}).get("confidence", 0.95)
    return f"{100.0 * float(level):g} %"


def ordered_sets(est: dict[str, Any]) -> list[str]:
    """Set names in rank order; sets missing from the ranking follow in file order."""
    ranked = [row["set"] for row in sorted(est["ranking"], key=lambda r: r["rank"])]
    return ranked + [name for name in est["sets"] if name not in ranked]


def rank_rows(est: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["set"]: row for row in est["ranking"]}


def _mi_bits(entry: dict[str, Any]) -> float | None:
    if entry.get("mi_col_bits") is not None:
        return float(entry["mi_col_bits"])
    return None if entry.get("mi_col_nats") is None else float(entry["mi_col_nats"]) / LN2


def _with_ci(value: str, ci: str) -> str:
    return value if ci == NA else f"{value} {ci}"


def ranking_table(est: dict[str, Any], manifest: dict[str, Any]) -> Table:
    """One row per set in rank order: SI with CI, rank interval, P(rank 1), ΔSI to the leader, p, MI, rates."""
    names = ordered_sets(est)
    ranks = rank_rows(est)
    conf = confidence_label(est)
    rows = []
    for name in names:
        entry, row = est["sets"][name], ranks.get(name, {})
        tied = row.get("tied_with_leader")
        leader = row.get("rank") == 1
        rows.append((
            str(row.get("rank", NA)),
            name,
            str(int(entry["K"])),
            f"{int(entry['n_prompts'])} × {int(entry['replicates'])}",
            _with_ci(fmt(entry["si"]), fmt_ci(entry["si_ci"])),
            fmt_rank_interval(row.get("rank_interval")),
            fmt_pct(row.get("p_rank1")),
            "—" if leader else _with_ci(fmt(row.get("delta_to_leader")), fmt_ci(row.get("delta_ci"))),
            "—" if leader else fmt_p(row.get("p_value"), row.get("p_at_floor")),
            NA if tied is None else ("leader" if leader else ("yes" if tied else "no")),
            f"{fmt(_mi_bits(entry))} / {math.log2(entry['K']):.3f}",
            f"{fmt_pct(entry.get('accuracy'))} / {fmt_pct(entry.get('chance', 1.0 / entry['K']))}",
            fmt(entry.get("cot_share"), 2),
            fmt_pct(entry.get("format_rate")),
        ))
    columns = (
        "Rank", "Set", "K", "n × R", f"SI [{conf} CI]", f"Rank [{conf} interval]", "P(rank 1)",
        f"ΔSI = SI(set) − SI(leader) [{conf} CI]", "p", "Tied with leader", "MI (bits) / log₂ K",
        "Accuracy / chance", "CoT share", "Format rate",
    )
    numeric = (True, False, True, True, True, True, True, True, True, False, True, True, True, True)
    caption = (
        "Sets ranked by SI (span cot, summed critic). Rank interval and P(rank 1): ranks over joint prompt "
        "resamples. ΔSI from a paired prompt-level bootstrap; a set is tied with the leader when the CI of "
        "ΔSI includes 0, and p inverts the same interval (p < 1 − confidence exactly when the CI excludes 0; "
        "\"≤\" marks the finest p the prompts resolve)."
    )
    return Table(caption=caption, columns=columns, rows=tuple(rows), numeric=numeric)


def set_summary_table(entry: dict[str, Any], conf: str, critic: str = "sum") -> Table:
    """The SI-SPEC quantities of one set with their CIs and the reference each is read against.

    The row and symmetric bounds are shown for the mean critic only (SI-SPEC §3): under the
    summed critic the row bound compares responses of different lengths and is not an MI.
    """
    k = int(entry["K"])
    bits_ci = fmt_ci(entry.get("mi_col_ci"), scale=LN2)
    mean_cot = entry.get("spans", {}).get("cot", {}).get("mean", {}) if critic == "sum" else entry
    rows = (
        ("SI", fmt(entry["si"]), fmt_ci(entry["si_ci"]), "0 = no trace of the principle; 1 = ceiling"),
        ("Î_{col}(C; CoT | X), bits", fmt(_mi_bits(entry)), bits_ci, f"ceiling log₂ K = {math.log2(k):.3f} bits"),
        ("Î_{col}(C; CoT | X), nats", fmt(entry.get("mi_col_nats")), fmt_ci(entry.get("mi_col_ci")),
         f"ceiling log K = {math.log(k):.3f} nats"),
        ("Row / symmetric bound, mean critic (nats per token)",
         f"{fmt(mean_cot.get('mi_row_nats'))} / {fmt(mean_cot.get('mi_sym_nats'))}", NA,
         "InfoNCE over the K responses of one replicate / mean of row and column (SAMI critic); not comparable "
         "with SI"),
        ("Identification accuracy", fmt_pct(entry.get("accuracy")), _pct_ci(entry.get("accuracy_ci")),
         f"chance 1/K = {fmt_pct(entry.get('chance', 1.0 / k))}; ties shared"),
        ("CoT share", fmt(entry.get("cot_share"), 2), fmt_ci(entry.get("cot_share_ci"), 2),
         "I(C; CoT | X) / I(C; response | X); 1 = all of it is in the reasoning; n/a without an answer span"),
        ("Format rate", fmt_pct(entry.get("format_rate")), NA, "flagged below 50 %"),
        ("Prompts × replicates", f"{int(entry['n_prompts'])} × {int(entry['replicates'])}", NA,
         "flagged below 20 prompts"),
    )
    return Table(
        caption=f"Estimates with {conf} prompt-level bootstrap CIs.",
        columns=("Quantity", "Estimate", f"{conf} CI", "Read against"),
        rows=rows,
        numeric=(False, True, True, False),
        formula=(True, False, False, True),
    )


def _pct_ci(ci: Any) -> str:
    return NA if ci is None else f"[{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]"


def breakdown_table(entry: dict[str, Any], labels: list[str], conf: str) -> Table | None:
    """Per-principle SI (antithesis sets, when given) else per-variant SI and accuracy."""
    def label(j: Any) -> str:
        return labels[j] if isinstance(j, int) and 0 <= j < len(labels) else str(j)

    if entry.get("per_principle"):
        rows = tuple(
            (str(p.get("id", NA)), " vs ".join(label(j) for j in p.get("variants", [])),
             fmt(p.get("si")), fmt_ci(p.get("si_ci")))
            for p in entry["per_principle"]
        )
        return Table(
            caption="Per-principle SI: the estimator on the two variants {all-positive, principle "
            "flipped} (K = 2), i.e. how visible that one principle is in the CoT.",
            columns=("Principle", "Variants compared", "SI", f"{conf} CI"),
            rows=rows,
            numeric=(False, False, True, True),
        )
    if entry.get("per_variant"):
        rows = tuple(
            (str(v.get("variant", NA)), str(v.get("label", label(v.get("variant")))),
             fmt(v.get("si")), fmt_pct(v.get("accuracy")))
            for v in entry["per_variant"]
        )
        return Table(
            caption="Per-variant SI: (log K + mean ℓ over the variant's responses) / log K, and how "
            f"often its responses are identified (chance {fmt_pct(entry.get('chance', 1.0 / entry['K']))}).",
            columns=("Variant", "Label", "SI", "Accuracy"),
            rows=rows,
            numeric=(True, False, True, True),
        )
    return None


_CSV_COLUMNS = (
    "rank", "set", "mode", "role", "K", "n_prompts", "replicates", "si", "si_lo", "si_hi",
    "rank_lo", "rank_hi", "p_rank1", "delta_to_leader", "delta_lo", "delta_hi", "p_value", "p_at_floor",
    "tied_with_leader", "mi_col_nats", "mi_col_bits", "mi_col_lo_bits", "mi_col_hi_bits", "log2_K",
    "accuracy", "accuracy_lo", "accuracy_hi", "chance", "cot_share", "cot_share_lo", "cot_share_hi", "format_rate",
)


def si_csv(est: dict[str, Any], manifest: dict[str, Any], roles: dict[str, str | None] | None = None) -> str:
    """si.csv: one row per set in rank order, full-precision numbers, empty cells for n/a.

    delta_to_leader = SI(set) − SI(leader), as in estimates.json (≤ 0 below the leader).
    p_at_floor is true when p_value is the finest p the prompts resolve (read "p ≤ p_value").
    Text cells that a spreadsheet would read as a formula (leading = + - @) get a leading
    apostrophe.
    """
    names = ordered_sets(est)
    ranks = rank_rows(est)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for name in names:
        e, row = est["sets"][name], ranks.get(name, {})
        dci, mci, aci, cci = row.get("delta_ci"), e.get("mi_col_ci"), e.get("accuracy_ci"), e.get("cot_share_ci")
        values = (
            row.get("rank"), _cell_text(name), _cell_text(str(manifest.get("sets", {}).get(name, {}).get("mode", ""))),
            (roles or {}).get(name), e["K"], e["n_prompts"], e["replicates"], e["si"], e["si_ci"][0], e["si_ci"][1],
            *(row.get("rank_interval") or (None, None)), row.get("p_rank1"),
            row.get("delta_to_leader"), _end(dci, 0), _end(dci, 1), row.get("p_value"), row.get("p_at_floor"),
            row.get("tied_with_leader"),
            e.get("mi_col_nats"), _mi_bits(e), _end(mci, 0, LN2), _end(mci, 1, LN2), math.log2(e["K"]),
            e.get("accuracy"), _end(aci, 0), _end(aci, 1), e.get("chance"), e.get("cot_share"),
            _end(cci, 0), _end(cci, 1), e.get("format_rate"),
        )
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()


def _end(ci: Any, i: int, scale: float = 1.0) -> float | None:
    return None if ci is None else float(ci[i]) / scale


def _cell_text(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text
