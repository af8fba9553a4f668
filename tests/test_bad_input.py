"""The bad-input battery: every mistake exits 2 with one line naming the file/field and the fix,
and no traceback. Messages are collected in the test output (-rA) for review."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from si_toolkit.cli import app

runner = CliRunner()
GOOD = "mode: alternatives\nprinciples:\n  - id: a\n    text: Be brief.\n  - id: b\n    text: Be thorough.\n"

PRINCIPLE_CASES = {
    "malformed-yaml": ("mode: alternatives\nprinciples: [\n  - id: a\n", "malformed YAML"),
    "unknown-mode": ("mode: sideways\nprinciples:\n  - text: a\n  - text: b\n", "'mode'"),
    "alias-bomb": ('a: &a ["x","x","x"]\nb: &b [*a,*a,*a]\nc: [*b,*b,*b]\nmode: alternatives\n', "aliases"),
    "unknown-key": (GOOD + "colour: red\n", "unknown key"),
    "missing-text": ("mode: alternatives\nprinciples:\n  - id: a\n  - id: b\n    text: x\n", "'text'"),
    "duplicate-ids": ("mode: alternatives\nprinciples:\n  - id: a\n    text: x\n  - id: a\n    text: y\n", "duplicate id"),
    "k-lt-2": ("mode: alternatives\nprinciples:\n  - id: a\n    text: x\n", "K >= 2"),
    "factorial-over-limit": ("mode: antithesis\ndesign: factorial\nprinciples:\n" + "".join(
        f"  - id: p{i}\n    text: t{i}\n    antithesis: a{i}\n" for i in range(7)), "limit is 6"),
    "huge-principle": ("mode: alternatives\nprinciples:\n  - id: a\n    text: " + "x" * 1_100_000 + "\n  - id: b\n    text: y\n",
                       "over 1 MB"),
    "escaping-name": ("name: ../../x\n" + GOOD, "not a safe set name"),
}


def _check(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    for needle in needles:
        assert needle in text.replace("\n", " "), text
    assert "Traceback" not in text
    print(f"\n    {text}")
    return text


@pytest.mark.parametrize("case", sorted(PRINCIPLE_CASES))
def test_bad_principle_file(case: str, tmp_path: Path) -> None:
    content, needle = PRINCIPLE_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(content, encoding="utf-8")
    _check(runner.invoke(app, ["principles", "validate", str(path)]), needle, path.name)


def test_non_utf8_principle_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GOOD.replace("brief", "br\xe9f").encode("latin-1"))
    _check(runner.invoke(app, ["principles", "validate", str(path)]), "not valid UTF-8", "latin1.yaml")


PROMPT_CASES = {
    "empty.jsonl": ("", "empty.jsonl"),
    "blank.jsonl": ('{"prompt": "ok"}\n{"prompt": "   "}\n', "blank.jsonl"),
    "dupes.jsonl": ('{"id": "q1", "prompt": "a"}\n{"id": "q1", "prompt": "b"}\n', "q1"),
    "nocol.csv": ("question,answer\nWhat?,1\n", "prompt"),
    "badjson.jsonl": ('{"prompt": "a"}\n{"prompt": \n', "line 2"),
}


@pytest.mark.parametrize("name", sorted(PROMPT_CASES))
def test_bad_prompt_file(name: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    content, needle = PROMPT_CASES[name]
    (tmp_path / "set.yaml").write_text(GOOD)
    (tmp_path / name).write_text(content)
    result = runner.invoke(app, ["rank", str(tmp_path / "set.yaml"), "--prompts", str(tmp_path / name),
                                 "--model", str(tiny_model_dir), "--n-prompts", "1", "--out", str(tmp_path / "run")])
    _check(result, needle, name)


def test_prompt_longer_than_context(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "set.yaml").write_text(GOOD)
    (tmp_path / "long.jsonl").write_text('{"id": "huge", "prompt": "' + "apples " * 3000 + '"}\n')
    result = runner.invoke(app, ["rank", str(tmp_path / "set.yaml"), "--prompts", str(tmp_path / "long.jsonl"),
                                 "--model", str(tiny_model_dir), "--n-prompts", "1", "--dtype", "float32",
                                 "--out", str(tmp_path / "run"), "--quiet"])
    _check(result, "huge", "exceed the model context")


@pytest.mark.parametrize(("model", "needle"), [("no-such-org/no-such-model", "local Hugging Face cache"),
                                               ("not-a-model-dir", "not a model folder")])
def test_bad_model(model: str, needle: str, tmp_path: Path) -> None:
    (tmp_path / "set.yaml").write_text(GOOD)
    if model == "not-a-model-dir":
        model = str(tmp_path / model)
        Path(model).mkdir()
    result = runner.invoke(app, ["rank", str(tmp_path / "set.yaml"), "--model", model, "--out", str(tmp_path / "run")])
    _check(result, needle)


def test_non_finite_scores_are_refused_with_the_row(tmp_path: Path) -> None:
    rows = [{"set": "s", "prompt_id": f"p{x}", "condition": i, "variant": j, "replicate": 0, "span": span,
             "logp_sum": -1.0 - i, "n_tokens": 3} for x in range(3) for i in range(2) for j in range(2)
            for span in ("cot", "answer", "full")]
    frame = pd.DataFrame(rows)
    frame.loc[5, "logp_sum"] = np.nan  # a hand-edited cell
    frame.to_parquet(tmp_path / "scores.parquet")
    _check(runner.invoke(app, ["estimate", str(tmp_path / "scores.parquet")]), "non-finite", "p0")


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mode: alternatives\nprinciples: [\n")
    result = runner.invoke(app, ["--debug", "principles", "validate", str(path)])
    assert result.exit_code != 0 and result.exception is not None
