"""The Python API (`import si_toolkit as si`) on the tiny model: lazy import, rank from objects,
load_run, a recorded command that really reproduces the run, train, and the input objects."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import si_toolkit as si
from si_toolkit.cli import app

PERSONA = {"name": "persona", "mode": "alternatives",
           "principles": [{"id": "pirate", "text": "Talk like a pirate."}, {"id": "butler", "text": "Talk like a butler."}]}
NULL = {"name": "null", "mode": "alternatives",
        "principles": [{"id": "a", "text": "Be helpful."}, {"id": "b", "text": "Be helpful."}]}
RECORDS = [{"id": f"q{i}", "prompt": f"What is {i} plus {i + 1}?"} for i in range(4)]


def test_import_is_lazy_and_fast() -> None:
    code = ("import time, sys; t = time.perf_counter(); import si_toolkit as si; names = dir(si); "
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'pandas' in sys.modules, 'rank' in names)")
    seconds, torch_loaded, pandas_loaded, has_rank = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert float(seconds) < 3.0
    assert (torch_loaded, pandas_loaded, has_rank) == ("False", "False", "True")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'ranq'"):
        si.ranq  # noqa: B018


def test_principle_set_round_trips_through_dict_and_yaml(tmp_path: Path) -> None:
    anti = {"name": "c", "mode": "antithesis", "preamble": "Follow these.",
            "principles": [{"id": "brief", "text": "Be brief.", "antithesis": "Be long-winded."}]}
    s = si.PrincipleSet.from_dict(anti)
    assert s.K == 2 and s.variants[0].text.startswith("Follow these.")
    again = si.PrincipleSet.from_dict(s.to_dict())
    assert again.variants == s.variants and again.preamble == s.preamble
    (tmp_path / "c.yaml").write_text(s.to_yaml(), encoding="utf-8")
    assert si.PrincipleSet.from_yaml(tmp_path / "c.yaml").variants == s.variants


@pytest.mark.parametrize("bad, message", [
    (["not", "a", "mapping"], "must be a mapping"),
    ({"mode": "alternatives", "principles": PERSONA["principles"]}, "give it a `name`"),
    ({"name": "x", "principles": [{"id": "a", "text": "only one"}]}, "K >= 2"),
], ids=["not-a-mapping", "no-name", "one-variant"])
def test_principle_set_from_dict_refuses_bad_input(bad, message) -> None:
    with pytest.raises(si.SIError, match=message):
        si.PrincipleSet.from_dict(bad)


def test_prompt_set_from_records_and_dataframe() -> None:
    from_records = si.PromptSet.from_records(RECORDS)
    from_frame = si.PromptSet.from_dataframe(pd.DataFrame(RECORDS))
    assert [p.id for p in from_records.prompts] == ["q0", "q1", "q2", "q3"]
    assert from_records.prompts == from_frame.prompts
    with pytest.raises(si.SIError, match="no 'prompt'"):
        si.PromptSet.from_dataframe(pd.DataFrame({"question": ["hi"]}))
    with pytest.raises(si.SIError, match="record 2: field 'prompt' is empty"):
        si.PromptSet.from_records([{"prompt": "ok"}, {"prompt": " "}])


def test_rank_from_objects_and_the_recorded_command_reproduces_it(tiny_model_dir, tmp_path) -> None:
    ranking = si.rank([PERSONA, si.PrincipleSet.from_dict(NULL)], RECORDS, str(tiny_model_dir),
                      max_new_tokens=8, dtype="float32", out=tmp_path / "nb")
    # The table: one row per set in rank order, every column of si.csv.
    csv = pd.read_csv(tmp_path / "nb" / "si.csv")
    assert list(ranking.table.columns) == list(csv.columns)
    assert list(ranking.table["set"]) == [e["set"] for e in ranking.estimates["ranking"]]
    assert ranking.table.set_index("set").loc["null", "si"] == 0.0
    assert "<table" in ranking._repr_html_() and ranking.report_path.is_file()
    # The objects were written into the run folder and the command names them with every setting.
    command = json.loads((tmp_path / "nb" / "manifest.json").read_text())["command"]
    assert (tmp_path / "nb" / "inputs" / "persona.yaml").is_file()
    assert "--n-prompts 4" in command and "inputs/prompts.jsonl" in command and "--max-new-tokens 8" in command
    # Run the recorded command into a new folder: the same samples and scores, row for row.
    args = shlex.split(command)[1:] + ["--out", str(tmp_path / "again"), "--quiet", "--no-report"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for table in ("samples.parquet", "scores.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "nb" / table), pd.read_parquet(tmp_path / "again" / table))


def test_load_run_reads_tables_and_estimates_other_critics(tiny_model_dir, tmp_path) -> None:
    si.rank([PERSONA, NULL], RECORDS[:2], str(tiny_model_dir), max_new_tokens=6, dtype="float32",
            out=tmp_path / "run", report=False)
    run = si.load_run(tmp_path / "run")
    assert len(run.samples) == 2 * 2 * 2 and len(run.scores) == 2 * (4 + 4) * 3
    assert set(run.table["set"]) == {"persona", "null"}
    mean = run.estimate(critic="mean")
    assert mean["sets"]["null"]["si"] == 0.0 and set(mean["sets"]) == {"persona", "null"}
    with pytest.raises(si.SIError, match="manifest"):
        si.load_run(tmp_path)


def test_rank_refuses_a_name_used_twice(tiny_model_dir, tmp_path) -> None:
    with pytest.raises(si.SIError, match="used twice"):
        si.rank([PERSONA, PERSONA], RECORDS, str(tiny_model_dir), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_train_returns_metrics_and_checkpoints(tiny_model_dir, tmp_path) -> None:
    run = si.train(PERSONA, out=tmp_path / "t", model=str(tiny_model_dir), preset="grpo", max_steps=2,
                   prompts_per_step=2, num_generations=4, max_completion_length=8, n_prompts=6, save_every=1,
                   tensorboard=False)
    assert run.last_step == 2 and run.checkpoint == tmp_path / "t" / "checkpoint-2"
    assert [p.name for p in run.checkpoints][-1] == "checkpoint-2"
    assert list(run.metrics["step"]) == [1, 2] and "reward_mean" in run.metrics.columns


def test_api_functions_survive_imports_of_their_packages() -> None:
    # Importing a sub-package rebinds si_toolkit.<name> to the module; the packages are callable.
    code = ("import si_toolkit as si, si_toolkit.rank.pipeline, si_toolkit.train.trainer; "
            "from si_toolkit.rank.api import rank; from si_toolkit.train.api import train; "
            "print(callable(si.rank), callable(si.train), si.rank.__call_target__, si.train.__call_target__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "si_toolkit.rank.api:rank", "si_toolkit.train.api:train"]


def test_si_evolve_is_the_evolve_function() -> None:
    code = ("import si_toolkit as si, si_toolkit.evolve.search; from si_toolkit.evolve import evolve; "
            "print(callable(si.evolve), si.evolve.__call_target__, evolve.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "si_toolkit.evolve.pipeline:evolve", "si_toolkit.evolve.pipeline"]


def test_evolve_from_python_with_keyword_options(tiny_model_dir, tmp_path) -> None:
    (tmp_path / "seed.yaml").write_text("mode: alternatives\nprinciples:\n  - id: kind\n    text: Be kind. Thank them.\n"
                                        "  - id: brisk\n    text: Be brief. Skip pleasantries.\n", encoding="utf-8")
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?"}) + "\n"
                                                    for i in range(8)), encoding="utf-8")
    result = si.evolve(tmp_path / "seed.yaml", out=tmp_path / "ev", model=str(tiny_model_dir), dtype="float32",
                       prompts=str(tmp_path / "prompts.jsonl"), selection_prompts=4, holdout_prompts=4,
                       population=2, generations=1, max_new_tokens=4)
    assert isinstance(result.best, si.PrincipleSet) and result.best_path.is_file()
    assert isinstance(result.lineage, pd.DataFrame) and len(result.lineage) >= 1
    assert result.verdict.startswith("best: ")
    with pytest.raises(si.SIError, match="unknown option"):
        si.evolve(tmp_path / "seed.yaml", out=tmp_path / "ev2", populaton=3)
