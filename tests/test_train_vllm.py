"""`rollout_backend: vllm`: a colocated vLLM engine samples the trainer's rollouts.

The unmarked tests check the importance-sampling correction and the config without vLLM.
Tests marked `vllm` start a real engine (scripts/test-vllm-cpu.sh on a CPU machine, or
`pytest -m vllm tests/test_train_vllm.py` where vllm is installed).
"""

from __future__ import annotations

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


def _vllm_config(prompts: Path, **overrides) -> TrainConfig:
    values = dict(model="embedded", dtype="float32", prompts=str(prompts), prompts_per_step=2, num_generations=8,
                  max_completion_length=8, preset="grpo", monitor_off_terms=False, learning_rate=1e-4,
                  lr_schedule="constant", save_every=0, tensorboard=False, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


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
