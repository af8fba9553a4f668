"""The `si` command line on the tiny model: rank end to end, resume, stages alone, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from si_toolkit.cli import app

runner = CliRunner()

ALT = "mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate.\n  - id: butler\n    text: Talk like a butler.\n"
NULL = "mode: alternatives\nprinciples:\n  - id: a\n    text: Be helpful.\n  - id: b\n    text: Be helpful.\n"
ANTI = ("mode: antithesis\nprinciples:\n  - id: brief\n    text: Be brief.\n    antithesis: Be long-winded.\n"
        "  - id: kind\n    text: Be kind.\n    antithesis: Be rude.\n")


def _rank(args: list[str]):
    return runner.invoke(app, ["rank", *args], catch_exceptions=False)


@pytest.fixture()
def sets(write_set) -> list[str]:
    return [str(write_set("persona", ALT)), str(write_set("null", NULL)), str(write_set("constitution", ANTI))]


def _base(tiny_model_dir: Path, out: Path) -> list[str]:
    return ["--model", str(tiny_model_dir), "--dtype", "float32", "--n-prompts", "5", "--max-new-tokens", "8",
            "--out", str(out), "--quiet", "--no-report"]


def test_rank_end_to_end_json(tiny_model_dir, sets, tmp_path) -> None:
    result = _rank([*sets, *_base(tiny_model_dir, tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    estimates = json.loads(result.stdout)
    assert {e["set"] for e in estimates["ranking"]} == {"persona", "null", "constitution"}
    assert estimates["sets"]["null"]["si"] == 0.0  # identical variants: every posterior is uniform
    assert estimates["sets"]["constitution"]["K"] == 3 and len(estimates["sets"]["constitution"]["per_principle"]) == 2
    run = tmp_path / "run"
    samples, scores = pd.read_parquet(run / "samples.parquet"), pd.read_parquet(run / "scores.parquet")
    assert len(samples) == 5 * (2 + 2 + 3)
    assert len(scores) == 5 * (4 + 4 + 9) * 3
    wide = scores.pivot_table(index=["set", "prompt_id", "condition", "variant", "replicate"], columns="span", values="logp_sum")
    assert (wide["full"] == wide["cot"] + wide["answer"]).all()  # SI-SPEC §6.6, exact
    assert json.loads((run / "estimates.json").read_text())["ranking"] == estimates["ranking"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sample"]["status"] == "done" and manifest["stages"]["score"]["status"] == "done"


def test_rank_resumes_after_lost_units_with_identical_rows(tiny_model_dir, sets, tmp_path) -> None:
    run = tmp_path / "run"
    assert _rank([*sets, *_base(tiny_model_dir, run)]).exit_code == 0
    full_samples, full_scores = pd.read_parquet(run / "samples.parquet"), pd.read_parquet(run / "scores.parquet")
    # Simulate a run killed part-way: merged tables and some unit shards never written.
    (run / "samples.parquet").unlink()
    (run / "scores.parquet").unlink()
    (run / "shards/sample/persona/u00001.parquet").unlink()
    for f in (run / "shards/score").rglob("u00000.parquet"):
        f.unlink()
    assert _rank([*sets, *_base(tiny_model_dir, run)]).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(run / "samples.parquet"), full_samples)
    pd.testing.assert_frame_equal(pd.read_parquet(run / "scores.parquet"), full_scores)


def test_rank_refuses_changed_config(tiny_model_dir, sets, tmp_path) -> None:
    run = tmp_path / "run"
    assert _rank([*sets, *_base(tiny_model_dir, run)]).exit_code == 0
    result = _rank([*sets, *_base(tiny_model_dir, run), "--seed", "3"])
    assert result.exit_code == 2
    assert "sampling.seed" in result.output and "--force-new" in result.output


@pytest.mark.parametrize("sequences_per_call", [64, 8], ids=["one-group-per-set", "one-unit-per-group"])
def test_sharded_stages_equal_unsharded(tiny_model_dir, sets, tmp_path, monkeypatch, sequences_per_call) -> None:
    ref = tmp_path / "ref"
    assert _rank([*sets, *_base(tiny_model_dir, ref)]).exit_code == 0
    # Smaller sampling batches: several groups per set, so the two shards split the sampling too.
    # Per-prompt seeds make the samples independent of how units are grouped into calls.
    monkeypatch.setattr("si_toolkit.rank.sampling.SEQUENCES_PER_CALL", sequences_per_call)
    # The same config in a second folder, stages driven by two shards each.
    run = tmp_path / "sharded"
    manifest = json.loads((ref / "manifest.json").read_text())
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({k: manifest[k] for k in manifest if k != "stages"}))
    for stage in ("sample", "score"):
        for shard in ("0/2", "1/2"):
            result = runner.invoke(app, [stage, str(run), "--shard", shard, "--quiet"], catch_exceptions=False)
            assert result.exit_code == 0, result.output
    for table in ("samples.parquet", "scores.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run / table), pd.read_parquet(ref / table))


def test_estimate_from_scores_file_and_span_option(tiny_model_dir, sets, tmp_path) -> None:
    run = tmp_path / "run"
    assert _rank([*sets, *_base(tiny_model_dir, run)]).exit_code == 0
    result = runner.invoke(app, ["estimate", str(run / "scores.parquet"), "--span", "full", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["span"] == "full"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("mode: alternatives\nprinciples: [\n", "malformed YAML"),
        ("mode: sideways\nprinciples:\n  - text: a\n  - text: b\n", "field 'mode'"),
        ("mode: alternatives\nprinciples:\n  - id: only\n    text: one\n", "K >= 2"),
    ],
    ids=["malformed", "unknown-mode", "k-lt-2"],
)
def test_bad_principle_files_exit_2_with_one_line(write_set, content, message, tiny_model_dir, tmp_path) -> None:
    path = write_set("bad", content)
    result = _rank([str(path), *_base(tiny_model_dir, tmp_path / "run")])
    assert result.exit_code == 2
    assert message in result.output and str(path) in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_empty_prompt_file_and_missing_model(write_set, tmp_path) -> None:
    good = str(write_set("persona", ALT))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _rank([good, "--prompts", str(empty), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "empty.jsonl" in result.output
    result = _rank([good, "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "no-such-model" in result.output and "Traceback" not in result.output


def test_principles_validate_and_show(write_set) -> None:
    path = write_set("constitution", ANTI)
    result = runner.invoke(app, ["principles", "validate", str(path)])
    assert result.exit_code == 0 and "K = 3" in result.output
    result = runner.invoke(app, ["principles", "show", str(path)])
    assert "1. Be long-winded." in result.output and "flip:brief" in result.output


# ----------------------------------------------------------------------------- si estimate: span, critic, files


def test_estimate_names_span_and_critic_and_keeps_estimates_json(tiny_model_dir, sets, tmp_path) -> None:
    run = tmp_path / "run"
    assert _rank([*sets, *_base(tiny_model_dir, run)]).exit_code == 0
    default = (run / "estimates.json").read_bytes()
    result = runner.invoke(app, ["estimate", str(run), "--span", "full", "--critic", "mean", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["span"] == "full" and data["settings"]["critic"] == "mean"
    assert json.loads((run / "estimates-full-mean.json").read_text()) == data  # written beside, not instead
    assert (run / "estimates.json").read_bytes() == default  # SI's own file is untouched
    assert f"wrote {run / 'estimates-full-mean.json'}" in result.stderr.replace("\n", "")
    table = runner.invoke(app, ["estimate", str(run), "--span", "answer", "--quiet"])
    assert table.exit_code == 0 and "span answer, critic sum" in table.stdout.replace("\n", " ")
    assert table.stderr == "" and (run / "estimates-answer-sum.json").is_file()
    again = runner.invoke(app, ["estimate", str(run), "--json"])  # the default settings rewrite estimates.json
    assert json.loads((run / "estimates.json").read_text()) == json.loads(again.stdout)
    assert json.loads(again.stdout)["settings"]["span"] == "cot" and "wrote" in again.stderr
    bare = runner.invoke(app, ["estimate", str(run / "scores.parquet"), "--critic", "mean"])
    assert bare.exit_code == 0 and "nothing written" in bare.stderr and "critic mean" in bare.stdout


# ----------------------------------------------------------------------------- output folders


def test_rank_folder_is_named_after_the_sizes_it_uses(tiny_model_dir, write_set, tmp_path, monkeypatch) -> None:
    from si_toolkit.backends.base import SamplingConfig
    from si_toolkit.rank.pipeline import RankConfig, run_name

    quick = RankConfig(n_prompts=12, sampling=SamplingConfig(max_new_tokens=48, replicates=1))
    assert run_name(["a", "b"], quick) == "a+b-quick"
    assert run_name(["a"], RankConfig(n_prompts=40, sampling=SamplingConfig(max_new_tokens=48))) == "a-n40-r1-t48"
    assert run_name(["a"], RankConfig(n_prompts=12, sampling=SamplingConfig(max_new_tokens=48, seed=3))) == "a-quick-seed3"
    monkeypatch.chdir(tmp_path)
    path = str(write_set("persona", ALT))
    common = [path, "--model", str(tiny_model_dir), "--prepare-only", "--profile", "quick"]
    assert _rank([*common, "--n-prompts", "40"]).exit_code == 0
    assert _rank(common).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["persona-n40-r1-t48", "persona-quick"]


def test_rank_on_a_finished_folder_says_it_reused_it(tiny_model_dir, sets, tmp_path) -> None:
    run = tmp_path / "run"
    first = _rank([*sets, *_base(tiny_model_dir, run)])
    assert first.exit_code == 0 and "reused" not in first.stderr
    scores = (run / "scores.parquet").stat().st_mtime_ns
    second = _rank([*sets, *_base(tiny_model_dir, run)])
    assert second.exit_code == 0 and "reused its finished samples and scores" in second.stderr.replace("\n", " ")
    assert (run / "scores.parquet").stat().st_mtime_ns == scores  # nothing was scored again


def _checkpoints(tiny_model_dir: Path, root: Path) -> list[Path]:
    """Two training runs that each wrote a checkpoint-2 (copies of the tiny model)."""
    import shutil

    return [Path(shutil.copytree(tiny_model_dir, root / run / "checkpoint-2")) for run in ("run-a", "run-b")]


def test_eval_folders_are_per_training_run_and_never_overwritten(tiny_model_dir, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = _checkpoints(tiny_model_dir, tmp_path / "train")
    small = ["--n-items", "2", "--max-new-tokens", "4", "--dtype", "float32", "--quiet"]
    for checkpoint in (a, b):
        result = runner.invoke(app, ["eval", str(checkpoint), *small], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    reports = tmp_path / "reports"
    assert sorted(p.name for p in reports.iterdir()) == ["eval-run-a-checkpoint-2", "eval-run-b-checkpoint-2"]
    summary = (reports / "eval-run-a-checkpoint-2" / "summary.json").read_bytes()
    refused = runner.invoke(app, ["eval", str(a), *small])
    assert refused.exit_code == 2 and "--force-new" in refused.output and "earlier run" in refused.output
    assert (reports / "eval-run-a-checkpoint-2" / "summary.json").read_bytes() == summary
    moved = runner.invoke(app, ["eval", str(a), *small, "--force-new"], catch_exceptions=False)
    assert moved.exit_code == 0, moved.output
    aside = [p for p in reports.iterdir() if p.name.startswith("eval-run-a-checkpoint-2.replaced-")]
    assert len(aside) == 1 and (aside[0] / "summary.json").read_bytes() == summary  # moved, not lost
    assert (reports / "eval-run-a-checkpoint-2" / "summary.json").is_file()


def test_geometry_folders_are_per_training_run_and_never_overwritten(tiny_model_dir, write_set, tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    a, _ = _checkpoints(tiny_model_dir, tmp_path / "train")
    args = ["geometry", str(tiny_model_dir), str(a), "--principles", str(write_set("persona", ALT)),
            "--n-prompts", "2", "--dtype", "float32"]
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    folder = tmp_path / "reports" / "geometry-run-a-checkpoint-2"
    first = (folder / "geometry.json").read_bytes()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--force-new" in refused.output
    assert runner.invoke(app, [*args, "--force-new"], catch_exceptions=False).exit_code == 0
    aside = list((tmp_path / "reports").glob("geometry-run-a-checkpoint-2.replaced-*"))
    assert len(aside) == 1 and (aside[0] / "geometry.json").read_bytes() == first
    assert (folder / "geometry.json").is_file()


# ----------------------------------------------------------------------------- si principles show


def test_principles_show_prints_each_exact_system_prompt_escaped(write_set) -> None:
    from si_toolkit.chat import COT_INSTRUCTION, render_system

    path = write_set("marked", 'mode: alternatives\nprinciples:\n  - id: loud\n    text: "Use [bold]markup[/bold] '
                               '\\e[31m and \\u202e."\n  - id: plain\n    text: Be plain.\n')
    result = runner.invoke(app, ["principles", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert render_system("Be plain.") in result.stdout  # the whole system prompt, CoT instruction included
    assert render_system("Be plain.").endswith(COT_INSTRUCTION)
    assert "Use [bold]markup[/bold] \\x1b[31m and \\u202e." in result.stdout  # shown, not interpreted
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    data = json.loads(runner.invoke(app, ["principles", "show", str(path), "--json"]).stdout)
    assert [v["system_prompt"] for v in data["variants"]] == [
        render_system("Use [bold]markup[/bold] \x1b[31m and \u202e."), render_system("Be plain.")]
def test_rank_table_shows_rank_intervals_and_reliability(tiny_model_dir, sets, tmp_path) -> None:
    run = tmp_path / "run"
    assert _rank([*sets, *_base(tiny_model_dir, run)]).exit_code == 0
    result = runner.invoke(app, ["estimate", str(run), "--n-bootstrap", "200"], terminal_width=200)
    assert result.exit_code == 0, result.output
    estimates = json.loads((run / "estimates.json").read_text())
    for col in ("rank 95%", "P(rank 1)", "ΔSI", "p"):
        assert col in result.stdout
    assert estimates["reliability"]["reading"] in " ".join(result.stdout.split())
    assert estimates["reliability"]["reading"].startswith("With 5 prompts the ordering is")
    shown = [r for r in estimates["ranking"] if r["rank"] > 1]
    assert all(r["p_floor"] == 0.2 and r["p_value"] >= 0.2 for r in shown)  # 5 prompts: no p finer than 1/5
