"""si evolve on a backend whose SI is a known function of the variant texts (tests/text_channel.py).

The channel makes the optimum, the null and a drifting clause known in advance, so these tests
check the search itself: it finds the optimum within its budget, its selection SI is biased
upward on a null while the held-out ΔSI covers 0, pool-only runs never write a sentence nobody
wrote, antithesis structure survives, results are deterministic under a seed, inadmissible
candidates never win, a shared variant is sampled once, and the budget stops it cleanly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from si_toolkit import estimators as est
from si_toolkit.errors import SIError
from si_toolkit.evolve import EvolveConfig, evolve, read_lineage
from si_toolkit.evolve.pool import split_clauses
from si_toolkit.principles import load_principle_set
from si_toolkit.evolve.search import Info, _groups, round_schedule
from text_channel import REWRITE_SUFFIX, TextChannelBackend, anchored_channel, hashed_channel

ANCHORS = ["Alpha anchor.", "Beta anchor."]
GOOD = [["Good alpha one.", "Good alpha two."], ["Good beta one.", "Good beta two."]]
SEED = ("mode: alternatives\nprinciples:\n"
        "  - id: alpha\n    text: Alpha anchor. Good alpha one. Plain sentence one.\n"
        "  - id: beta\n    text: Beta anchor. Good beta one. Plain sentence two.\n")
POOL = "Good alpha two.\nGood beta two.\nPlain sentence three.\n"
ANTI = ("mode: antithesis\npreamble: Follow these rules.\nprinciples:\n"
        "  - id: alpha\n    text: Alpha anchor. Good alpha one.\n    antithesis: Alpha reversed. Plain sentence one.\n"
        "  - id: beta\n    text: Beta anchor. Good beta one.\n    antithesis: Beta reversed. Plain sentence two.\n")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _files(tmp_path: Path, seed: str = SEED, pool: str | None = POOL) -> tuple[Path, Path | None]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    seed_path = tmp_path / "seed.yaml"
    seed_path.write_text(seed, encoding="utf-8")
    pool_path = None
    if pool is not None:
        pool_path = tmp_path / "pool.txt"
        pool_path.write_text(pool, encoding="utf-8")
    return seed_path, pool_path


def _config(**kw) -> EvolveConfig:
    base = dict(model="text-channel", selection_prompts=24, holdout_prompts=24, population=6, generations=3,
                n_bootstrap=400)
    return EvolveConfig(**{**base, **kw})


def _anchored(tokenizer, beta: float = 1.5, **kw) -> TextChannelBackend:
    return TextChannelBackend(tokenizer, anchored_channel(ANCHORS, GOOD, n_vocab=64, beta=beta, **kw), length=12)


@pytest.mark.parametrize(("n", "rounds"), [(48, [6, 12, 24, 48]), (24, [6, 12, 24]), (8, [4, 8]), (5, [5]),
                                           (100, [12, 25, 50, 100])])
def test_round_schedule_halves_down_to_a_minimum(n, rounds) -> None:
    assert round_schedule(n) == rounds


def test_groups_fill_one_call_by_distinct_texts_not_by_cache() -> None:
    def info(i: int, texts: tuple[str, str]) -> Info:
        return Info(f"c{i}", 0, None, texts, None, None, "add", "")  # type: ignore[arg-type]

    children = [info(i, ("shared", f"new {i}")) for i in range(10)]
    # 6 new prompts: up to 64 // 6 = 10 distinct texts per call -> 9 children (1 shared + 9 new), then 1
    assert [len(g) for g in _groups(children, 6)] == [9, 1]
    assert [len(g) for g in _groups(children, 40)] == [1] * 10  # a group always holds one candidate


def test_search_finds_the_optimum_within_its_budget(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path)
    result = evolve(seed, pool=pool, config=_config(population=8, generations=12, selection_prompts=32),
                    out=tmp_path / "out", backend=_anchored(tokenizer))
    alpha, beta = (p.text for p in result.best.principles)
    # The optimum: each variant keeps its anchor and holds both of its own good clauses.
    assert {"Alpha anchor.", *GOOD[0]} <= set(split_clauses(alpha)), alpha
    assert {"Beta anchor.", *GOOD[1]} <= set(split_clauses(beta)), beta
    held = result.summary["held_out"]
    assert held["delta_ci"][0] > 0.0  # a real gain shows on the held-out prompts
    assert result.verdict.startswith("best: SI ") and "ΔSI +" in result.verdict


def _true_si(channel, texts: tuple[str, str], length: int, n: int = 20_000) -> float:
    """SI of a two-variant set under the channel, by exact log-probs on many sampled responses."""
    rng = np.random.default_rng(0)
    logp = [channel(t) for t in texts]
    L = np.zeros((n, 2, 2, 1))
    for j in range(2):
        y = rng.choice(len(logp[j]), size=(n, length), p=np.exp(logp[j]))
        for i in range(2):
            L[:, i, j, 0] = logp[i][y].sum(axis=1)
    return float(est.si_per_prompt(L).mean())


def test_null_winner_selection_si_is_biased_up_while_held_out_delta_covers_zero(tokenizer, tmp_path) -> None:
    # Every distinct text emits its own marker token with the same weight: every candidate has
    # the same true SI as the seed (their two markers differ), so no edit is a real gain.
    channel = hashed_channel(n_vocab=64, beta=1.5)
    texts = ("First text. Shared sentence.", "Second text. Other sentence.")
    assert int(np.argmax(channel(texts[0]))) != int(np.argmax(channel(texts[1])))
    true_si = _true_si(channel, texts, length=10)
    seed_text = f"mode: alternatives\nprinciples:\n  - id: a\n    text: {texts[0]}\n  - id: b\n    text: {texts[1]}\n"
    pool = "Neutral one.\nNeutral two.\nNeutral three.\nNeutral four.\n"
    selection_bias, held_out_bias, deltas, covered = [], [], [], []
    for s in range(8):
        seed, pool_path = _files(tmp_path / f"s{s}", seed_text, pool)
        result = evolve(seed, pool=pool_path, config=_config(seed=s), out=tmp_path / f"s{s}" / "out",
                        backend=TextChannelBackend(tokenizer, channel, length=10))
        held = result.summary["held_out"]
        selection_bias.append(result.summary["best_selection"]["si"] - true_si)
        held_out_bias.append(held["best"]["si"] - true_si)
        deltas.append(held["delta_si"])
        covered.append(held["delta_ci"][0] <= 0.0 <= held["delta_ci"][1])

    def t_stat(values: list[float]) -> float:
        v = np.array(values)
        return float(v.mean() / (v.std(ddof=1) / np.sqrt(len(v))))

    # Winner's curse: the winner's selection SI is above the true SI, clearly, over seeds ...
    assert t_stat(selection_bias) > 3.0, selection_bias
    # ... while on the held-out prompts neither its SI nor its ΔSI to the seed is biased, and the
    # ΔSI CI covers 0 in most runs (a 95 % CI; a few misses are expected at 24 prompts).
    assert abs(t_stat(held_out_bias)) < 3.0, held_out_bias
    assert abs(t_stat(deltas)) < 3.0, deltas
    assert sum(covered) >= 5, covered


def _user_sentences(seed: Path, pool: Path) -> set[str]:
    s = load_principle_set(seed)
    texts = [p.text for p in s.principles] + [p.antithesis or "" for p in s.principles]
    return {c for t in texts for c in split_clauses(t)} | set(split_clauses(pool.read_text()))


def test_pool_only_run_never_writes_a_sentence_not_in_seed_or_pool(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path)
    result = evolve(seed, pool=pool, config=_config(), out=tmp_path / "out", backend=_anchored(tokenizer))
    allowed = _user_sentences(seed, pool)
    records = read_lineage(result.out_dir / "lineage.jsonl")
    assert len(records) > 10
    for r in records:
        for p in r["principles"]:
            assert set(split_clauses(p["text"])) <= allowed, (r["id"], p["text"])
        assert r["model_written"] is False
    assert {p.text for p in result.best.principles} <= {
        p["text"] for r in records for p in r["principles"]}


def test_antithesis_structure_is_kept_by_every_candidate(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path, ANTI)
    seed_set = load_principle_set(seed)
    result = evolve(seed, pool=pool, config=_config(), out=tmp_path / "out", backend=_anchored(tokenizer))
    records = read_lineage(result.out_dir / "lineage.jsonl")
    labels = [v.label for v in seed_set.variants]
    for r in records:
        assert r["variant_labels"] == labels  # all-positive, flip:alpha, flip:beta: same K, same order
        texts = {p["id"]: p for p in r["principles"]}
        assert list(texts) == ["alpha", "beta"]
        positive = r["variant_texts"][0]
        for k, pid in enumerate(("alpha", "beta"), start=1):
            # variant flip:k is the all-positive constitution with only principle k reversed
            assert r["variant_texts"][k] == positive.replace(f"{k}. {texts[pid]['text']}",
                                                             f"{k}. {texts[pid]['antithesis']}")
            # and a reversal holds only clauses of the seed's reversal of the same principle
            seed_anti = split_clauses(seed_set.principles[k - 1].antithesis)
            assert set(split_clauses(texts[pid]["antithesis"])) <= set(seed_anti)
    assert result.best.mode == "antithesis" and [v.label for v in result.best.variants] == labels


def test_same_seed_same_result_other_seed_other_search(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path)
    outs = []
    for name, s in (("a", 3), ("b", 3), ("c", 4)):
        evolve(seed, pool=pool, config=_config(seed=s), out=tmp_path / name, backend=_anchored(tokenizer))
        outs.append(((tmp_path / name / "lineage.jsonl").read_bytes(), (tmp_path / name / "best.yaml").read_bytes()))
    assert outs[0] == outs[1]
    assert outs[0][0] != outs[2][0]


def test_inadmissible_candidates_stay_in_the_lineage_and_never_win(tokenizer, tmp_path) -> None:
    # "Sounds like beta." boosts beta's markers strongly: in alpha's text it raises SI (alpha's
    # responses become very recognisable) but they then read like seed *beta*: fidelity falls.
    drift = "Sounds like beta."
    seed_text = ("mode: alternatives\nprinciples:\n  - id: alpha\n    text: Alpha anchor. Good alpha one.\n"
                 "  - id: beta\n    text: Beta anchor. Good beta one.\n")
    seed, pool = _files(tmp_path, seed_text, drift + "\n")
    backend = TextChannelBackend(tokenizer, anchored_channel(ANCHORS, GOOD, n_vocab=64, beta=1.5,
                                                             drift={drift: 1}), length=12)
    result = evolve(seed, pool=pool, config=_config(population=8, generations=4), out=tmp_path / "out",
                    backend=backend)
    records = read_lineage(result.out_dir / "lineage.jsonl")
    drifted = [r for r in records if drift in r["principles"][0]["text"]]
    assert drifted, "the search never tried the drifting clause in alpha"
    seed_si = records[0]["selection"]["si"]
    assert any(r["selection"]["si"] > seed_si for r in drifted)  # it does raise SI ...
    assert all(not r["admissible"] and "fidelity" in r["inadmissible_reason"] for r in drifted)  # ... unfaithfully
    assert drift not in result.best.principles[0].text
    best = next(r for r in records if r["best"])
    assert best["admissible"]
    assert any("inadmissible" in f for f in result.summary["flags"])


def test_a_variant_shared_by_candidates_is_sampled_once(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path)
    backend = _anchored(tokenizer)
    result = evolve(seed, pool=pool, config=_config(), out=tmp_path / "out", backend=backend)
    records = read_lineage(result.out_dir / "lineage.jsonl")
    distinct_variants = {t for r in records for t in r["variant_texts"]}
    prompts = 24 + 24
    # Every response is sampled at most once per (variant text, prompt): far fewer than
    # candidates x K x prompts, and never more than the distinct variants allow.
    assert backend.calls["generate"] <= len(distinct_variants) * prompts
    assert backend.calls["generate"] == result.summary["cache"]["samples"]
    # Rerunning replays everything from the cache: no model call at all.
    again = _anchored(tokenizer)
    evolve(seed, pool=pool, config=_config(), out=tmp_path / "out", backend=again)
    assert again.calls == {"generate": 0, "score": 0}


def test_budget_stops_between_candidates_and_still_reports(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path)
    slow = TextChannelBackend(tokenizer, anchored_channel(ANCHORS, GOOD, n_vocab=64, beta=1.5), length=12,
                              delay=0.4)
    result = evolve(seed, pool=pool, config=_config(), budget_minutes=0.01, out=tmp_path / "out", backend=slow)
    assert result.summary["stopped_by_budget"] is True
    assert any("time budget" in f for f in result.summary["flags"])
    records = read_lineage(result.out_dir / "lineage.jsonl")
    assert 1 <= len(records) < 1 + 6 * 3
    assert (result.out_dir / "report.html").is_file() and (result.out_dir / "best.yaml").is_file()
    assert result.summary["held_out"]["n_prompts"] == 24  # the held-out comparison still ran


def test_changed_config_is_refused_naming_the_keys(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path)
    evolve(seed, pool=pool, config=_config(generations=1), out=tmp_path / "out", backend=_anchored(tokenizer))
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    with pytest.raises(SIError, match=r"differs in: .*population") as info:
        evolve(seed, pool=pool, config=_config(generations=1, population=5), out=tmp_path / "out",
               backend=_anchored(tokenizer))
    assert "generations" not in str(info.value)
    pool.write_text(POOL + "Another sentence.\n")
    with pytest.raises(SIError, match="pool_hash"):
        evolve(seed, pool=pool, config=_config(generations=1), out=tmp_path / "out", backend=_anchored(tokenizer))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == before


def test_model_proposer_rewrites_are_marked_model_written(tokenizer, tmp_path) -> None:
    seed, pool = _files(tmp_path)
    result = evolve(seed, pool=pool, config=_config(proposer="text-channel"), out=tmp_path / "out",
                    backend=_anchored(tokenizer))
    records = read_lineage(result.out_dir / "lineage.jsonl")
    rewrites = [r for r in records if r["operator"] == "rewrite"]
    assert rewrites, "no rewrite was raced"
    allowed = _user_sentences(seed, pool)
    for r in records:
        written = {c for p in r["principles"] for c in split_clauses(p["text"])} - allowed
        assert r["model_written"] == bool(written), r["id"]
    assert all(r["model_written"] for r in rewrites)
    assert any(REWRITE_SUFFIX.strip() in p["text"] for r in rewrites for p in r["principles"])
    assert "rewritten by text-channel" in rewrites[0]["detail"]


def test_outputs_best_yaml_lineage_and_escaped_report(tokenizer, tmp_path) -> None:
    hostile = ("mode: alternatives\nprinciples:\n  - id: alpha\n    text: Alpha anchor. <script>alert(1)</script> ok.\n"
               "  - id: beta\n    text: Beta anchor. Good beta one.\n")
    seed, pool = _files(tmp_path, hostile)
    result = evolve(seed, pool=pool, config=_config(generations=2), out=tmp_path / "out",
                    backend=_anchored(tokenizer))
    out = result.out_dir
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["name"] == "seed-evolved" and len(best["principles"]) == 2
    assert load_principle_set(out / "best.yaml").K == 2
    page = (out / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    fenced = False  # in Markdown, raw text is safe only inside fenced code blocks
    for line in (out / "report.md").read_text().splitlines():
        fenced = not fenced if line.startswith("```") else fenced
        assert fenced or "<script>" not in line, line
    for section in ("Verdict", "Held-out comparison", "Search", "The winner&#x27;s lineage", "All candidates", "Method"):
        assert section in page, section
    records = read_lineage(out / "lineage.jsonl")
    first = records[0]
    assert first["id"] == "seed" and first["parent"] is None and first["operator"] == "seed"
    # the incumbent is the yardstick: it runs to the last round, on every selection prompt
    assert first["status"] == "finalist" and first["selection"]["n_prompts"] == 24
    for key in ("si", "si_ci", "n_prompts", "fidelity", "seed_accuracy"):
        assert key in first["selection"]
    assert sum(r["best"] for r in records) == 1
    assert result.lineage["id"].tolist() == [r["id"] for r in records]
    summary = json.loads((out / "result.json").read_text())
    assert summary["verdict"] == result.verdict
