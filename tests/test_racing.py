"""`si rank --until-decided`: the race decides the known order and stops sampling decided sets,
resumes after a crash or SIGKILL with the same result, and refuses bad sizes with one line.

The decision tests use `KnownSIBackend` (tests/known_si_backend.py): a real Backend whose
log-probs are an exact function of the variant text, so each set's true SI is known.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import si_toolkit as si
from si_toolkit.cli import app
from si_toolkit.rank.api import prepare_rank
from si_toolkit.rank.racing import BELOW_LEADER, CLEAR_LEADER, RANK_INTERVAL_ONE, decisions, run_racing

from kill_points import kill_at_points
from known_si_backend import KnownSIBackend, true_si

TESTS = Path(__file__).resolve().parent
BETAS = {"clear": 1.5, "close": 1.2}  # logit on each variant's own marker; the null set has none


def _set(name: str, a: str, b: str) -> dict:
    return {"name": name, "mode": "alternatives", "principles": [{"id": "a", "text": a}, {"id": "b", "text": b}]}


SETS = [_set("clear", "Talk like a pirate.", "Talk like a butler."),
        _set("close", "Speak like a pirate.", "Speak like a butler."),
        _set("null", "Be helpful.", "Be helpful.")]
CHANNELS = {"Talk like a pirate.": (0, BETAS["clear"]), "Talk like a butler.": (1, BETAS["clear"]),
            "Speak like a pirate.": (2, BETAS["close"]), "Speak like a butler.": (3, BETAS["close"])}
RACE = {"n_prompts": 8, "max_prompts": 64}  # rounds of 8 prompts


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def _race(model_dir: Path, out: Path, backend: KnownSIBackend, sets=SETS, **race) -> dict:
    run = prepare_rank(sets, "builtin:mixed", str(model_dir), until_decided=True, dtype="float32", out=out,
                       **{**RACE, **race})
    return run_racing(run, backend=backend)


def _rows(table: pd.DataFrame, **where) -> dict[str, int]:
    for column, value in where.items():
        table = table[table[column] == value]
    return table.groupby("set").size().to_dict()


@pytest.mark.parametrize(("ranking", "expected"), [
    # rank intervals from the joint bootstrap; ties from the paired ΔSI to the leader
    ([("a", [1, 1], True), ("b", [2, 3], False), ("c", [2, 3], False)],
     {"a": RANK_INTERVAL_ONE, "b": BELOW_LEADER, "c": BELOW_LEADER}),
    ([("a", [1, 2], True), ("b", [1, 2], False), ("c", [3, 3], False)],
     {"a": CLEAR_LEADER, "b": BELOW_LEADER, "c": RANK_INTERVAL_ONE}),
    ([("a", [1, 2], True), ("b", [1, 2], True), ("c", [3, 3], False)], {"a": None, "b": None, "c": RANK_INTERVAL_ONE}),
    # c is tied with the leader pairwise but never first in the joint bootstrap: a is still first
    ([("a", [1, 2], True), ("b", [1, 2], False), ("c", [2, 3], True)], {"a": CLEAR_LEADER, "b": BELOW_LEADER, "c": None}),
    ([("a", None, True), ("b", None, True)], {"a": None, "b": None}),
], ids=["leader-by-interval", "leader-clear", "leader-tied", "tied-but-never-first", "no-intervals"])
def test_decision_rules(ranking, expected) -> None:
    rows = [{"set": name, "rank_interval": interval, "tied_with_leader": tied} for name, interval, tied in ranking]
    assert decisions(rows) == expected


def test_race_decides_the_known_order_and_stops_sampling_decided_sets(tiny_model_dir, tmp_path) -> None:
    backend = KnownSIBackend(_tokenizer(tiny_model_dir), CHANNELS)
    truth = {"clear": true_si(BETAS["clear"]), "close": true_si(BETAS["close"]), "null": 0.0}
    assert truth["clear"] > truth["close"] + 0.15 > truth["null"] + 0.15  # 0.58, 0.40, 0
    estimates = _race(tiny_model_dir, tmp_path / "run", backend)
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    racing = manifest["racing"]
    # The known order, every rank decided, before --max-prompts.
    assert [e["set"] for e in estimates["ranking"]] == sorted(truth, key=truth.get, reverse=True)
    assert racing["result"]["stopped"] == "every set is decided"
    final = racing["rounds"][-1]["decided"]
    assert final["clear"] == CLEAR_LEADER and final["close"] is not None and final["null"] is not None
    # The null set was decided in round 1 and never sampled again; the two close sets raced on.
    assert racing["rounds"][0]["sets"] == ["clear", "close", "null"] and racing["rounds"][0]["decided"]["null"]
    assert all(r["sets"] == ["clear", "close"] for r in racing["rounds"][1:]) and len(racing["rounds"]) >= 2
    prompts = racing["result"]["prompts"]
    assert prompts["null"] == 8 and 8 < prompts["clear"] == prompts["close"] < 64
    # Rows: n·K·R sampled sequences and n·K²·R scored pairs per set, each made exactly once.
    samples, scores = pd.read_parquet(run / "samples.parquet"), pd.read_parquet(run / "scores.parquet")
    assert _rows(samples) == {name: 2 * n for name, n in prompts.items()}
    assert _rows(scores, span="cot") == {name: 4 * n for name, n in prompts.items()}
    assert backend.calls["sequences"] == len(samples) and backend.calls["pairs"] == len(scores) / 3
    calls = racing["result"]["model_calls"]
    assert (calls["sampled_sequences"], calls["scored_pairs"]) == (len(samples), len(scores) / 3)
    assert calls["fixed_sampled_sequences"] == 3 * 64 * 2 and calls["fixed_scored_pairs"] == 3 * 64 * 4
    assert calls["ratio"] == pytest.approx((len(samples) + len(scores) / 3) / (3 * 64 * 6))
    # Each set's estimate is on its own prompts; estimates.json is the last round's.
    assert {name: estimates["sets"][name]["n_prompts"] for name in prompts} == prompts
    assert json.loads((run / "estimates.json").read_text()) == estimates
    # The report says which ranks are decided and what was saved, from the manifest's numbers.
    from si_toolkit.report import build_report

    markdown = build_report(run).markdown.read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and line.count("|") == 5}
    assert rows["null"][:2] == ["8", "1"] and rows["clear"][0] == str(prompts["clear"])
    assert rows["clear"][2] == "first: no other set is tied with it"
    assert f"{3 * 64 * 6:,} that sampling every set at --max-prompts 64 takes" in markdown
    # The run details give each set's own number of prompts, not the first round's.
    details = next(line for line in markdown.splitlines() if line.startswith("| Prompts |"))
    assert all(f"{name}: {n}" in details for name, n in prompts.items()), details


def test_tied_sets_race_to_max_prompts_and_stay_undecided(tiny_model_dir, tmp_path) -> None:
    twin = _set("twin", "Talk like a pirate.", "Talk like a butler.")  # the same true SI as clear
    backend = KnownSIBackend(_tokenizer(tiny_model_dir), CHANNELS)
    _race(tiny_model_dir, tmp_path / "run", backend, sets=[SETS[0], twin, SETS[2]], max_prompts=32)
    racing = json.loads((tmp_path / "run" / "manifest.json").read_text())["racing"]
    assert racing["result"]["stopped"] == "--max-prompts 32 reached with 2 sets undecided"
    assert racing["result"]["prompts"] == {"clear": 32, "twin": 32, "null": 8}
    assert [r["n_prompts"] for r in racing["rounds"]] == [8, 16, 24, 32]
    assert racing["rounds"][-1]["decided"]["clear"] is None and racing["rounds"][-1]["decided"]["twin"] is None


def test_crash_mid_race_then_rerun_gives_the_same_result(tiny_model_dir, tmp_path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    reference = _race(tiny_model_dir, tmp_path / "ref", KnownSIBackend(tokenizer, CHANNELS), max_prompts=24)
    run = tmp_path / "run"
    # Round 1 takes 3 sampling calls (one per set) and 6 scoring calls (one per unit); round 2,
    # for two sets, 2 + 4. Crash in round 1's sampling, then in its scoring, then in round 2's
    # scoring (round 2 recorded and sampled, round 1 estimated).
    for fail_after, rounds in ((2, 1), (4, 1), (5, 2)):
        with pytest.raises(RuntimeError, match="simulated crash"):
            _race(tiny_model_dir, run, KnownSIBackend(tokenizer, CHANNELS, fail_after=fail_after), max_prompts=24)
        recorded = json.loads((run / "manifest.json").read_text())["racing"]["rounds"]
        assert len(recorded) == rounds and recorded[-1]["status"] == "planned"
    # The partial run folder still renders, and says the race has not finished.
    from si_toolkit.report import build_report

    assert "has not finished" in build_report(run).markdown.read_text()
    assert _race(tiny_model_dir, run, KnownSIBackend(tokenizer, CHANNELS), max_prompts=24) == reference
    _assert_same_run(run, tmp_path / "ref")


def _assert_same_run(run: Path, ref: Path) -> None:
    for table in ("samples.parquet", "scores.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run / table), pd.read_parquet(ref / table))
    assert json.loads((run / "estimates.json").read_text()) == json.loads((ref / "estimates.json").read_text())
    racing = [json.loads((folder / "manifest.json").read_text())["racing"] for folder in (run, ref)]
    assert racing[0] == racing[1]


_KILLED_RACE = """
import sys
sys.path.insert(0, {tests!r})
import test_racing as t
from known_si_backend import KnownSIBackend
t._race(t.Path({model!r}), t.Path({out!r}), KnownSIBackend(t._tokenizer({model!r}), t.CHANNELS, delay=0.05),
        max_prompts=24)
"""


def test_sigkill_at_random_points_then_rerun_gives_the_same_result(tiny_model_dir, tmp_path) -> None:
    tokenizer = _tokenizer(tiny_model_dir)
    _race(tiny_model_dir, tmp_path / "ref", KnownSIBackend(tokenizer, CHANNELS), max_prompts=24)
    total = len(list((tmp_path / "ref" / "shards").rglob("u*.parquet")))
    run = tmp_path / "run"
    script = _KILLED_RACE.format(tests=str(TESTS), model=str(tiny_model_dir), out=str(run))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    rng = random.Random(7)
    # After k finished shards (increasing) plus a random delay: kills land while sampling,
    # scoring, estimating or recording a round.
    kills = kill_at_points([sys.executable, "-c", script], env, lambda: _shards(run),
                           sorted(rng.sample(range(total - 1), 3)), rng, max_delay=1.0)
    assert kills >= 2
    _race(tiny_model_dir, run, KnownSIBackend(tokenizer, CHANNELS), max_prompts=24)
    _assert_same_run(run, tmp_path / "ref")


def _shards(run: Path) -> int:
    return len(list((run / "shards").rglob("u*.parquet"))) if (run / "shards").is_dir() else 0


PERSONA = {"name": "persona", "mode": "alternatives",
           "principles": [{"id": "pirate", "text": "Talk like a pirate."}, {"id": "butler", "text": "Talk like a butler."}]}
NULL = {"name": "null", "mode": "alternatives",
        "principles": [{"id": "a", "text": "Be helpful."}, {"id": "b", "text": "Be helpful."}]}


def test_python_and_cli_share_one_path_and_report_the_race(tiny_model_dir, tmp_path) -> None:
    ranking = si.rank([PERSONA, NULL], "builtin:mixed", str(tiny_model_dir), n_prompts=4, max_prompts=8,
                      max_new_tokens=6, dtype="float32", out=tmp_path / "nb", until_decided=True)
    assert ranking.racing["result"]["prompts"]["persona"] in (4, 8) and len(ranking.racing["rounds"]) in (1, 2)
    html = ranking.report_path.read_text()
    assert 'id="racing-table"' in html and "Racing: which ranks are decided" in html
    assert "Model calls" in (tmp_path / "nb" / "report.md").read_text()
    command = ranking.manifest["command"]
    assert "--until-decided --max-prompts 8 --round-prompts 4" in command and "--n-prompts 4" in command
    # The recorded command, run by the CLI into a new folder: the same race, row for row.
    args = shlex.split(command)[1:] + ["--out", str(tmp_path / "cli"), "--quiet", "--no-report"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Racing (--until-decided)" in result.stdout and "Model calls:" in result.stdout
    _assert_same_run(tmp_path / "cli", tmp_path / "nb")
    # --json carries the race next to the estimates; a rerun resumes (nothing left to do).
    result = CliRunner().invoke(app, [*args, "--json"], catch_exceptions=False)
    assert json.loads(result.stdout)["racing"] == ranking.racing


@pytest.mark.parametrize(("options", "message"), [
    (["--until-decided", "--n-prompts", "8", "--max-prompts", "4"], "--max-prompts 4 is below the first round's 8"),
    (["--until-decided", "--max-prompts", "500"], "holds only 128 prompts"),
    (["--until-decided", "--n-prompts", "200"], "asked for n_prompts = 200"),
    (["--until-decided", "--round-prompts", "0"], "--round-prompts 0: must be >= 1"),
    (["--max-prompts", "8"], "apply only with --until-decided"),
    (["--until-decided", "--prepare-only"], "cannot be combined with --until-decided"),
], ids=["max-below-start", "max-above-prompt-set", "start-above-prompt-set", "round-zero", "max-without-race",
        "prepare-only"])
def test_bad_race_sizes_exit_2_with_one_line_and_write_nothing(options, message, tiny_model_dir, write_set,
                                                               tmp_path) -> None:
    path = write_set("persona", "mode: alternatives\nprinciples:\n  - id: a\n    text: A.\n  - id: b\n    text: B.\n")
    result = CliRunner().invoke(app, ["rank", str(path), "--model", str(tiny_model_dir), "--out",
                                      str(tmp_path / "run"), *options])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert message in text and "Traceback" not in text and len(result.output.strip().splitlines()) <= 2
    assert not (tmp_path / "run").exists()


def test_estimates_check_each_sets_own_prompts() -> None:
    from si_toolkit.errors import SIError
    from si_toolkit.rank.estimation import estimate_run

    rows = [(name, f"p{x}", i, j, 0, span, -1.0 - (i != j) * (name == "a"), 3)
            for name, n in (("a", 3), ("b", 2)) for x in range(n) for i in range(2) for j in range(2)
            for span in ("cot", "answer", "full")]
    scores = pd.DataFrame(rows, columns=["set", "prompt_id", "condition", "variant", "replicate", "span",
                                         "logp_sum", "n_tokens"])
    meta = {name: {"K": 2, "variant_labels": ["x", "y"]} for name in ("a", "b")}
    out = estimate_run(scores, None, meta, prompt_ids={"a": ["p0", "p1", "p2"], "b": ["p0", "p1"]}, n_bootstrap=50)
    assert out["sets"]["a"]["n_prompts"] == 3 and out["sets"]["b"]["n_prompts"] == 2
    with pytest.raises(SIError, match=r"set 'b' do not cover .* missing \['p2'\]"):
        estimate_run(scores, None, meta, prompt_ids={"a": ["p0", "p1", "p2"], "b": ["p0", "p1", "p2"]}, n_bootstrap=50)
