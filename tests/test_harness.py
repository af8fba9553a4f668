"""The lm-evaluation-harness bridge, run for real (lm-eval is in the `dev` extra) on a local task.

The task is a six-item addition set in a JSONL file, read through `datasets`' json builder with
the hub switched off, so nothing is downloaded. Every harness run indexes lm-eval's ~15 000
registered tasks first (about 5 s), which is most of this file's run time.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from si_toolkit.cli.app import app
from si_toolkit.confirm.harness import (
    HarnessConfig,
    compare_harness,
    harness_item_scores,
    harness_metrics,
    harness_model_args,
    require_harness,
    resolve_tasks,
    run_harness,
    task_registry,
)
from si_toolkit.errors import SIError
from si_toolkit.safeio import read_yaml_mapping

runner = CliRunner()

SUMS = [(1, 2), (2, 3), (3, 4), (4, 1), (2, 2), (5, 3)]
# lm-eval's task format: a generate_until task scored by exact match of the greedy continuation.
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
PAIR = "mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate.\n  - id: butler\n    text: Talk like a butler.\n"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def local_task(tmp_path: Path) -> Path:
    """A folder holding `tiny_sums.yaml` (six additions in a local JSONL file) and a broken task."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a} + {b} =", "answer": str(a + b)}) + "\n" for a, b in SUMS))
    cache = tmp_path / "hf-datasets"  # keeps the datasets cache of this test out of ~/.cache
    (folder / "tiny_sums.yaml").write_text(TASK_YAML.format(name="tiny_sums", data=data, cache=cache))
    (folder / "broken_sums.yaml").write_text(TASK_YAML.format(name="broken_sums", data=tmp_path / "gone.jsonl", cache=cache))
    return folder


# ----------------------------------------------------------------------------- configuration


def test_harness_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    with pytest.raises(SIError, match=r"not installed.*pip install 'si-toolkit\[eval\]'"):
        require_harness()
    with pytest.raises(SIError, match="lm_eval"):
        run_harness("embedded", HarnessConfig(tasks=("gsm8k",)))  # refused before any model is touched
    result = runner.invoke(app, ["eval", "embedded", "--harness", "gsm8k", "--quiet"])
    assert result.exit_code == 2
    assert "si-toolkit[eval]" in result.output  # the fix is printed verbatim, not eaten as markup


def test_harness_config_and_model_args() -> None:
    config = HarnessConfig(tasks=("gsm8k",), dtype="bfloat16")
    assert harness_model_args("/ckpt", config) == "pretrained=/ckpt,dtype=bfloat16"
    assert harness_model_args("/ckpt", config, trust_remote_code=True).endswith(",trust_remote_code=True")
    with pytest.raises(SIError, match="--harness"):
        HarnessConfig(tasks=())
    with pytest.raises(SIError, match="--harness-include-path is empty"):
        HarnessConfig(tasks=("gsm8k",), include_path=" ")


# ----------------------------------------------------------------------------- task checks


def test_task_files_are_checked_without_the_registry(local_task: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = local_task / "tiny_sums.yaml"
    monkeypatch.chdir(tmp_path)  # a relative task path is returned absolute
    assert resolve_tasks(HarnessConfig(tasks=("tasks/tiny_sums.yaml",))) == (str(path),)
    with pytest.raises(SIError, match=r"--harness nope\.yaml: no such task file"):
        resolve_tasks(HarnessConfig(tasks=("nope.yaml",)))
    with pytest.raises(SIError, match=r"gone\.jsonl.*does not exist.*fix the path"):
        resolve_tasks(HarnessConfig(tasks=(str(local_task / "broken_sums.yaml"),)))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SIError, match="expected a YAML mapping"):
        resolve_tasks(HarnessConfig(tasks=(str(tmp_path / "list.yaml"),)))
    (tmp_path / "untitled.yaml").write_text("dataset_path: json\n")
    with pytest.raises(SIError, match="not an lm-eval task file"):
        resolve_tasks(HarnessConfig(tasks=(str(tmp_path / "untitled.yaml"),)))
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n")
    with pytest.raises(SIError, match="malformed YAML"):
        resolve_tasks(HarnessConfig(tasks=(str(tmp_path / "bad.yaml"),)))
    # lm-eval's `!function` tags are read as text, never imported; other YAML files still refuse tags
    (tmp_path / "fn.yaml").write_text(path.read_text() + "process_results: !function utils.process_results\n")
    assert resolve_tasks(HarnessConfig(tasks=(str(tmp_path / "fn.yaml"),))) == (str(tmp_path / "fn.yaml"),)
    assert read_yaml_mapping(tmp_path / "fn.yaml", "task", tags_as_text=True)["process_results"] == "utils.process_results"
    with pytest.raises(SIError, match="malformed YAML"):
        read_yaml_mapping(tmp_path / "fn.yaml", "principle set")
    (tmp_path / "alias.yaml").write_text("task: t\na: &a [1]\nb: *a\n")
    with pytest.raises(SIError, match="aliases"):  # the alias-bomb guard holds for task files too
        resolve_tasks(HarnessConfig(tasks=(str(tmp_path / "alias.yaml"),)))
    with pytest.raises(SIError, match="--harness-include-path .*missing: no such folder"):
        resolve_tasks(HarnessConfig(tasks=("tiny_sums",), include_path=str(tmp_path / "missing")))


def test_task_names_are_checked_against_lm_eval_and_the_include_path(local_task: Path) -> None:
    config = HarnessConfig(tasks=("tiny_sums", "arc_easy"), include_path=str(local_task))
    registry = task_registry(config)
    assert resolve_tasks(config, registry) == ("tiny_sums", "arc_easy")  # local and built-in names side by side
    with pytest.raises(SIError) as info:
        resolve_tasks(HarnessConfig(tasks=("tiny_sum",), include_path=str(local_task)), registry)
    message = str(info.value)
    assert "unknown task 'tiny_sum'" in message and "did you mean 'tiny_sums'" in message
    assert "--harness-include-path" in message and "lm-eval ls tasks" in message
    # a task of the include path is checked like a task file: its data file must exist
    with pytest.raises(SIError, match=r"broken_sums\.yaml: dataset_kwargs\.data_files names .*gone\.jsonl"):
        resolve_tasks(HarnessConfig(tasks=("broken_sums",), include_path=str(local_task)), registry)


# ----------------------------------------------------------------------------- runs


def _recomputed_exact_match(samples: list[dict]) -> dict[str, float]:
    """exact_match of each logged document, recomputed from its logged response and target."""
    return {str(s["doc_id"]): float(s["filtered_resps"][0] == s["target"]) for s in samples}


def test_run_harness_on_a_task_file_offline(tiny_model_dir: Path, local_task: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_DATASETS_OFFLINE")  # HF_HUB_OFFLINE=1 keeps this run offline either way
    config = HarnessConfig(tasks=(str(local_task / "tiny_sums.yaml"),), seed=7, dtype="float32")
    results = run_harness(str(tiny_model_dir), config, device="cpu")
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"  # run_harness switches the datasets hub off by default
    run = results["config"]
    assert run["model"] == "hf" and run["model_args"] == f"pretrained={tiny_model_dir},dtype=float32"
    assert {run[k] for k in ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")} == {7}
    task = results["results"]["tiny_sums"]
    assert task["sample_len"] == len(SUMS)
    assert list(harness_metrics(task)) == ["exact_match,none"]  # bookkeeping keys are not metrics
    samples = results["samples"]["tiny_sums"]
    assert [s["target"] for s in samples] == [str(a + b) for a, b in SUMS]
    per_doc = harness_item_scores(results, "tiny_sums", "exact_match,none")
    assert per_doc == _recomputed_exact_match(samples)
    assert task["exact_match,none"] == pytest.approx(sum(per_doc.values()) / len(SUMS))


def test_run_harness_explains_missing_task_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    hub_task = tmp_path / "hub_task.yaml"  # a hub dataset that is not in the local cache
    hub_task.write_text("task: hub_task\ndataset_path: si-toolkit-tests/never-cached\ntest_split: test\n"
                        "output_type: generate_until\ndoc_to_text: '{{question}}'\ndoc_to_target: '{{answer}}'\n"
                        "metric_list:\n  - metric: exact_match\n")
    with pytest.raises(SIError, match="datasets cache.*HF_DATASETS_OFFLINE=0 lm-eval run"):
        run_harness(str(tiny_model_dir), HarnessConfig(tasks=(str(hub_task),)), device="cpu")


def _harness_result(values: list[float], aggregate: float) -> dict[str, object]:
    samples = [{"doc_id": k, "filter": "strict-match", "exact_match": v} for k, v in enumerate(values)]
    samples += [{"doc_id": k, "filter": "flexible-extract", "exact_match": 1.0} for k in range(len(values))]
    return {"results": {"gsm8k": {"alias": "gsm8k", "name": "gsm8k", "sample_len": len(values),
                                  "exact_match,strict-match": aggregate, "exact_match_stderr,strict-match": 0.1}},
            "samples": {"gsm8k": samples}}


def test_harness_item_scores_and_paired_comparison() -> None:
    a = _harness_result([1.0, 1.0, 0.0, 1.0], 0.75)
    b = _harness_result([0.0, 1.0, 0.0, 0.0], 0.25)
    assert harness_item_scores(a, "gsm8k", "exact_match,strict-match") == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 1.0}
    rows = compare_harness(a, b, n_resamples=500)
    # no stderr, alias, name or sample_len: only `metric,filter` keys are metrics
    assert [(r["task"], r["metric"]) for r in rows] == [("gsm8k", "exact_match,strict-match")]
    assert rows[0]["delta"] == pytest.approx(0.5) and rows[0]["n_paired"] == 4
    assert rows[0]["delta_ci"][0] <= 0.5 <= rows[0]["delta_ci"][1]


# ----------------------------------------------------------------------------- si eval --harness


def test_si_eval_checks_harness_tasks_before_the_benchmark(tiny_model_dir: Path, local_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    base = ["eval", str(tiny_model_dir), "--n-items", "2", "--max-new-tokens", "4", "--out", str(out), "--quiet"]
    cases = [
        (["--harness", "tiny_sum", "--harness-include-path", str(local_task)],
         "did you mean 'tiny_sums'? for a task of your own: pass its YAML file (--harness path/to/task.yaml) or the "
         "folder holding it (--harness-include-path DIR)"),
        (["--harness", "tiny_sums", "--harness-include-path", str(tmp_path / "nowhere")], "no such folder"),
        (["--harness", str(tmp_path / "nowhere.yaml")], "no such task file"),
        (["--harness-include-path", str(local_task)], "--harness-include-path needs --harness"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert not out.exists()  # refused before the built-in benchmark wrote anything


def test_si_eval_harness_on_a_local_task_base_vs_two_step_checkpoint(tiny_model_dir: Path, local_task: Path,
                                                                     tmp_path: Path) -> None:
    principles = tmp_path / "pair.yaml"
    principles.write_text(PAIR)
    run = tmp_path / "run"
    trained = runner.invoke(app, ["train", "--principles", str(principles), "--model", str(tiny_model_dir), "--out",
                                  str(run), "--max-steps", "2", "--preset", "grpo", "--set", "max_completion_length=6",
                                  "--set", "n_prompts=4", "--quiet"], catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    checkpoint, out = run / "checkpoint-2", tmp_path / "eval"
    args = ["eval", str(checkpoint), "--compare", str(tiny_model_dir), "--n-items", "2", "--max-new-tokens", "4",
            "--dtype", "float32", "--harness", "tiny_sums", "--harness-include-path", str(local_task),
            "--out", str(out), "--quiet", "--json"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["harness"]
    assert report["config"]["include_path"] == str(local_task) and report["config"]["tasks"] == ["tiny_sums"]

    written = {side: json.loads((out / f"harness-{side}.json").read_text()) for side in ("a", "b")}
    assert written["a"]["config"]["model_args"] == f"pretrained={checkpoint},dtype=float32"  # A is the checkpoint
    assert written["b"]["config"]["model_args"] == f"pretrained={tiny_model_dir},dtype=float32"
    settings = ("batch_size", "limit", "random_seed", "numpy_seed", "torch_seed", "fewshot_seed", "gen_kwargs")
    assert [written["a"]["config"][k] for k in settings] == [written["b"]["config"][k] for k in settings]
    for side in ("a", "b"):
        samples = written[side]["samples"]["tiny_sums"]
        assert len(samples) == len(SUMS)
        per_doc = _recomputed_exact_match(samples)
        assert report["results"][side]["tiny_sums"]["exact_match,none"] == pytest.approx(sum(per_doc.values()) / len(SUMS))

    comparison = json.loads((out / "harness-comparison.json").read_text())
    assert comparison == report["comparison"]
    assert [(r["task"], r["metric"]) for r in comparison] == [("tiny_sums", "exact_match,none")]
    row = comparison[0]
    assert row["n_paired"] == len(SUMS) and row["delta"] == pytest.approx(row["a"] - row["b"])
    assert row["a"] == report["results"]["a"]["tiny_sums"]["exact_match,none"]
    assert row["delta_ci"] is None or row["delta_ci"][0] <= row["delta"] <= row["delta_ci"][1]
    # the built-in benchmark ran on both too
    assert json.loads((out / "comparison.json").read_text())["n_items"] == 2
