"""The held-out benchmark: split, answer grading, summaries, paired comparison, tiny-model run (harness: test_harness.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from si_toolkit.errors import SIError
from si_toolkit.cli.confirm import eval_command
from si_toolkit.confirm.evaluate import (
    HELDOUT_FRACTION,
    EvalConfig,
    benchmark_items,
    compare_items,
    generate_items,
    heldout_split,
    is_heldout,
    read_items,
    score_response,
    summarize_items,
)
from si_toolkit.prompts import Prompt, PromptSet, load_prompts

runner = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # a second command keeps `eval` a named subcommand
    return app


# ----------------------------------------------------------------------------- held-out split


def test_heldout_split_partitions_the_builtin_set_by_id() -> None:
    full = load_prompts("builtin:arithmetic")
    train, heldout = heldout_split(full)
    ids = [p.id for p in full.prompts]
    assert sorted([p.id for p in train.prompts] + [p.id for p in heldout.prompts]) == sorted(ids)
    assert not {p.id for p in train.prompts} & {p.id for p in heldout.prompts}
    # each part keeps the set's order
    assert [p.id for p in heldout.prompts] == [i for i in ids if is_heldout(i)]
    assert len(heldout) == 23  # pinned: the split must never move (it would leak training items)


def test_a_prompts_side_does_not_depend_on_the_other_prompts() -> None:
    full = load_prompts("builtin:arithmetic")
    subset = PromptSet("x", "x", tuple(reversed(full.prompts[10:40])))
    _, heldout = heldout_split(subset)
    assert {p.id for p in heldout.prompts} == {p.id for p in full.prompts[10:40] if is_heldout(p.id)}


def test_heldout_fraction_is_respected_on_many_ids() -> None:
    ids = [f"item-{k}" for k in range(6000)]
    share = sum(is_heldout(i) for i in ids) / len(ids)
    assert abs(share - HELDOUT_FRACTION) < 0.02  # binomial sd ≈ 0.006
    assert abs(sum(is_heldout(i, 0.5) for i in ids) / len(ids) - 0.5) < 0.02


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_heldout_fraction_must_be_inside_0_1(fraction: float) -> None:
    with pytest.raises(SIError, match="fraction"):
        is_heldout("a", fraction)


# ----------------------------------------------------------------------------- grading


@pytest.mark.parametrize(
    ("text", "reference", "correct", "lenient", "format_ok", "predicted"),
    [
        ("6 times 4 is 24.</think><answer>26</answer>", "26", True, True, True, 26.0),
        ("so 24.</think><answer>24</answer>", "26", False, False, True, 24.0),
        ("3 pies, total 42</think><answer>3 pies cost 42 dollars</answer>", "42", True, True, True, 42.0),  # last number
        ("</think><answer>1,234</answer>", "1234", True, True, False, 1234.0),  # empty CoT: not the exact format
        ("half</think><answer>3/4</answer>", "0.75", True, True, True, 0.75),
        ("below zero</think><answer>−5</answer>", "-5", True, True, True, -5.0),
        ("the change is 26 dollars", "26", False, True, False, None),  # no answer tag: only lenient reads it
        ("the change is 26 dollars, or 30", "26", False, False, False, None),
        ("x</think><answer>26", "26", True, True, False, 26.0),  # unclosed answer block reads to the end
    ],
)
def test_score_response_uses_the_reward_extractor(text, reference, correct, lenient, format_ok, predicted) -> None:
    graded = score_response(text, reference)
    assert graded["correct"] is correct
    assert graded["correct_lenient"] is lenient
    assert graded["format_ok"] is format_ok
    assert graded["predicted"] == (None if predicted is None else pytest.approx(predicted))


def test_benchmark_items_refuses_non_numeric_answers(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "q1", "prompt": "2+2?", "answer": "4"}\n{"id": "q2", "prompt": "Colour?", "answer": "blue"}\n')
    with pytest.raises(SIError, match="'q2'.*not a number"):
        benchmark_items(EvalConfig(prompts=str(path), split="all"))


def test_benchmark_items_take_the_first_n_of_the_split() -> None:
    heldout = heldout_split(load_prompts("builtin:arithmetic"))[1]
    items = benchmark_items(EvalConfig(n_items=5))
    assert [p.id for p in items.prompts] == [p.id for p in heldout.prompts[:5]]
    assert len(benchmark_items(EvalConfig(split="all"))) == 72
    with pytest.raises(SIError, match="has only 23 items"):
        benchmark_items(EvalConfig(n_items=24))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"split": "train"}, "--split"), ({"max_new_tokens": 0}, "--max-new-tokens"), ({"batch_size": 0}, "--batch-size"),
     ({"n_items": 0}, "--n-items"), ({"temperature": -1.0}, "--temperature"), ({"system": "  "}, "--system")],
    ids=["split", "max-new-tokens", "batch-size", "n-items", "temperature", "system"],
)
def test_eval_config_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(SIError, match=field):
        EvalConfig(**kwargs)  # type: ignore[arg-type]


def _item(id_: str, correct: bool, fmt: bool = False, reference: str = "1", graded: float | None = None) -> dict[str, object]:
    return {"id": id_, "reference": reference, "correct": correct, "correct_lenient": correct, "format_ok": fmt,
            "graded_format": float(fmt) if graded is None else graded, "n_tokens": 10, "finish_reason": "stop"}


def test_graded_format_is_scored_and_compared_without_0_1_counts() -> None:
    assert score_response("a</think>\n<answer>", "1")["graded_format"] == 0.5
    assert score_response("a</think><answer>1</answer>", "1")["graded_format"] == 1.0
    a = [_item("x", False, graded=0.5), _item("y", False, graded=0.25)]
    b = [_item("x", False, graded=0.0), _item("y", False, graded=0.0)]
    graded = compare_items(a, b)["metrics"]["graded_format"]
    assert graded["delta"] == pytest.approx(0.375) and graded["only_a"] is None
    assert compare_items(a, b)["metrics"]["correct"]["neither"] == 2
    assert summarize_items(a)["graded_format_mean"] == pytest.approx(0.375)


def test_items_written_before_the_graded_metric_still_read(tmp_path: Path) -> None:
    row = {k: v for k, v in _item("q1", False).items() if k != "graded_format"}
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({**row, "response": "two</think>"}) + "\n")
    assert read_items(path)[0]["graded_format"] == 0.25


def test_summarize_items_gives_means_and_cis() -> None:
    items = [_item("a", True, True), _item("b", True), _item("c", True), _item("d", False)]
    summary = summarize_items(items)
    assert summary["accuracy"] == 0.75 and summary["format_rate"] == 0.25 and summary["n_items"] == 4
    low, high = summary["accuracy_ci"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0


# ----------------------------------------------------------------------------- paired comparison


def test_compare_items_pairs_by_id() -> None:
    a = [_item("q1", True), _item("q2", True), _item("q3", True), _item("q4", False)]
    b = [_item("q4", False), _item("q3", False), _item("q2", True), _item("q1", False)]  # order must not matter
    metric = compare_items(a, b, n_resamples=500)["metrics"]["correct"]
    # A: 3/4, B: 1/4 → Δ = 0.5; q1 and q3 right only under A, q2 under both, q4 under neither
    assert metric["delta"] == pytest.approx(0.5) and (metric["a"], metric["b"]) == (0.75, 0.25)
    assert (metric["both"], metric["only_a"], metric["only_b"], metric["neither"]) == (1, 2, 0, 1)
    assert metric["delta_ci"][0] <= 0.5 <= metric["delta_ci"][1]
    assert 0.0 < metric["p_value"] <= 1.0


def test_compare_items_of_identical_results_is_exactly_zero() -> None:
    a = [_item(f"q{k}", k % 3 == 0) for k in range(9)]
    metric = compare_items(a, a)["metrics"]["correct"]
    assert metric["delta"] == 0.0 and metric["delta_ci"] == [0.0, 0.0] and metric["p_value"] == 1.0


def test_compare_items_refuses_different_items() -> None:
    with pytest.raises(SIError, match="different items"):
        compare_items([_item("q1", True)], [_item("q2", True)])
    with pytest.raises(SIError, match="different reference answers"):
        compare_items([_item("q1", True, reference="1")], [_item("q1", True, reference="2")])


def test_read_items_names_the_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(_item("q1", True)) + "\n{oops\n")
    with pytest.raises(SIError, match="line 2: malformed JSON"):
        read_items(path)
    path.write_text('{"id": "q1"}\n')
    with pytest.raises(SIError, match="line 1: missing field"):
        read_items(path)


# ----------------------------------------------------------------------------- the tiny model


def test_eval_and_compare_end_to_end_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["eval", str(tiny_model_dir), "--compare", str(tiny_model_dir), "--n-items", "3", "--max-new-tokens", "6",
            "--out", str(out), "--quiet", "--json"]
    result = runner.invoke(_app(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert 0.0 <= data["a"]["accuracy"] <= 1.0 and data["a"]["n_items"] == 3
    items_a, items_b = read_items(out / "a" / "items.jsonl"), read_items(out / "b" / "items.jsonl")
    assert [r["id"] for r in items_a] == [p.id for p in benchmark_items(EvalConfig(n_items=3)).prompts]
    for row in items_a:  # every stored verdict is the extractor's verdict on the stored response
        graded = score_response(row["response"], row["reference"])
        assert {k: row[k] for k in graded} == graded and row["n_tokens"] <= 6
    # greedy decoding: the same weights give the same responses, so every paired difference is 0
    assert [r["response"] for r in items_a] == [r["response"] for r in items_b]
    assert all(m["delta"] == 0.0 for m in data["comparison"]["metrics"].values())
    assert json.loads((out / "comparison.json").read_text())["n_items"] == 3
    assert json.loads((out / "a" / "summary.json").read_text())["config"]["temperature"] == 0.0
    # an earlier run's items.jsonl can stand in for B, but only if it was made with the same settings
    earlier = str(out / "b" / "items.jsonl")
    stale = runner.invoke(_app(), [*args[:3], earlier, "--n-items", "3", "--max-new-tokens", "5",
                                   "--out", str(tmp_path / "stale"), "--quiet"])
    assert stale.exit_code == 2 and "max_new_tokens" in stale.output
    reused = runner.invoke(_app(), [*args[:3], earlier, *args[4:8], "--out", str(tmp_path / "reused"), "--quiet", "--json"],
                           catch_exceptions=False)
    assert reused.exit_code == 0, reused.output
    assert json.loads(reused.stdout)["comparison"]["metrics"]["correct"]["delta"] == 0.0


def test_sampled_decoding_is_seeded(tiny_backend) -> None:
    config = EvalConfig(n_items=2, max_new_tokens=5, temperature=1.0, seed=3)
    items = PromptSet("x", "x", (Prompt("p1", "What is 2 + 2?", "4"), Prompt("p2", "What is 3 + 3?", "6")))
    first, second = generate_items(tiny_backend, items, config), generate_items(tiny_backend, items, config)
    assert [r["response"] for r in first] == [r["response"] for r in second]
    assert all(r["finish_reason"] in ("stop", "length") and r["n_tokens"] <= 5 for r in first)
