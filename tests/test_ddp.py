"""Data-parallel training under torchrun: 2 gloo processes take the same step as 1 process,
with DDP and with FSDP2 (parallelism=fsdp), and an FSDP run resumes its sharded optimizer.

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


def _torchrun(principles: Path, out: Path, settings: dict[str, object], *extra: str) -> dict:
    """Run `si train` in 2 gloo processes; return rank 0's JSON report."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "si_toolkit.cli.train", "--principles", str(principles), "--model", settings["model"],
           "--out", str(out), "--quiet", "--json", "--set", "device=cpu", *extra]
    for key, value in settings.items():
        if key != "model":
            cmd += ["--set", f"{key}={value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # only rank 0 prints


@pytest.mark.parametrize(("parallelism", "recompute", "bf16"),
                         [("ddp", False, False), ("fsdp", False, False), ("fsdp", True, False), ("fsdp", True, True)],
                         ids=["ddp", "fsdp", "fsdp-gradient-checkpointing", "fsdp-gradient-checkpointing-bf16"])
def test_two_gloo_processes_match_one_process(tiny_model_dir, write_set, tmp_path, parallelism, recompute, bf16) -> None:
    """Two processes take the step one process takes (with gradient_checkpointing only in the two);
    under bf16 autocast too."""
    principles = write_set("pair", PAIR)
    out2 = tmp_path / parallelism
    report = _torchrun(principles, out2, {"model": str(tiny_model_dir), **SETTINGS, "parallelism": parallelism,
                                          "gradient_checkpointing": recompute, "bf16": bf16})
    environment = json.loads((out2 / "train_config.json").read_text())["environment"]
    assert environment["world_size"] == 2 and environment["bf16"] is bf16

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(TrainConfig(model=str(tiny_model_dir), device="cpu", bf16=bf16, **SETTINGS),
                       load_principle_set(principles), tmp_path / "one")
    finally:
        torch.set_num_threads(before)

    ddp_row, one_row = report["metrics"], single.rows[0]
    for key in ("reward_mean", "completion_length_mean", "format_rate", "frac_zero_std_groups"):
        assert ddp_row[key] == one_row[key], key  # identical samples
    # bf16 matmuls round differently for half the batch: agreement to bf16's precision, not float32's.
    rel = 2e-2 if bf16 else 1e-4
    for key in ("loss_grpo", "loss_sami", "sami_mi_bound", "sinkhorn", "kl", "entropy", "grad_norm"):
        assert ddp_row[key] == pytest.approx(one_row[key], rel=rel, abs=1e-6), key
    a, b = _params(out2 / "checkpoint-1"), _params(tmp_path / "one" / "checkpoint-1")  # full-state-dict HF folders
    initial = _params(tiny_model_dir)
    assert set(a) == set(initial)
    assert any(not torch.equal(a[k], initial[k]) for k in a)  # the step moved the weights
    if bf16:  # Adam's first step is about lr·sign(g): a gradient near 0 may flip, so compare whole updates
        update = lambda p: torch.cat([(p[k] - initial[k]).flatten() for k in sorted(p)])  # noqa: E731
        cosine = float(torch.nn.functional.cosine_similarity(update(a).double(), update(b).double(), dim=0))
        assert cosine > 0.995, cosine  # measured: 0.9989
        return
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst  # the step moves weights by up to lr = 1e-3; they agree to 0.1 % of that


def test_fsdp_resume_restores_the_sharded_optimizer(tiny_model_dir, write_set, tmp_path) -> None:
    """2 FSDP steps in one go == 1 step, then --resume for the second: the second AdamW update
    needs the first one's moments (a fresh optimizer would move every weight by about lr)."""
    principles = write_set("pair", PAIR)
    settings = {"model": str(tiny_model_dir), **SETTINGS, "parallelism": "fsdp", "lr_schedule": "constant",
                "save_every": 1}
    _torchrun(principles, tmp_path / "whole", {**settings, "max_steps": 2})
    _torchrun(principles, tmp_path / "part", {**settings, "max_steps": 1})
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "part" / "checkpoint-1") is not None  # transformers loads it
    report = _torchrun(principles, tmp_path / "part", {**settings, "max_steps": 2}, "--resume")
    assert report["last_step"] == 2
    a, b = _params(tmp_path / "whole" / "checkpoint-2"), _params(tmp_path / "part" / "checkpoint-2")
    first = _params(tmp_path / "whole" / "checkpoint-1")
    assert max(float((a[k] - first[k]).abs().max()) for k in a) > 1e-4  # step 2 moved the weights
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-7, worst
