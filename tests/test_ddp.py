"""Data-parallel training under torchrun: 2 gloo processes take the same step as 1 process.

How the two runs are made comparable: every random choice of a step (its prompts, each
group's variants, each group's sampling seed) is a function of (seed, step, position of the
prompt in the global batch) only (train/rollout.py), so the 2-process run, where rank r
generates the prompts at positions r, r + 2, ..., samples exactly the completions the
1-process run samples for the same global batch of prompts_per_step = 2 prompts. The loss
weights (train/terms.term_weights) make DDP's gradient average equal the 1-process gradient,
and the Sinkhorn clouds are gathered over both processes. What differs is only float
rounding: each process pads and multiplies a batch of one prompt instead of two. Adam's first
step, lr·g/(|g| + eps), turns a 1e-9 rounding difference of a gradient near 0 into a 5e-5
difference of the weight when eps = 1e-8; a larger eps keeps the update linear in such
gradients, so the weights compare at the precision of the gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from si_toolkit.principles import load_principle_set
from si_toolkit.train.config import TrainConfig
from si_toolkit.train.trainer import train

PAIR = "mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate.\n  - id: butler\n    text: Talk like a butler.\n"
SETTINGS = {"max_steps": 1, "prompts_per_step": 2, "num_generations": 4, "max_completion_length": 8, "n_prompts": 4,
            "learning_rate": 1e-3, "beta": 0.05, "preset": "enigma", "lambda_ot": 0.5, "save_every": 0,
            "tensorboard": False, "seed": 3, "adam_epsilon": 1e-4}


def _params(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_two_gloo_processes_match_one_process(tiny_model_dir, write_set, tmp_path) -> None:
    principles = write_set("pair", PAIR)
    out2 = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "si_toolkit.cli.train", "--principles", str(principles), "--model", str(tiny_model_dir),
           "--out", str(out2), "--quiet", "--json", "--set", "device=cpu"]
    for key, value in SETTINGS.items():
        cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])  # only rank 0 prints
    assert json.loads((out2 / "train_config.json").read_text())["environment"]["world_size"] == 2

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(TrainConfig(model=str(tiny_model_dir), device="cpu", **SETTINGS), load_principle_set(principles), tmp_path / "one")
    finally:
        torch.set_num_threads(before)

    ddp_row, one_row = report["metrics"], single.rows[0]
    for key in ("reward_mean", "completion_length_mean", "format_rate", "frac_zero_std_groups"):
        assert ddp_row[key] == one_row[key], key  # identical samples
    for key in ("loss_grpo", "loss_sami", "sami_mi_bound", "sinkhorn", "kl", "entropy", "grad_norm"):
        assert ddp_row[key] == pytest.approx(one_row[key], rel=1e-4, abs=1e-6), key
    a, b = _params(out2 / "checkpoint-1"), _params(tmp_path / "one" / "checkpoint-1")
    initial = _params(tiny_model_dir)
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # the step moved the weights
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst  # the step moves weights by up to lr = 1e-3; they agree to 0.1 % of that
