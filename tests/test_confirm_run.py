"""`si confirm` end to end on a tiny random model: every step runs, resumes, and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from si_toolkit.confirm.analysis import OUTCOMES
from si_toolkit.confirm.confirm import CONFIRM_PROFILES, ConfirmConfig, run_confirm

TINY = {
    "design": {"top": "all", "bottom": 0, "seeds": 2},
    "primary": ("adherence_gain", "difference"),
    "rank": {"profile": "quick", "n_prompts": 3, "max_new_tokens": 6, "dtype": "float32"},
    "train": {"max_steps": 2, "prompts_per_step": 1, "max_completion_length": 6, "learning_rate": 1e-3,
              "monitor_off_terms": True, "save_every": 0, "save_final_optimizer": False, "tensorboard": False},
    "eval": {"n_items": 3, "max_new_tokens": 6, "batch_size": 3, "dtype": "float32"},
    "adherence": {"n_prompts": 3, "max_new_tokens": 6},
    "geometry": {"n_prompts": 2, "dtype": "float32"},
}
SETS = {
    "far": ("Answer in French.", "Answer in English."),
    "near": ("Be brief.", "Be short."),
    "mid": ("Use numbers.", "Use words."),
    "same": ("Answer.", "Answer."),
}


@pytest.fixture()
def four_sets(write_set) -> list[Path]:
    return [write_set(name, f"mode: alternatives\nprinciples:\n  - id: a\n    text: {a}\n  - id: b\n    text: {b}\n")
            for name, (a, b) in SETS.items()]


def test_confirm_runs_every_step_and_resumes(tiny_model_dir: Path, four_sets: list[Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CONFIRM_PROFILES, "tiny", TINY)
    config = ConfirmConfig(model=str(tiny_model_dir), profile="tiny")
    out = tmp_path / "confirm"
    result = run_confirm(four_sets, config, out, log=lambda line: None)

    assert sorted(result["sets"]) == sorted(SETS) and config.seeds == 2
    assert len(result["runs"]) == 4 * 2 * 2  # sets × seeds × {enigma, grpo}
    for row in result["runs"]:
        assert set(OUTCOMES) <= set(row)
        assert -1.0 <= row["graded_format_gain"] <= 1.0
    # grpo runs log the auxiliary terms too, so Sinkhorn drift is defined for both presets
    assert all(row["sinkhorn_drift"] is not None for row in result["runs"])
    for name in SETS:
        contrast = result["per_set"][name]["adherence_gain"]
        assert contrast["difference"] == pytest.approx(contrast["enigma"] - contrast["grpo"])
    primary = result["primary"]
    assert (primary["outcome"], primary["contrast"], primary["n"]) == ("adherence_gain", "difference", 4)
    assert primary["detectable_rho"] == 1.0  # 4 sets: only a perfect ordering reaches p = 1/24 < 0.05
    assert "Power:" in result["power_statement"]
    saved = json.loads((out / "confirm.json").read_text())
    assert saved["verdict"] == result["verdict"] and saved["schema"] == "si-toolkit/confirm/v2"
    html = (out / "confirm.html").read_text()
    assert result["power_statement"].split(":")[0] in html and "ENIGMA − GRPO" in html
    # model-only final checkpoints: no optimizer state kept
    import torch

    states = list((out / "train").glob("*/checkpoint-*/trainer_state.pt"))
    assert len(states) == 16 and all("optimizer" not in torch.load(p, weights_only=True) for p in states)

    # A rerun finds every output and recomputes only the analysis: same numbers.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*/summary.json")}
    again = run_confirm(four_sets, config, out, log=lambda line: None)
    assert again["primary"] == result["primary"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "eval").glob("*/summary.json")}


def test_a_run_killed_before_its_first_checkpoint_restarts_clean(tiny_model_dir: Path, four_sets: list[Path],
                                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from si_toolkit.confirm.confirm import _train
    from si_toolkit.principles import load_principle_set

    out = tmp_path / "confirm"
    folder = out / "train" / "far--grpo--seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.0}\n')  # what a kill leaves behind
    config = ConfirmConfig(model=str(tiny_model_dir), profile="quick")
    sizes = {**TINY, "train": {**TINY["train"], "max_steps": 1}}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "p1", "prompt": "What is 1 + 1?"}\n')
    run = _train(load_principle_set(four_sets[0]), "grpo", 0, config, sizes, prompts, out, lambda line: None)
    assert [row["step"] for row in run["rows"]] == [1]
