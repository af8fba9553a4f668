"""Figures of the report, drawn with matplotlib's Agg canvas into PNG bytes.

No pyplot: each figure is its own `matplotlib.figure.Figure` on a `FigureCanvasAgg`, so drawing
touches no global state and needs no display. Every figure reads in greyscale: series differ by
marker shape, hatching and line style, not only by colour; the heatmap uses a single-hue map
whose lightness rises with the value.
"""

from __future__ import annotations

import io
import math
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from si_toolkit.report.document import Figure
from si_toolkit.report.tables import LN2, ordered_sets, rank_rows

__all__ = ["ranking_figure", "rank_figure", "confusion_figure", "breakdown_figure", "plain_label"]

DPI = 110  # pixels per inch: sharp in a browser at 100 % zoom, small files
_MAX_LABEL = 32  # characters of a set or variant name shown on an axis
_ANNOTATE_MAX_K = 12  # write the value in each heatmap cell up to this K
_TICKS_MAX_K = 24  # above this K the heatmap shows indices instead of labels
_STYLES = {  # status -> (marker, face colour, label); shape and fill tell them apart in greyscale
    "leader": ("o", "black", "leader"),
    "tied": ("D", "0.55", "tied with leader (ΔSI CI includes 0)"),
    "below": ("s", "white", "clearly below the leader"),
}


def plain_label(text: str, limit: int = _MAX_LABEL) -> str:
    """User text made safe for a matplotlib label: cut to `limit` chars, `$` escaped.

    An unescaped `$` pair would switch matplotlib to mathtext and a bad formula would raise.
    """
    one_line = " ".join(str(text).split())
    cut = one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"
    return cut.replace("$", r"\$")


def _png(fig: MplFigure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # No metadata: the PNG bytes then depend only on the data, not on the matplotlib version.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _status(row: dict[str, Any]) -> str:
    if row.get("rank") == 1:
        return "leader"
    return "tied" if row.get("tied_with_leader") else "below"


def ranking_figure(est: dict[str, Any]) -> Figure:
    """SI per set with CI bars (line at 0, ceiling 1) beside MI in bits against log2 K."""
    names = ordered_sets(est)
    ranks = rank_rows(est)
    sets = est["sets"]
    fig = MplFigure(figsize=(10.0, 1.6 + 0.45 * len(names)), layout="constrained")
    ax_si, ax_mi = fig.subplots(1, 2, sharey=True)
    ys = list(range(len(names)))
    for y, name in zip(ys, names):
        marker, face, _ = _STYLES[_status(ranks.get(name, {}))]
        entry = sets[name]
        lo, hi = entry["si_ci"]
        ax_si.errorbar(entry["si"], y, xerr=[[entry["si"] - lo], [hi - entry["si"]]], fmt=marker,
                       mfc=face, mec="black", ecolor="black", capsize=4, ms=8)
        bits = entry.get("mi_col_bits", None if entry.get("mi_col_nats") is None else entry["mi_col_nats"] / LN2)
        if bits is not None:
            ci = entry.get("mi_col_ci")
            err = None if ci is None else [[bits - ci[0] / LN2], [ci[1] / LN2 - bits]]
            ax_mi.errorbar(bits, y, xerr=err, fmt=marker, mfc=face, mec="black", ecolor="black", capsize=4, ms=8)
        ax_mi.plot([math.log2(entry["K"])] * 2, [y - 0.35, y + 0.35], color="black", ls=":", lw=2)
    for ax in (ax_si, ax_mi):
        ax.axvline(0.0, color="0.3", lw=1)
        ax.grid(axis="x", color="0.85", lw=0.8)
        ax.set_axisbelow(True)
    ax_si.axvline(1.0, color="black", ls="--", lw=1)
    ax_si.set_yticks(ys, [plain_label(n) for n in names])
    ax_si.invert_yaxis()  # rank 1 on top
    ax_si.set_xlabel(r"SI = $\hat{I}_{\mathrm{col}}$(C; CoT | X) / log K  (fraction, ceiling 1)")
    ax_mi.set_xlabel(r"$\hat{I}_{\mathrm{col}}$(C; CoT | X)  (bits; dotted: ceiling log$_2$ K)")
    ax_si.set_title("Sufficiency Index per set")
    ax_mi.set_title("Mutual information per set")
    ax_si.set_xlim(min(-0.05, min(sets[n]["si_ci"][0] for n in names) - 0.05), 1.08)
    handles = [Line2D([], [], marker=m, mfc=f, mec="black", ls="", ms=8, label=lab) for m, f, lab in _STYLES.values()]
    handles.append(Line2D([], [], color="black", ls="--", label="ceiling SI = 1"))
    handles.append(Line2D([], [], color="black", ls=":", lw=2, label=r"ceiling log$_2$ K (bits)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    conf = est.get("settings", {}).get("confidence", 0.95)
    return Figure(
        filename="ranking.png",
        alt="Ranking: SI and mutual information per set with confidence intervals",
        caption=f"SI (left) and Î_{{col}} in bits (right) per set, rank 1 on top, with {100 * conf:g} % "
        "prompt-level bootstrap CIs. Marker shape: leader, tied with it, or clearly below.",
        png=_png(fig),
    )


def rank_figure(est: dict[str, Any]) -> Figure | None:
    """Each set's rank interval over the joint prompt resamples, with P(rank 1); None without intervals."""
    names = ordered_sets(est)
    ranks = rank_rows(est)
    intervals = [ranks.get(name, {}).get("rank_interval") for name in names]
    if not any(intervals):
        return None
    fig = MplFigure(figsize=(10.0, 1.4 + 0.45 * len(names)), layout="constrained")
    ax = fig.subplots()
    right = []
    for y, (name, interval) in enumerate(zip(names, intervals)):
        row = ranks.get(name, {})
        marker, face, _ = _STYLES[_status(row)]
        if interval:
            low, high = interval
            ax.plot([low, high], [y, y], color="black", lw=6 if low != high else 0, solid_capstyle="butt", alpha=0.35)
            ax.plot([low, high], [y, y], color="black", lw=1.2, marker="|", ms=14)
        ax.plot([row.get("rank", y + 1)], [y], marker=marker, mfc=face, mec="black", ms=10, ls="")
        p1 = row.get("p_rank1")
        right.append("P(rank 1) n/a" if p1 is None else f"P(rank 1) = {100 * p1:.0f} %")
    ax.set_yticks(range(len(names)), [plain_label(n) for n in names])
    ax.set_ylim(len(names) - 0.5, -0.5)  # rank 1 on top
    twin = ax.twinx()  # P(rank 1) as labels on the right edge, one per set
    twin.set_ylim(ax.get_ylim())
    twin.set_yticks(range(len(names)), right)
    ax.set_xticks(range(1, len(names) + 1))
    ax.set_xlim(0.5, len(names) + 0.5)
    ax.grid(axis="x", color="0.85", lw=0.8)
    ax.set_axisbelow(True)
    ax.set_xlabel("rank (1 = highest SI)")
    conf = est.get("settings", {}).get("confidence", 0.95)
    ax.set_title(f"Rank of each set over prompt resamples: point rank and {100 * conf:g} % rank interval")
    return Figure(
        filename="rank-intervals.png",
        alt="Rank intervals: each set's range of ranks over prompt resamples, with the probability of ranking first",
        caption=f"Marker: the set's rank by SI; bar: its {100 * conf:g} % rank interval when all sets are "
        "resampled together on their common prompts; a single tick means the rank is decided. Right: the share "
        "of resamples in which the set ranks first.",
        png=_png(fig),
    )


def confusion_figure(index: int, name: str, entry: dict[str, Any], labels: list[str]) -> Figure | None:
    """K×K heatmap of the mean posterior p(c_i | CoT) for responses of each true variant j."""
    matrix = entry.get("confusion")
    if matrix is None:
        return None
    k = len(matrix)
    side = min(9.0, 3.2 + 0.42 * k)
    # Room for the row labels left of the heatmap (constrained layout clips them otherwise).
    longest = max((len(plain_label(lab, 18)) for lab in labels[:k]), default=2) if k <= _TICKS_MAX_K else 2
    fig = MplFigure(figsize=(side + 1.6 + 0.07 * longest, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label=r"mean posterior p($c_i$ | CoT)  (probability)", shrink=0.85)
    for j in range(k):
        # Outline the diagonal (correct identification) so it reads without colour.
        ax.add_patch(Rectangle((j - 0.5, j - 0.5), 1, 1, fill=False, ec="black", lw=1.5, ls="--"))
        if k <= _ANNOTATE_MAX_K:
            for i in range(k):
                value = matrix[j][i]
                ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if value > 0.6 else "black")
    if k <= _TICKS_MAX_K:
        names = [plain_label(lab, 18) for lab in labels[:k]] if len(labels) >= k else [str(i) for i in range(k)]
        ax.set_xticks(range(k), names, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center")
        ax.set_yticks(range(k), names)
    ax.set_xlabel("identified condition i")
    ax.set_ylabel("true variant j (sampled under)")
    ax.set_title(plain_label(f"Confusion: {name}", 60))
    return Figure(
        filename=f"set{index:02d}-confusion.png",
        alt=f"Confusion heatmap for set {name}",
        caption="Mean posterior p(c_{i} | CoT) (span cot, summed critic): row = variant the response was "
        "sampled under, column = condition it is attributed to; the dashed diagonal is correct "
        "identification, off-diagonal mass shows which principles the CoT confuses.",
        png=_png(fig),
    )


def breakdown_figure(index: int, name: str, entry: dict[str, Any]) -> Figure | None:
    """Bars of per-principle SI with CIs (antithesis sets) or of per-variant SI."""
    if entry.get("per_principle"):
        items = entry["per_principle"]
        names = [plain_label(str(p.get("id", "?")), 20) for p in items]
        what, hatch = "per principle", "//"
        cis = [p.get("si_ci") for p in items]
        caption = "SI per principle: all-positive vs that principle flipped (K = 2), with bootstrap CIs."
    elif entry.get("per_variant"):
        items = entry["per_variant"]
        names = [plain_label(str(v.get("label", v.get("variant"))), 20) for v in items]
        what, hatch = "per variant", "\\\\"
        cis = [None] * len(items)
        caption = "SI per variant: (log K + mean log posterior of its responses) / log K."
    else:
        return None
    values = [float(p["si"]) if p.get("si") is not None else math.nan for p in items]
    fig = MplFigure(figsize=(min(11.0, 3.0 + 0.7 * len(items)), 3.6), layout="constrained")
    ax = fig.subplots()
    xs = list(range(len(items)))
    ax.bar(xs, values, color="0.85", edgecolor="black", hatch=hatch, width=0.6)
    for x, v, ci in zip(xs, values, cis):
        if ci is not None and not math.isnan(v):
            ax.errorbar(x, v, yerr=[[v - ci[0]], [ci[1] - v]], fmt="none", ecolor="black", capsize=5)
    ax.axhline(0.0, color="0.3", lw=1)
    ax.axhline(1.0, color="black", ls="--", lw=1, label="ceiling SI = 1")
    ax.set_xticks(xs, names, rotation=30 if len(items) > 4 else 0, ha="right" if len(items) > 4 else "center")
    ax.set_ylabel("SI  (fraction of log K)")
    ax.set_title(plain_label(f"SI {what}: {name}", 48))
    ax.legend(loc="upper right", fontsize=8, frameon=True, framealpha=1.0)
    low = min([0.0] + [ci[0] for ci in cis if ci is not None] + [v for v in values if not math.isnan(v)])
    ax.set_ylim(low - 0.05, 1.25)  # headroom above the ceiling line for the legend
    return Figure(
        filename=f"set{index:02d}-breakdown.png",
        alt=f"SI {what} for set {name}",
        caption=caption,
        png=_png(fig),
    )
