"""Tests of si_toolkit.report on a synthetic run folder (no model needed).

`make_run` writes a realistic run folder: manifest.json, samples.parquet (with hostile model
output), scores.parquet (a synthetic channel: the true condition's score is raised by a
per-set strength), and estimates.json, for three sets (alternatives, antithesis with
per-principle SI and hostile principle text, and a null control). By default estimates.json is
what the estimate stage writes from those scores; with `legacy=True` it is a file as an earlier
version wrote it (no rank intervals or reliability, ties counted as misses, a recentred-bootstrap
p-value), computed by a small reference implementation here.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from si_toolkit.errors import SIError
from si_toolkit.report import ReportPaths, build_report, response_log_posteriors, select_evidence
from si_toolkit.report.markdown import fenced, md_text
from si_toolkit.report.upgrade import complete_estimates

HOSTILE_PRINCIPLE = 'Be honest. <script>alert("principle")</script>'
HOSTILE_ANTITHESIS = "Deceive when useful. <img src=x onerror=alert('anti')>"
HOSTILE_OUTPUT = "</pre><script>alert('cot')</script> ``` | a | b | <img src=x onerror=alert('out')> $x$ &lt;"
HOSTILE_PROMPT = "Rate this: <iframe src=javascript:alert('prompt')></iframe> **bold** [link](http://x)"
HOSTILE_COMMAND = "si rank principles/*.yaml --name '<script>alert(\"cmd\")</script>'"

# name -> (mode, labels, variant texts, strength of the true condition's score, nats)
SETS: dict[str, tuple[str, list[str], list[str], float]] = {
    # "x_{1}" looks like the report's formula markup: as user text it must stay literal.
    "persona": ("alternatives", ["pirate", "butler"], ["Speak like a pirate x_{1}.", "Speak like a formal butler."], 2.5),
    "constitution": (
        "antithesis",
        ["all-positive", "flip:honest", "flip:careful", "flip:kind"],
        [
            f"1. {HOSTILE_PRINCIPLE}\n2. Be careful.\n3. Be kind.",
            f"1. {HOSTILE_ANTITHESIS}\n2. Be careful.\n3. Be kind.",
            f"1. {HOSTILE_PRINCIPLE}\n2. Be reckless.\n3. Be kind.",
            f"1. {HOSTILE_PRINCIPLE}\n2. Be careful.\n3. Be cruel.",
        ],
        1.2,
    ),
    "null-control": ("alternatives", ["a", "b"], ["Answer the question.", "Answer the question."], 0.0),
}


def _lse(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.exp(x - top).sum(axis=axis))


def _bounds(L: np.ndarray) -> dict[str, Any]:
    """Reference estimates for L: (n, K_cond, K_var, R). Per-prompt I_col, I_row, accuracy, posteriors."""
    n, k, _, r = L.shape
    post = L - _lse(L, 1)[:, None]  # log p(c_i | y_(j,r)), (n, K, K, R)
    ell = np.einsum("xjjr->xjr", post)  # true-variant log posterior, (n, K, R)
    row = np.einsum("xiir->xir", L) - _lse(L, 2)  # (n, K, R)
    others = np.where(np.eye(k, dtype=bool)[None, :, :, None], -np.inf, L).max(axis=1)  # best wrong condition
    hits = np.einsum("xjjr->xjr", L) > others  # ties count as misses (as an earlier version did)
    return {
        "i_col": math.log(k) + ell.mean(axis=(1, 2)),
        "i_row": math.log(k) + row.mean(axis=(1, 2)),
        "acc": hits.mean(axis=(1, 2)),
        "hits": hits,
        "ell": ell,
        "confusion": np.exp(post).mean(axis=(0, 3)).T,  # [j][i]
    }


def _ci(per_prompt: np.ndarray, rng: np.random.Generator) -> list[float]:
    idx = rng.integers(0, len(per_prompt), size=(300, len(per_prompt)))
    means = per_prompt[idx].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def _set_estimates(L: dict[str, np.ndarray], mode: str, labels: list[str], fmt_rate: float, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    n, k, _, r = L["cot"].shape
    log_k = math.log(k)
    b = {span: _bounds(L[span]) for span in L}
    cot = b["cot"]
    full = float(b["full"]["i_col"].mean())
    share = float(cot["i_col"].mean() / full) if abs(full) > 1e-9 else None  # undefined without information
    out: dict[str, Any] = {
        "K": k, "n_prompts": n, "replicates": r, "log_K": log_k, "chance": 1.0 / k,
        "si": float(cot["i_col"].mean() / log_k), "si_ci": [c / log_k for c in _ci(cot["i_col"], rng)],
        "mi_col_nats": float(cot["i_col"].mean()), "mi_col_ci": _ci(cot["i_col"], rng),
        "mi_col_bits": float(cot["i_col"].mean() / math.log(2)),
        "mi_row_nats": float(cot["i_row"].mean()), "mi_sym_nats": float((cot["i_row"] + cot["i_col"]).mean() / 2),
        "accuracy": float(cot["acc"].mean()), "accuracy_ci": _ci(cot["acc"], rng),
        "cot_share": share, "cot_share_ci": None if share is None else [share - 0.1, share + 0.1], "format_rate": fmt_rate,
        "per_principle": [],
        "per_variant": [
            {"variant": j, "label": labels[j], "si": float((log_k + cot["ell"][:, j].mean()) / log_k),
             "accuracy": float(cot["hits"][:, j].mean())}
            for j in range(k)
        ],
        "confusion": cot["confusion"].tolist(),
        "spans": {s: {c: {"mi_col_nats": float(b[s]["i_col"].mean()), "mi_row_nats": float(b[s]["i_row"].mean()),
                          "mi_sym_nats": float((b[s]["i_col"] + b[s]["i_row"]).mean() / 2),
                          "accuracy": float(b[s]["acc"].mean()), "si": float(b[s]["i_col"].mean() / log_k)}
                      for c in ("sum", "mean")} for s in b},
        "per_prompt_si": {f"p-{x:03d}": float(v / log_k) for x, v in enumerate(cot["i_col"])},
    }
    if mode == "antithesis":
        for m in range(1, k):
            pair = _bounds(L["cot"][:, [0, m]][:, :, [0, m]])["i_col"] / math.log(2)
            out["per_principle"].append({"id": labels[m].split(":")[1], "variants": [0, m],
                                         "si": float(pair.mean()), "si_ci": _ci(pair, rng)})
    return out


def _ranking(per_prompt: dict[str, np.ndarray], sis: dict[str, float]) -> list[dict[str, Any]]:
    """The ranking an earlier version wrote: ΔSI = SI(set) − SI(leader), recentred-bootstrap p."""
    names = sorted(sis, key=lambda s: -sis[s])
    rng = np.random.default_rng(1)
    rows = []
    for rank, name in enumerate(names, 1):
        d = per_prompt[name] - per_prompt[names[0]]
        idx = rng.integers(0, len(d), size=(300, len(d)))
        boot = d[idx].mean(axis=1)
        ci = [0.0, 0.0] if rank == 1 else [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
        p = 1.0 if rank == 1 else float((1 + np.count_nonzero(np.abs(boot - d.mean()) >= abs(d.mean()))) / 301)
        rows.append({"rank": rank, "set": name, "si": sis[name], "si_ci": [0.0, 0.0], "delta_to_leader": float(d.mean()),
                     "delta_ci": ci, "p_value": p, "tied_with_leader": bool(rank == 1 or ci[0] <= 0 <= ci[1])})
    return rows


def make_run(root: Path, n_prompts: int = 24, replicates: int = 2, seed: int = 0, legacy: bool = False) -> Path:
    """Write a synthetic run folder under `root` and return its path (see the module docstring)."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    run.mkdir(parents=True)
    prompts = [{"id": f"p-{x:03d}", "text": HOSTILE_PROMPT if x == 1 else f"What is {x} + {x}?", "answer": str(2 * x)}
               for x in range(n_prompts)]
    samples, scores, estimates, per_prompt = [], [], {}, {}
    for s_idx, (name, (mode, labels, texts, strength)) in enumerate(SETS.items()):
        k = len(labels)
        base = rng.normal(-60.0, 4.0, size=(n_prompts, 1, k, replicates))  # one shift per response
        bonus = strength * np.eye(k)[None, :, :, None]
        # Identical variant texts (strength 0) give identical scores under every condition.
        noise = 1.0 if strength > 0 else 0.0
        L = {"cot": base + bonus + rng.normal(0, noise, size=(n_prompts, k, k, replicates))}
        L["answer"] = -8.0 + 0.3 * bonus + rng.normal(0, noise / 2, size=L["cot"].shape)
        L["full"] = L["cot"] + L["answer"]
        ok = rng.random((n_prompts, k, replicates)) < 0.85
        for x, j, r in np.ndindex(n_prompts, k, replicates):
            hostile = HOSTILE_OUTPUT if (x + j + r) % 5 == 0 else ""
            cot = "\n".join(
                f"Step {t + 1}: as '{labels[j]}' asks, I check {x} + {x} = {2 * x} once more. {hostile if t == 1 else ''}"
                for t in range(2 + (x % 3) * 12)
            )
            text = f"{cot}</think><answer>{2 * x}</answer>" if ok[x, j, r] else cot
            n_cot = 20 + x
            samples.append({"set": name, "prompt_id": f"p-{x:03d}", "variant": j, "variant_label": labels[j],
                            "replicate": r, "token_ids": list(range(n_cot + 5)), "text": text, "cot_end": n_cot,
                            "n_tokens": n_cot + 5, "format_ok": bool(ok[x, j, r]), "finish_reason": "stop"})
            for i in range(k):
                for span, n_tok in (("cot", n_cot), ("answer", 5), ("full", n_cot + 5)):
                    scores.append({"set": name, "prompt_id": f"p-{x:03d}", "condition": i, "variant": j, "replicate": r,
                                   "span": span, "logp_sum": float(L[span][x, i, j, r]), "n_tokens": n_tok})
        estimates[name] = _set_estimates(L, mode, labels, float(ok.mean()), seed + s_idx)
        per_prompt[name] = np.array(list(estimates[name]["per_prompt_si"].values()))
    ranking = _ranking(per_prompt, {n: e["si"] for n, e in estimates.items()})
    for row in ranking:
        row["si_ci"] = estimates[row["set"]]["si_ci"]
    pd.DataFrame(samples).to_parquet(run / "samples.parquet")
    pd.DataFrame(scores).to_parquet(run / "scores.parquet")
    manifest = _manifest(prompts, n_prompts, replicates)
    _write(run / "manifest.json", manifest)
    if legacy:
        settings = {"span": "cot", "critic": "sum", "n_bootstrap": 300, "confidence": 0.95, "seed": seed}
        _write(run / "estimates.json", {"schema": "si-toolkit/estimates/v1", "settings": settings,
                                        "sets": estimates, "ranking": ranking})
    else:
        from si_toolkit.rank.estimation import estimate_run

        _write(run / "estimates.json", estimate_run(
            pd.DataFrame(scores), pd.DataFrame(samples), manifest["sets"], n_bootstrap=300, seed=seed,
            prompt_ids=[p["id"] for p in prompts]))
    return run


def _manifest(prompts: list[dict[str, str]], n_prompts: int, replicates: int) -> dict[str, Any]:
    sets = {
        name: {"path": f"principles/{name}.yaml", "mode": mode, "design": "one-flip" if mode == "antithesis" else None,
               "description": f"Synthetic set {name}; hostile: <b onmouseover=alert(1)>x</b>", "K": len(labels),
               "variant_labels": labels, "variant_texts": texts, "principle_ids": labels,
               "principle_pairs": [[lab.split(":")[1], 0, m] for m, lab in enumerate(labels) if m] if mode == "antithesis" else []}
        for name, (mode, labels, texts, _) in SETS.items()
    }
    return {
        "schema": "si-toolkit/manifest/v1", "created": "2026-11-25T10:00:00+00:00", "command": HOSTILE_COMMAND,
        "config": {"model": "embedded", "backend": "hf", "dtype": "bfloat16", "prompts": "builtin:mixed",
                   "n_prompts": n_prompts, "prefill": True,
                   "sampling": {"max_new_tokens": 128, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                "replicates": replicates, "seed": 0},
                   "set_hashes": {n: "0" * 64 for n in SETS}, "prompt_hash": "1" * 64},
        "model": {"ref": "embedded", "name": "SmolLM2-135M-Instruct", "path": "/cache/smollm2", "backend": "hf",
                  "dtype": "bfloat16", "scoring_model": "SmolLM2-135M-Instruct"},
        "sets": sets, "prompts": prompts,
        "versions": {"si_toolkit": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0"}, "git_sha": "abc1234",
        "stages": {st: {"status": "done", "seconds": 1.0} for st in ("sample", "score", "estimate")},
    }


def _write(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _edit_json(path: Path, edit: Any) -> None:
    obj = json.loads(path.read_text(encoding="utf-8"))
    edit(obj)
    _write(path, obj)


@pytest.fixture(scope="module")
def template_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic run per module; tests that edit it work on a copy (`run_dir`)."""
    return make_run(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="module")
def built(template_run: Path, tmp_path_factory: pytest.TempPathFactory) -> ReportPaths:
    """The report of an unedited copy of the template run, built once for the read-only tests."""
    return build_report(shutil.copytree(template_run, tmp_path_factory.mktemp("built") / "run"))


@pytest.fixture
def run_dir(template_run: Path, tmp_path: Path) -> Path:
    return shutil.copytree(template_run, tmp_path / "run")


class _Tags(HTMLParser):
    """Collects every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _tags(markup: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Tags()
    parser.feed(markup)
    return parser.tags


# --- building the report -------------------------------------------------------------------


def test_build_report_writes_every_file(built: ReportPaths) -> None:
    paths = built
    assert paths.html == built.html.parent / "report.html" and paths.markdown == built.html.parent / "report.md"
    # ranking and rank-interval figures + (breakdown, confusion) for each of the 3 sets
    assert [p.name for p in paths.figures] == [
        "ranking.png", "rank-intervals.png", "set01-breakdown.png", "set01-confusion.png", "set02-breakdown.png",
        "set02-confusion.png", "set03-breakdown.png", "set03-confusion.png",
    ]
    for png in paths.figures:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    page = paths.html.read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == len(paths.figures)  # self-contained
    markdown = paths.markdown.read_text(encoding="utf-8")
    for png in paths.figures:
        assert f"](figures/{png.name})" in markdown
    assert not list(built.html.parent.glob(".*.tmp")) and not list((built.html.parent / "figures").glob(".*.tmp"))


def test_sections_come_in_the_issue_order(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    ids = ['id="headline"', 'id="ranking"', 'id="sets"', 'id="evidence"', 'id="method"']
    positions = [page.index(i) for i in ids]
    assert positions == sorted(positions)


def test_ranking_table_and_csv_follow_the_estimates(built: ReportPaths) -> None:
    est = json.loads((built.html.parent / "estimates.json").read_text())
    order = [r["set"] for r in sorted(est["ranking"], key=lambda r: r["rank"])]
    assert order[0] == "persona" and order[-1] == "null-control"  # strengths 2.5 > 1.2 > 0
    paths = built
    table = pd.read_csv(paths.csv)
    assert list(table["set"]) == order
    assert np.allclose(table["si"], [est["sets"][n]["si"] for n in order])
    # One sign convention everywhere: delta_to_leader = SI(set) − SI(leader), as in estimates.json.
    assert np.allclose(table["delta_to_leader"], [est["sets"][n]["si"] - est["sets"][order[0]]["si"] for n in order])
    assert table["delta_to_leader"].tolist() == [r["delta_to_leader"] for r in sorted(est["ranking"], key=lambda r: r["rank"])]
    assert (table["delta_to_leader"] <= 0).all()
    assert [[lo, hi] for lo, hi in zip(table["rank_lo"], table["rank_hi"])] == [[1, 1], [2, 2], [3, 3]]
    assert table["p_rank1"].tolist() == [1.0, 0.0, 0.0] and table["role"].tolist()[2] == "null-control"
    assert np.allclose(table["mi_col_bits"], [est["sets"][n]["mi_col_nats"] / math.log(2) for n in order])
    page = paths.html.read_text(encoding="utf-8")
    body = page[page.index('id="ranking-table"'):]
    body = body[: body.index("</table>")]
    assert body.count("<tr>") == 1 + len(order)
    assert f"{est['sets']['persona']['si']:.3f}" in body


def test_headline_states_leader_gap_and_clarity(run_dir: Path) -> None:
    page = build_report(run_dir).html.read_text(encoding="utf-8")
    headline = page[page.index('class="headline"'):].split("</p>")[0]
    assert "persona ranks first with SI = " in headline
    assert "ranks first in 100.0 % of the prompt resamples (95 % rank interval: rank 1 only)" in headline
    assert "Next is constitution" in headline and "ΔSI = SI(constitution) − SI(persona) = -0." in headline
    assert "p ≤ 0.0033, the finest p 300 bootstrap resamples resolve" in headline
    assert "The lead is statistically clear" in headline  # the synthetic gap is large

    def tie(est: dict[str, Any]) -> None:
        second = next(r for r in est["ranking"] if r["rank"] == 2)
        second["delta_ci"], second["tied_with_leader"] = [-0.4, 0.05], True

    _edit_json(run_dir / "estimates.json", tie)
    page = build_report(run_dir).html.read_text(encoding="utf-8")
    assert "The lead is not statistically clear" in page and "tied with constitution" in page


def test_clean_run_raises_no_flags(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    assert '<div class="flags"' not in page and "No flags" in page


def test_flags_are_raised(run_dir: Path) -> None:
    def bad_manifest(m: dict[str, Any]) -> None:
        m["config"]["sampling"].update(temperature=0.7, top_p=0.9)
        m["model"]["scoring_model"] = "OtherModel-1B"

    def bad_estimates(e: dict[str, Any]) -> None:
        e["sets"]["persona"]["n_prompts"] = 12
        e["sets"]["constitution"]["format_rate"] = 0.31

    _edit_json(run_dir / "manifest.json", bad_manifest)
    _edit_json(run_dir / "estimates.json", bad_estimates)
    paths = build_report(run_dir)
    page = paths.html.read_text(encoding="utf-8")
    flags = page[page.index('class="flags"'):].split("</div>")[0]
    assert "temperature = 0.7, top_p = 0.9" in flags
    assert "OtherModel-1B" in flags and "SmolLM2-135M-Instruct" in flags
    assert "Few prompts (n &lt; 20): persona (n = 12)" in flags
    assert "Low format rate" in flags and "constitution (31.0 %)" in flags
    assert "temperature = 0.7" in paths.markdown.read_text(encoding="utf-8")


def test_per_set_sections_show_principles_confusion_and_rates(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    section = page[page.index('id="set-2"'):page.index('id="set-3"')]  # constitution ranks 2nd
    breakdown = section[section.index('id="set-2-breakdown"'):].split("</table>")[0]
    assert breakdown.count("<tr>") == 1 + 3  # header + one row per principle
    assert "all-positive vs flip:careful" in breakdown
    assert "chance 1/K = 25.0 %" in section and "Format rate" in section and "CoT share" in section
    assert "set02-confusion.png" in section
    persona = page[page.index('id="set-1"'):page.index('id="set-2"')]
    assert "Per-variant SI" in persona and "pirate" in persona


def test_evidence_shows_most_and_least_identified_chains(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    evidence = page[page.index('id="evidence"'):page.index('id="method"')]
    # K <= 4: 2 most + 1 least per variant; 2 + 4 variants (the null control shows none)
    assert evidence.count('<article class="ev most">') == 2 * 6
    assert evidence.count('<article class="ev least">') == 6
    assert "Shown: the first 1200 of" in evidence  # long chains are cut
    null = evidence.split('<section class="evset">')[3]
    assert "null-control" in null and "<article" not in null
    assert "every response of this set has the same posterior for its true variant" in null
    assert "p(true variant | CoT) = 0.500 (chance is 1/K = 0.500)" in null


def test_method_shows_definitions_and_escaped_command(built: ReportPaths) -> None:
    page = built.html.read_text(encoding="utf-8")
    method = page[page.index('id="method"'):]
    # Formulas render with HTML subscripts; no markup is left as raw text anywhere on the page.
    assert "SI(S) = Î<sub>col</sub>(C; COT | X) / log K" in method
    assert "Σ<sub>t ∈ span s</sub> log π(y<sub>j,r,t</sub> | x, c<sub>i</sub>, y<sub>j,r,&lt;t</sub>)" in method
    assert "ρ<sub>SB</sub> = 2ρ / (1 + ρ)" in method
    assert "_{" not in page.replace("x_{1}", "")  # only the user's own text keeps its braces
    assert "Speak like a pirate x_{1}." in page and "<sub>1</sub>" not in page
    assert "--name &#x27;&lt;script&gt;alert(&quot;cmd&quot;)&lt;/script&gt;&#x27;" in method


# --- escaping --------------------------------------------------------------------------------

_ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "main", "nav", "a", "h1", "h2", "h3", "p",
                 "section", "div", "ul", "li", "table", "caption", "thead", "tbody", "tr", "th", "td", "figure",
                 "img", "figcaption", "small", "details", "summary", "dl", "dt", "dd", "pre", "code", "article",
                 "strong", "sub", "sup", "footer"}


@pytest.mark.parametrize("set_name", ["persona", 'evil<img src=x onerror=alert("set")>'], ids=["plain", "hostile-name"])
def test_html_renders_hostile_text_as_text(run_dir: Path, set_name: str) -> None:
    run = run_dir
    if set_name != "persona":
        def rename(obj: dict[str, Any]) -> None:
            obj["sets"][set_name] = obj["sets"].pop("persona")
            for row in obj.get("ranking", []):
                row["set"] = set_name if row["set"] == "persona" else row["set"]
        _edit_json(run / "estimates.json", rename)
        _edit_json(run / "manifest.json", rename)
        for table in ("samples.parquet", "scores.parquet"):
            frame = pd.read_parquet(run / table)
            frame.loc[frame["set"] == "persona", "set"] = set_name
            frame.to_parquet(run / table)
    page = build_report(run).html.read_text(encoding="utf-8")
    tags = _tags(page)
    assert {t for t, _ in tags} <= _ALLOWED_TAGS
    assert not [(t, a) for t, attrs in tags for a, _ in attrs if a.startswith("on")]
    assert all(dict(attrs)["src"].startswith("data:image/png;base64,") for t, attrs in tags if t == "img")
    assert "&lt;script&gt;alert(&quot;principle&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(&#x27;anti&#x27;)&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#x27;cot&#x27;)&lt;/script&gt;" in page
    assert "&lt;iframe src=javascript:alert(&#x27;prompt&#x27;)&gt;" in page
    if set_name != "persona":
        assert "evil&lt;img src=x onerror=alert(&quot;set&quot;)&gt;" in page


def test_markdown_renders_hostile_text_as_text(built: ReportPaths) -> None:
    from markdown_it import MarkdownIt  # ships with rich

    markdown = built.markdown.read_text(encoding="utf-8")
    # Raw HTML allowed, as GitHub allows a safe subset: any tag in the output came from the file.
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    tags = _tags(rendered)
    assert not {t for t, _ in tags} & {"script", "iframe", "b"}
    assert all(dict(attrs)["src"].startswith("figures/") for t, attrs in tags if t == "img")
    assert not [(t, a) for t, attrs in tags for a, _ in attrs if a.startswith("on")]
    assert not [t for t, attrs in tags if t == "a"]  # "[link](http://x)" in a prompt stays text
    # The hostile strings survive as visible text (escaped once in the rendered HTML).
    assert "&lt;script&gt;alert(&quot;principle&quot;)&lt;/script&gt;" in rendered
    assert "&lt;/pre&gt;&lt;script&gt;alert('cot')&lt;/script&gt;" in rendered
    assert "<table>" in rendered and rendered.count("<table>") >= 1 + 3 * 2


def test_md_text_escapes_syntax_characters() -> None:
    assert md_text("a|b <c> *d* [e](f) `g` &h;\n  i") == r"a\|b \<c\> \*d\* \[e\](f) \`g\` \&h; i"


def test_fenced_block_cannot_be_closed_from_inside() -> None:
    block = fenced("x\n````\n<script>")
    assert block.startswith("`````text\n") and block.endswith("\n`````")


# --- errors and the run folder ---------------------------------------------------------------


def test_missing_estimates_names_the_file_and_fix(run_dir: Path) -> None:
    (run_dir / "estimates.json").unlink()
    with pytest.raises(SIError, match=r"estimates\.json: not found; run `si estimate .*run` first"):
        build_report(run_dir)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"estimates\.json: malformed JSON at line 1 column 2"),
        ('{"schema": "other/v9", "sets": {}}', r"field 'schema' is 'other/v9'"),
        ('{"schema": "si-toolkit/estimates/v1", "sets": {"a": {"K": 2, "n_prompts": 5, "replicates": 1, "si": 0.1}},'
         ' "ranking": [{"rank": 1, "set": "a", "si": 0.1}]}', r"sets\['a'\]\.si_ci must be \[low, high\]"),
        ('{"schema": "si-toolkit/estimates/v1", "sets": {"a": {"K": 2, "n_prompts": 5, "replicates": 1, "si": 0.1,'
         ' "si_ci": [0, 1]}}, "ranking": [{"rank": 1, "set": "b", "si": 0.1}]}', r"ranking\[0\]\.set = 'b'"),
    ],
    ids=["bad-json", "wrong-schema", "missing-ci", "unknown-set"],
)
def test_malformed_estimates_raise_sierror(run_dir: Path, content: str, message: str) -> None:
    (run_dir / "estimates.json").write_text(content, encoding="utf-8")
    with pytest.raises(SIError, match=message) as err:
        build_report(run_dir)
    assert "si estimate" in str(err.value)


def test_failure_leaves_the_previous_report_intact(built: ReportPaths, tmp_path: Path) -> None:
    run_dir = shutil.copytree(built.html.parent, tmp_path / "run")
    before = (run_dir / "report.html").read_bytes()
    (run_dir / "estimates.json").write_text("[]", encoding="utf-8")
    with pytest.raises(SIError):
        build_report(run_dir)
    assert (run_dir / "report.html").read_bytes() == before


def test_report_without_parquet_files_says_what_is_missing(run_dir: Path) -> None:
    (run_dir / "samples.parquet").unlink()
    page = build_report(run_dir).html.read_text(encoding="utf-8")
    assert "samples.parquet not found in the run folder" in page
    assert '<article class="ev' not in page


def test_missing_run_folder_is_an_sierror(tmp_path: Path) -> None:
    with pytest.raises(SIError, match="run folder not found"):
        build_report(tmp_path / "nope")


def test_report_needs_no_torch_and_takes_seconds(run_dir: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; t = time.perf_counter();"
        "from si_toolkit.report import build_report; build_report(Path(sys.argv[1]));"
        "print(time.perf_counter() - t, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, check=True)
    seconds, torch_loaded, transformers_loaded = out.stdout.split()
    assert torch_loaded == "False" and transformers_loaded == "False"
    assert float(seconds) < 30.0  # a few seconds on the 2-core machine; generous for a loaded CI


# --- evidence ----------------------------------------------------------------------------------


def _scores(rows: list[tuple[str, int, int, int, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["prompt_id", "condition", "variant", "replicate", "logp_sum"])
    return frame.assign(set="s", span="cot", n_tokens=10)


def test_response_log_posteriors_hand_worked() -> None:
    # Response (x0, j=0): L = [-1, -3] -> l = -1 - log(e^-1 + e^-3) = -log(1 + e^-2) = -0.126928
    # Response (x0, j=1): L = [-2, -2] -> l = -log 2 = -0.693147
    scores = _scores([("x0", 0, 0, 0, -1.0), ("x0", 1, 0, 0, -3.0), ("x0", 0, 1, 0, -2.0), ("x0", 1, 1, 0, -2.0)])
    out = response_log_posteriors(scores, "s", 2).sort_values("variant")
    assert list(out["prompt_id"]) == ["x0", "x0"] and list(out["replicate"]) == [0, 0]
    assert out["log_post"].to_numpy() == pytest.approx([-0.126928, -0.693147], abs=1e-6)


def test_response_log_posteriors_ignore_a_common_shift() -> None:
    # SI-SPEC §6.5: adding a constant to every score of one response leaves its posterior unchanged.
    rows = [("x", i, j, 0, float(-10 - i - 2 * j)) for i in range(3) for j in range(3)]
    shifted = [(p, i, j, r, v + (7.5 if j == 1 else 0.0)) for p, i, j, r, v in rows]
    a = response_log_posteriors(_scores(rows), "s", 3)["log_post"].to_numpy()
    b = response_log_posteriors(_scores(shifted), "s", 3)["log_post"].to_numpy()
    assert a == pytest.approx(b)


def test_incomplete_score_grid_leaves_evidence_out_with_a_note(run_dir: Path) -> None:
    scores = pd.read_parquet(run_dir / "scores.parquet")
    gap = (scores["set"] == "persona") & (scores["prompt_id"] == "p-003") & (scores["condition"] == 1)
    scores[~gap].to_parquet(run_dir / "scores.parquet")
    with pytest.raises(SIError, match="incomplete grid"):
        response_log_posteriors(scores[~gap], "persona", 2)
    page = build_report(run_dir).html.read_text(encoding="utf-8")
    persona = page[page.index('id="evidence"'):].split('<section class="evset">')[1]
    assert "No examples: " in persona and "incomplete grid" in persona and "<article" not in persona


def test_select_evidence_orders_by_confidence() -> None:
    log_post = pd.DataFrame({"prompt_id": ["a", "b", "c", "d"], "variant": [0] * 4, "replicate": [0] * 4,
                             "log_post": [-0.1, -2.0, -0.5, -1.0]})
    samples = pd.DataFrame({"set": "s", "prompt_id": ["a", "b", "c", "d"], "variant": 0, "variant_label": "v",
                            "replicate": 0, "format_ok": True,
                            "text": ["A</think><answer>1</answer>", "B<answer>", "C", "D"]})
    chosen = select_evidence(log_post, samples, "s", n_most=2, n_least=1)
    assert [(e.prompt_id, e.kind) for e in chosen] == [("a", "most"), ("c", "most"), ("b", "least")]
    assert chosen[0].cot == "A</think>" and chosen[2].cot == "B"  # cot span ends at </think> or <answer>


# --- figures -----------------------------------------------------------------------------------


def test_figure_labels_cannot_switch_on_mathtext() -> None:
    from si_toolkit.report.figures import breakdown_figure, plain_label

    assert plain_label("cost $5 to $10") == r"cost \$5 to \$10"
    # An unescaped "$\frac{$" pair would make matplotlib raise while parsing the formula.
    fig = breakdown_figure(1, "$\\frac{$", {"K": 2, "per_variant": [{"variant": 0, "label": "$\\frac{$", "si": 0.2}]})
    assert fig is not None and fig.png[:8] == b"\x89PNG\r\n\x1a\n"


def test_large_k_confusion_figure_is_drawn_without_cell_text() -> None:
    from si_toolkit.report.figures import DPI, confusion_figure

    k = 30
    matrix = (np.full((k, k), 0.5 / (k - 1)) + np.eye(k) * (0.5 - 0.5 / (k - 1))).tolist()  # rows sum to 1
    fig = confusion_figure(3, "factorial", {"confusion": matrix}, [f"v{j}" for j in range(k)])
    assert fig is not None and fig.filename == "set03-confusion.png"
    width, height = (int.from_bytes(fig.png[16 + 4 * n:20 + 4 * n], "big") for n in range(2))
    assert height == round(9.0 * DPI)  # the figure side is capped at 9 inches for any K


def test_unreadable_scores_file_is_an_sierror(run_dir: Path) -> None:
    (run_dir / "scores.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(SIError, match=r"scores\.parquet: cannot read .*rerun `si score"):
        build_report(run_dir)


def test_report_reads_what_the_estimate_stage_writes(run_dir: Path) -> None:
    # The stage contract: estimates.json as si_toolkit.rank.estimation writes it, from the same scores.
    from si_toolkit.rank.estimation import estimate_run
    from si_toolkit.safeio import atomic_write_json

    manifest = json.loads((run_dir / "manifest.json").read_text())
    estimates = estimate_run(pd.read_parquet(run_dir / "scores.parquet"), pd.read_parquet(run_dir / "samples.parquet"),
                             manifest["sets"], n_bootstrap=200, prompt_ids=[p["id"] for p in manifest["prompts"]])
    atomic_write_json(run_dir / "estimates.json", estimates)
    paths = build_report(run_dir)
    table = pd.read_csv(paths.csv)
    assert list(table["set"]) == ["persona", "constitution", "null-control"]
    si = dict(zip(table["set"], table["si"]))
    # The report shows the stage's sign convention: SI(set) - SI(leader) <= 0.
    assert table["delta_to_leader"].tolist() == pytest.approx(
        [0.0, si["constitution"] - si["persona"], si["null-control"] - si["persona"]])
    assert (table["delta_lo"] <= table["delta_to_leader"] + 1e-12).all()
    page = paths.html.read_text(encoding="utf-8")
    assert "persona ranks first" in page and "The lead is statistically clear" in page
    assert "estimates.json was written by an earlier version" not in page
    assert page.count('<article class="ev most">') == 2 * 6


# --- rank intervals, reliability, p-values and flags (SI-SPEC §3, §5) ---------------------------


def test_reliability_and_rank_intervals_are_shown(built: ReportPaths) -> None:
    est = json.loads((built.html.parent / "estimates.json").read_text())
    page = built.html.read_text(encoding="utf-8")
    reading = est["reliability"]["reading"]
    assert reading.startswith("With 24 prompts the ordering is reliable: ρ_SB = 1.00")
    headline = page[page.index('id="headline"'):page.index('id="ranking"')]
    ranking = page[page.index('id="ranking"'):page.index('id="sets"')]
    shown = html.escape(reading).replace("ρ_SB", "ρ<sub>SB</sub>")
    assert shown in headline and shown in ranking
    assert "Rank [95 % interval]" in ranking and "P(rank 1)" in ranking and "rank-intervals.png" in ranking
    assert "ordering is reliable: ρ<sub>SB</sub> = 1.00" in built.markdown.read_text(encoding="utf-8")


def test_p_value_and_ci_agree_in_every_table(built: ReportPaths) -> None:
    table = pd.read_csv(built.csv).iloc[1:]  # the leader has no comparison
    excludes = (table["delta_hi"] < 0) | (table["delta_lo"] > 0)
    assert ((table["p_value"] < 0.05) == excludes).all()
    assert table["p_at_floor"].all()  # the synthetic gaps are far beyond 300 resamples' resolution
    ranking = built.html.read_text(encoding="utf-8").split('id="ranking-table"')[1].split("</table>")[0]
    assert ranking.count("≤ 0.0033") == 2 and "&lt; 0.001" not in ranking


def test_few_prompts_floor_the_p_value_at_one_over_n(tmp_path: Path) -> None:
    paths = build_report(make_run(tmp_path, n_prompts=8))
    table = pd.read_csv(paths.csv)
    assert table["p_value"].iloc[1:].tolist() == [1 / 8, 1 / 8] and table["p_at_floor"].iloc[1:].all()
    page = paths.html.read_text(encoding="utf-8")
    assert "p ≤ 0.12, the finest p 8 prompts resolve" in page  # never "p < 0.001" with 8 prompts
    assert "no p-value finer than 1/n is shown" in page and "With 8 prompts the ordering is" in page


def test_row_bound_is_shown_for_the_mean_critic_only(built: ReportPaths) -> None:
    est = json.loads((built.html.parent / "estimates.json").read_text())["sets"]["persona"]
    page = built.html.read_text(encoding="utf-8")
    summary = page.split('id="set-1-summary"')[1].split("</table>")[0]
    mean = est["spans"]["cot"]["mean"]
    assert "Row / symmetric bound, mean critic (nats per token)" in summary
    assert f"{mean['mi_row_nats']:.3f} / {mean['mi_sym_nats']:.3f}" in summary
    assert f"{est['mi_row_nats']:.3f}" not in summary  # the summed-critic row bound is not shown beside SI


def test_an_older_estimates_file_is_read_with_the_current_definitions(tmp_path: Path) -> None:
    run = make_run(tmp_path, legacy=True)
    old = json.loads((run / "estimates.json").read_text())
    assert old["sets"]["null-control"]["accuracy"] == 0.0 and "reliability" not in old  # ties were misses
    paths = build_report(run)
    assert json.loads((run / "estimates.json").read_text()) == old  # the file is not rewritten
    page = paths.html.read_text(encoding="utf-8")
    assert "estimates.json was written by an earlier version of si-toolkit" in page
    null = page.split('id="set-3-summary"')[1].split("</table>")[0]
    assert "50.0 %" in null and "chance 1/K = 50.0 %" in null  # recomputed with shared ties
    table = pd.read_csv(paths.csv)
    assert table["rank_lo"].tolist() == [1, 2, 3] and not table["p_rank1"].isna().any()
    excludes = (table["delta_hi"] < 0) | (table["delta_lo"] > 0)
    assert ((table["p_value"].iloc[1:] < 0.05) == excludes.iloc[1:]).all()
    assert "With 24 prompts the ordering is" in page


def test_upgraded_rows_equal_what_the_estimate_stage_writes(built: ReportPaths) -> None:
    current = json.loads((built.html.parent / "estimates.json").read_text())
    old = json.loads(json.dumps(current))
    del old["reliability"]
    for row in old["ranking"]:
        for key in ("p_floor", "p_at_floor", "rank_interval", "p_rank1"):
            del row[key]
        row["p_value"] = 0.5  # an earlier p that disagreed with its CI
    upgraded, note = complete_estimates(old, None)
    assert upgraded["ranking"] == current["ranking"] and upgraded["reliability"] == current["reliability"]
    assert "Not available: accuracy with shared ties" in note
    assert complete_estimates(current, None) == (current, "")


def test_an_older_file_without_per_prompt_si_shows_na(tmp_path: Path) -> None:
    run = make_run(tmp_path, legacy=True)

    def strip(est: dict[str, Any]) -> None:
        for entry in est["sets"].values():
            del entry["per_prompt_si"]
        est["sets"]["persona"]["cot_share"], est["sets"]["persona"]["cot_share_ci"] = 1.0, [1.0, 1.0]

    _edit_json(run / "estimates.json", strip)
    page = build_report(run).html.read_text(encoding="utf-8")
    assert "The reliability of the ordering is not available" in page
    assert "Not available: p-values, rank intervals and reliability" in page
    ranking = page.split('id="ranking-table"')[1].split("</table>")[0]
    assert ranking.count("<td class=num>n/a</td>") >= 3 * 2
    persona = page.split('id="set-1-summary"')[1].split("</table>")[0]
    assert "<td>CoT share</td><td class=num>n/a</td>" in persona  # 1 [1, 1]: no answer span, not a finding


def _set_role_and_si(run: Path, roles: dict[str, str], per_prompt: dict[str, list[float]]) -> None:
    def manifest(m: dict[str, Any]) -> None:
        for name, role in roles.items():
            m["sets"][name]["role"] = role

    def estimates(e: dict[str, Any]) -> None:
        for name, values in per_prompt.items():
            ids = list(e["sets"][name]["per_prompt_si"])
            e["sets"][name]["per_prompt_si"] = dict(zip(ids, values))
            e["sets"][name]["si"] = float(np.mean(values))
            low, high = np.quantile(values, [0.1, 0.9])  # a stand-in CI around the values
            e["sets"][name]["si_ci"] = [float(low), float(high)]

    _edit_json(run / "manifest.json", manifest)
    _edit_json(run / "estimates.json", estimates)


def test_controls_behaving_against_their_role_are_flagged(run_dir: Path) -> None:
    rng = np.random.default_rng(0)
    # persona marked as a positive control but indistinguishable from the null control; the null
    # control separated from 0; constitution's whole CI below 0.
    _set_role_and_si(run_dir, {"persona": "positive-control"}, {
        "persona": list(rng.normal(0.3, 0.05, 24)), "null-control": list(rng.normal(0.3, 0.05, 24)),
        "constitution": list(rng.normal(-0.4, 0.05, 24)),
    })
    page = build_report(run_dir).html.read_text(encoding="utf-8")
    flags = page[page.index('class="flags"'):].split("</div>")[0]
    assert "Positive control persona" in flags and "tied with or below null control null-control" in flags
    assert "Null control null-control is separated from 0" in flags
    assert "constitution has SI = -0.4" in flags or "constitution has SI = -0.3" in flags and "scorer prefers the other variants" in flags
    assert "too few prompts (n = 24) or responses too short" in flags
    assert "(rank 1, mode alternatives, positive control)" in page


def test_controls_behaving_as_controls_raise_no_flag(run_dir: Path) -> None:
    _edit_json(run_dir / "manifest.json", lambda m: m["sets"]["persona"].update(role="positive-control"))
    page = build_report(run_dir).html.read_text(encoding="utf-8")
    assert '<div class="flags"' not in page  # persona far above 0 and the null control, which covers 0
    assert "(rank 3, mode alternatives, null control)" in page  # role from the set's name
