"""`si evolve` on the command line: bad input exits 2 with one line and writes nothing; a small
run on the tiny model writes a valid best.yaml and prints the verdict last."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from si_toolkit.cli import app
from si_toolkit.cli import evolve as evolve_cli
from si_toolkit.evolve import EvolveConfig

runner = CliRunner()
SEED = ("mode: alternatives\nprinciples:\n  - id: kind\n    text: Be kind. Acknowledge feelings.\n"
        "  - id: brisk\n    text: Be efficient. Get to the solution.\n")
POOL = "Open with the answer.\nThank the person.\nUse a numbered list.\n"


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    paths = {"seed": tmp_path / "seed.yaml", "pool": tmp_path / "pool.txt", "prompts": tmp_path / "prompts.jsonl"}
    paths["seed"].write_text(SEED, encoding="utf-8")
    paths["pool"].write_text(POOL, encoding="utf-8")
    paths["prompts"].write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?"}) + "\n"
                                        for i in range(12)), encoding="utf-8")
    return paths


def _args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["evolve", str(files["seed"]), "--pool", str(files["pool"]), "--prompts", str(files["prompts"]),
            "--out", str(out), "--selection-prompts", "8", "--holdout-prompts", "4", *extra]


BAD = {
    "empty-pool": ("pool", b"\n\n", [], "no sentences found"),
    "non-utf8-pool": ("pool", "Réponds poliment.".encode("latin-1"), [], "not valid UTF-8"),
    "long-pool-sentence": ("pool", b"word " * 200 + b"\n", [], "the limit is 500"),
    "invalid-seed": ("seed", b"mode: alternatives\nprinciples:\n  - id: a\n    text: Only one.\n", [], "K >= 2"),
    "holdout-too-large": (None, None, ["--holdout-prompts", "20"], "larger than the prompt set"),
    "splits-overlap": (None, None, ["--selection-prompts", "10"], "must be disjoint"),
    "budget-zero": (None, None, ["--budget-minutes", "0"], "--budget-minutes 0"),
    "population-zero": (None, None, ["--population", "0"], "--population 0"),
    "missing-proposer-model": (None, None, ["--proposer", str(Path("no-such-model-folder").resolve())],
                               "no-such-model-folder"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_nothing_written(case, files, tmp_path) -> None:
    which, content, extra, needle = BAD[case]
    if which is not None:
        files[which].write_bytes(content)
    out = tmp_path / "out"
    result = runner.invoke(app, _args(files, out, *extra))
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert needle in text and text.startswith("error:") and "\n" not in text, text
    assert not out.exists()


def test_cli_defaults_are_the_config_defaults() -> None:
    params = inspect.signature(evolve_cli.evolve).parameters
    for f in dataclasses.fields(EvolveConfig):
        if f.name in params:
            assert params[f.name].default == f.default, f.name
    assert params["budget_minutes"].default == evolve_cli.DEFAULT_BUDGET_MINUTES > 0


def test_small_run_on_the_tiny_model(files, tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    args = _args(files, out, "--model", str(tiny_model_dir), "--dtype", "float32", "--population", "3",
                 "--generations", "2", "--max-new-tokens", "6", "--quiet")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("best: ")
    for name in ("best.yaml", "lineage.jsonl", "report.html", "report.md", "result.json", "manifest.json"):
        assert (out / name).is_file(), name
    validated = runner.invoke(app, ["principles", "validate", str(out / "best.yaml")])
    assert validated.exit_code == 0, validated.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"].startswith("si evolve ") and "--population 3" in manifest["command"]
    # Rerun: replays from the cache and prints the same verdict, as JSON this time.
    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["verdict"] == result.stdout.strip().splitlines()[-1]
    assert summary["model_calls"] == {"generate": 0, "score": 0}
    changed = runner.invoke(app, [*args[:-1], "--seed", "1"])
    assert changed.exit_code == 2 and "differs in: " in changed.output and ", seed)" in changed.output
