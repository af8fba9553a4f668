"""`rollout_backend: vllm`: a colocated vLLM engine samples the trainer's rollouts.

The unmarked tests check the importance-sampling correction and the config without vLLM.
Tests marked `vllm` start a real engine (scripts/test-vllm-cpu.sh on a CPU machine, or
`pytest -m vllm tests/test_train_vllm.py` where vllm is installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from si_toolkit.errors import SIError
from si_toolkit.principles import load_principle_set
from si_toolkit.train import losses
from si_toolkit.train.config import TrainConfig

PAIR = ("mode: alternatives\nprinciples:\n  - id: terse\n    text: Answer in as few words as possible.\n"
        "  - id: verbose\n    text: Explain every step in detail.\n")


# ---------------------------------------------------------------------- without vLLM
def test_correction_weights_follow_trl_modes() -> None:
    old = torch.log(torch.tensor([[0.5, 0.5, 0.2], [0.4, 0.1, 0.9]]))
    sampled = torch.log(torch.tensor([[0.5, 0.1, 0.2], [0.4, 0.5, 0.9]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    token, info = losses.rollout_correction_weights(old, sampled, mask, mode="token_truncate", cap=3.0)
    assert np.allclose(token.numpy(), [[1.0, 3.0, 0.0], [1.0, 0.2, 1.0]])  # 5 capped at 3; padding 0
    masked, _ = losses.rollout_correction_weights(old, sampled, mask, mode="token_mask", cap=3.0)
    assert np.allclose(masked.numpy(), [[1.0, 0.0, 0.0], [1.0, 0.2, 1.0]])
    seq, _ = losses.rollout_correction_weights(old, sampled, mask, mode="sequence_truncate", cap=3.0)
    assert np.allclose(seq.numpy(), [[3.0, 3.0, 0.0], [0.2, 0.2, 0.2]])  # products 5 and 0.2
    seq_mask, _ = losses.rollout_correction_weights(old, sampled, mask, mode="sequence_mask", cap=3.0)
    assert np.allclose(seq_mask.numpy(), [[0.0, 0.0, 0.0], [0.2, 0.2, 0.2]])
    assert info["rollout_logp_diff_max"] == pytest.approx(np.log(5.0))
    assert info["rollout_is_capped_ratio"] == pytest.approx(1 / 5)  # one of the five active tokens
    with pytest.raises(SIError, match="vllm_importance_sampling_mode"):
        losses.rollout_correction_weights(old, sampled, mask, mode="bogus")


def test_identical_samplers_leave_the_grpo_loss_unchanged() -> None:
    torch.manual_seed(0)
    logp = torch.randn(4, 6, requires_grad=True)
    mask = torch.ones(4, 6)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    weights, info = losses.rollout_correction_weights(logp.detach(), logp.detach(), mask)
    plain, _ = losses.grpo_loss(logp, logp.detach(), advantages, mask, loss_type="dapo")
    corrected, _ = losses.grpo_loss(logp, logp.detach(), advantages, mask, loss_type="dapo", per_token_weight=weights)
    assert float(corrected) == float(plain) and info["rollout_logp_diff_mean"] == 0.0


def test_config_checks_the_rollout_options() -> None:
    assert TrainConfig().rollout_backend == "hf"
    with pytest.raises(SIError, match="vllm_importance_sampling_cap"):
        TrainConfig(vllm_importance_sampling_cap=0.0)
    with pytest.raises(SIError, match="vllm_gpu_memory_utilization"):
        TrainConfig(vllm_gpu_memory_utilization=1.5)


def test_engines_under_torchrun_refuse_tensor_parallelism(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank's engine serves that rank alone, so the engine options may not split it over devices."""
    from si_toolkit.backends.vllm import OPTIONS_ENV
    from si_toolkit.train.colocate import open_rollout_engine
    from si_toolkit.train.distributed import DistContext

    monkeypatch.setenv(OPTIONS_ENV, '{"tensor_parallel_size": 2}')
    with pytest.raises(SIError, match="one engine per process.*tensor_parallel_size"):
        open_rollout_engine(TrainConfig(rollout_backend="vllm"), backend=None, ctx=DistContext(rank=0, world_size=2))


# ---------------------------------------------------------------------- with a vLLM engine
@pytest.fixture(autouse=True)
def small_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager (no compile) and a short context: an engine that starts in seconds on a CPU."""
    from si_toolkit.backends.vllm import OPTIONS_ENV

    monkeypatch.setenv(OPTIONS_ENV, '{"enforce_eager": true, "max_model_len": 1024}')


@pytest.fixture()
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "prompt": "What is 2 + 3?"}\n{"id": "b", "prompt": "Name a colour of the sky."}\n')
    return path


def _vllm_settings(prompts: Path, **overrides) -> dict:
    values = dict(model="embedded", dtype="float32", prompts=str(prompts), prompts_per_step=2, num_generations=8,
                  max_completion_length=8, preset="grpo", monitor_off_terms=False, learning_rate=1e-4,
                  lr_schedule="constant", save_every=0, tensorboard=False, seed=3)
    values.update(overrides)
    return values


def _vllm_config(prompts: Path, **overrides) -> TrainConfig:
    return TrainConfig(**_vllm_settings(prompts, **overrides))


def _first_token_probs(model, tokenizer, prompts: list[str], principle: str) -> torch.Tensor:
    """(n_prompts, vocab) probabilities of the first completion token under the policy."""
    from si_toolkit.chat import render_prompt_ids

    rows = []
    with torch.no_grad():
        for text in prompts:
            ids = torch.tensor([render_prompt_ids(tokenizer, principle, text)])
            rows.append(torch.softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1))
    return torch.stack(rows)


@pytest.mark.vllm
def test_after_a_step_and_a_sync_the_engine_scores_like_the_policy(prompts_file: Path, tmp_path: Path,
                                                                    write_set) -> None:
    from si_toolkit.backends.base import SamplingConfig
    from si_toolkit.chat import render_prompt_ids
    from si_toolkit.models import load_causal_lm, resolve_model
    from si_toolkit.train.distributed import DistContext
    from si_toolkit.train.forward import forward_pairs
    from si_toolkit.train.session import open_session
    from si_toolkit.train.trainer import train_step

    pair = load_principle_set(write_set("pair", PAIR))
    session = open_session(_vllm_config(prompts_file, rollout_backend="vllm", learning_rate=1e-3), pair,
                           tmp_path / "run", resume=False, ctx=DistContext())
    try:
        row = train_step(session, 1, reward_fn=lambda g: [float(len(set(r.token_ids))) for r in g.rollouts])
        assert row["rollout_logp_diff_mean"] < 2e-3  # the engine sampled what the policy would score (fp32)
        assert row["weight_sync_time"] > 0
        prompt = render_prompt_ids(session.tokenizer, pair.variants[0].text, "What is 7 times 6?")
        gen = session.rollout.generate([prompt], SamplingConfig(max_new_tokens=12, replicates=1), seed=5)[0][0]
        base = load_causal_lm(resolve_model("embedded"), dtype="float32", device="cpu")
        with torch.no_grad():
            policy = forward_pairs(session.current, [(prompt, gen.token_ids)], pad_id=session.pad_id, temperature=1.0)
            base_out = forward_pairs(base, [(prompt, gen.token_ids)], pad_id=session.pad_id, temperature=1.0)
        policy_logp = policy.logp[0, : len(gen.token_ids)].double().numpy()
        base_logp = base_out.logp[0, : len(gen.token_ids)].double().numpy()
        mismatch, moved = np.max(np.abs(gen.logprobs - policy_logp)), np.max(np.abs(gen.logprobs - base_logp))
        print(f"\n[sync] step mismatch {row['rollout_logp_diff_mean']:.2e}; engine vs policy {mismatch:.2e}, "
              f"engine vs base {moved:.2e} nats")
        assert mismatch < 2e-3
        assert moved > 10 * mismatch  # the sync carried the step's update
    finally:
        session.rollout.close()


@pytest.mark.vllm
@pytest.mark.parametrize("rollout_backend", ["hf", "vllm"])
def test_three_steps_learn_the_toy_reward(rollout_backend: str, prompts_file: Path, tmp_path: Path, write_set,
                                          embedded_backend) -> None:
    """Reward 1 when the first completion token is one the base model gives 5–50 % probability:
    three steps raise that probability, with either sampler."""
    from si_toolkit.train.trainer import train

    pair = load_principle_set(write_set("pair", PAIR))
    questions = ["What is 2 + 3?", "Name a colour of the sky."]
    before = _first_token_probs(embedded_backend.model, embedded_backend.tokenizer, questions, pair.variants[0].text)
    target = {}
    for n, probs in enumerate(before):
        candidates = [int(t) for t in torch.topk(probs, 5).indices if 0.05 <= float(probs[t]) <= 0.5]
        target[questions[n]] = candidates[0] if candidates else int(torch.topk(probs, 2).indices[1])

    def hit(group) -> list[float]:
        return [float(r.token_ids[:1] == (target[group.prompt.text],)) for r in group.rollouts]

    result = train(_vllm_config(prompts_file, rollout_backend=rollout_backend, max_steps=3), pair,
                   tmp_path / rollout_backend, reward_fn=hit)
    from si_toolkit.models import load_causal_lm
    from si_toolkit.models import ResolvedModel

    trained = load_causal_lm(ResolvedModel(ref=str(result.checkpoint), name="trained", path=str(result.checkpoint)),
                             dtype="float32", device="cpu")
    after = _first_token_probs(trained, embedded_backend.tokenizer, questions, pair.variants[0].text)
    gain = [float(after[n, target[q]] - before[n, target[q]]) for n, q in enumerate(questions)]
    assert np.mean(gain) > 0.02, f"{rollout_backend}: the rewarded token's probability moved by {gain}"
    print(f"\n[{rollout_backend}] gain of the rewarded token's probability {gain}; rewards "
          f"{[round(row['reward_mean'], 3) for row in result.rows]}")
    if rollout_backend == "vllm":
        mismatch = [float(f"{row['rollout_logp_diff_mean']:.1e}") for row in result.rows]
        print(f"[vllm] mismatch per step {mismatch} nats")
        assert all(row["rollout_logp_diff_mean"] < 2e-3 for row in result.rows)


@pytest.mark.vllm
@pytest.mark.parametrize("parallelism", ["ddp", "fsdp"])
def test_two_processes_with_an_engine_each_take_the_one_process_steps(parallelism: str, prompts_file: Path,
                                                                      tmp_path: Path, write_set) -> None:
    """Under torchrun every rank samples its prompts with its own engine and pushes its own copy of
    the new weights into it: 2 gloo processes draw the samples 1 process draws for the same
    global batch, their engines stay in sync with the policy at step 2 (after a push that moved
    it), and the weights after two steps match the 1-process run."""
    from safetensors.torch import load_file

    from si_toolkit.train.trainer import train

    pair = write_set("pair", PAIR)
    settings = dict(max_steps=2, prompts_per_step=2, num_generations=4, learning_rate=1e-3, adam_epsilon=1e-4)
    out2 = tmp_path / parallelism
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "si_toolkit.cli.train", "--principles", str(pair), "--model", "embedded", "--out", str(out2),
           "--quiet", "--json", "--set", "device=cpu", "--set", f"parallelism={parallelism}"]
    for key, value in _vllm_settings(prompts_file, rollout_backend="vllm", **settings).items():
        if key != "model":
            cmd += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((out2 / "train_config.json").read_text())["environment"]["world_size"] == 2
    rows2 = [json.loads(line) for line in (out2 / "metrics.jsonl").read_text().splitlines()]

    single = train(_vllm_config(prompts_file, rollout_backend="vllm", **settings), load_principle_set(pair),
                   tmp_path / "one")
    mismatch = [[float(f"{r['rollout_logp_diff_mean']:.1e}") for r in rows] for rows in (rows2, single.rows)]
    print(f"\n[torchrun {parallelism}] mismatch per step {mismatch[0]} nats (1 process: {mismatch[1]})")
    for two, one in zip(rows2, single.rows, strict=True):
        for key in ("reward_mean", "completion_length_mean", "truncated_ratio"):
            assert two[key] == one[key], key  # identical samples
        assert two["rollout_logp_diff_mean"] < 2e-3  # step 2: both engines sampled the pushed weights
        assert two["weight_sync_time"] > 0
        assert two["loss_grpo"] == pytest.approx(one["loss_grpo"], rel=1e-3, abs=1e-6)
    a = load_file(str(out2 / "checkpoint-2" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "checkpoint-2" / "model.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in b)
    print(f"[torchrun {parallelism}] weights after 2 steps differ from 1 process by at most {worst:.1e}")
    assert worst < 2e-5  # measured 3.8e-6; two steps move weights by up to 2·lr = 2e-3
