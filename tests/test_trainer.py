"""The ENIGMA trainer on the tiny model: scores, metrics, checkpoints, exact resume, learning, failures.

The tiny model runs single-threaded here: on a busy 2-core machine, two OpenMP threads per
process make small matmuls tens of times slower.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from si_toolkit.backends.base import ScoreRequest
from si_toolkit.errors import SIError
from si_toolkit.principles import load_principle_set
from si_toolkit.prompts import load_prompts
from si_toolkit.train import trainer as trainer_module
from si_toolkit.train.checkpoint import load_trainer_state
from si_toolkit.cli.train import app
from si_toolkit.train.config import TrainConfig
from si_toolkit.train.forward import forward_pairs, span_mask, span_sums
from si_toolkit.train.metrics import TIMING_KEYS
from si_toolkit.train.rollout import assign_variants, rollout_group, step_prompt_indices
from si_toolkit.train.terms import sami_pairs
from si_toolkit.train.trainer import learning_rate_at, train

PAIR = "mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate.\n  - id: butler\n    text: Talk like a butler.\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def pair_set(write_set):
    return load_principle_set(write_set("pair", PAIR))


def _config(model: Path, **overrides) -> TrainConfig:
    base = dict(model=str(model), max_steps=2, prompts_per_step=2, num_generations=4, max_completion_length=8,
                learning_rate=1e-3, save_every=0, n_prompts=6, tensorboard=False)
    base.update(overrides)
    return TrainConfig(**base)


def _params(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


# ------------------------------------------------------------------ pure pieces


def test_the_train_command_does_not_import_pandas() -> None:
    """`si train` reads no score table, so its modules leave pandas (and pyarrow, ~75 MB of
    resident memory in every training process) unimported. A fresh interpreter, because this
    test process has imported pandas already."""
    script = ("import sys\n"
              "import si_toolkit.cli.train, si_toolkit.train.trainer, si_toolkit.train.api\n"
              "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_learning_rate_schedule() -> None:
    c = TrainConfig(learning_rate=1.0, warmup_steps=2, max_steps=6, lr_schedule="cosine")
    # warm-up 1/2, 1; cosine over the 4 remaining steps: ½(1 + cos(π·k/4)), k = 0..3
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert [learning_rate_at(s, c) for s in range(1, 7)] == pytest.approx(expected)
    flat = TrainConfig(learning_rate=0.1, lr_schedule="constant", max_steps=3)
    assert [learning_rate_at(s, flat) for s in (1, 2, 3)] == [0.1, 0.1, 0.1]


def test_prompt_schedule_walks_epochs_of_permutations() -> None:
    stream = [i for step in range(1, 6) for i in step_prompt_indices(5, 2, step, seed=3)]  # 10 items = 2 epochs
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:]) == list(range(5))
    assert step_prompt_indices(5, 2, 2, seed=3) == stream[2:4]  # a pure function of (step, seed)
    assert stream != [i for step in range(1, 6) for i in step_prompt_indices(5, 2, step, seed=4)]


def test_variants_are_stratified_blocks_of_k() -> None:
    rng = np.random.default_rng(0)
    for g, k in [(4, 2), (6, 3), (5, 2)]:
        variants = assign_variants(g, k, rng)
        assert len(variants) == g
        for start in range(0, g - g % k, k):
            assert sorted(variants[start: start + k]) == list(range(k))  # each full block holds every variant once


# ------------------------------------------------------------------ scores


def test_sami_matrix_equals_the_scoring_stage(tiny_backend, pair_set) -> None:
    """L[i, j] = log π(y_j | x, c_i) summed over the CoT: the trainer's batched forward equals the backend scorer."""
    from si_toolkit.backends.base import SamplingConfig

    prompt = load_prompts("builtin:arithmetic", n=1).prompts[0]
    texts = [v.text for v in pair_set.variants]
    group = rollout_group(tiny_backend, tiny_backend.tokenizer, prompt, texts, num_generations=4,
                          sampling=SamplingConfig(max_new_tokens=12), prefill=True, seed=0, step=1, position=0)
    pairs, index, bounds = sami_pairs([group], 2, "full")
    diagonal = [(r.prompt_ids, r.token_ids) for r in group.rollouts]
    every = diagonal + pairs
    out = forward_pairs(tiny_backend.model, every, pad_id=tiny_backend.tokenizer.pad_token_id, temperature=1.0)
    sums, counts = span_sums(out.logp, span_mask(bounds, out.logp.shape[1], out.logp.device) & out.mask)
    scored = tiny_backend.score([ScoreRequest(tuple(p), tuple(c)) for p, c in every])
    assert torch.allclose(sums.double(), torch.tensor([s.sum() for s in scored]), atol=1e-4)
    assert counts.tolist() == [len(c) for _, c in every]
    assert index.shape == (2, 2, 2)  # G / K = 2 matrices of K x K
    for m in range(2):
        for j in range(2):  # column j holds the same completion, row i its prompt under variant i
            completions = {every[int(index[m, i, j])][1] for i in range(2)}
            assert len(completions) == 1
            assert [every[int(index[m, i, j])][0] for i in range(2)] == list(group.variant_prompt_ids)


def test_sami_cross_pairs_stop_at_the_span_end(tiny_backend, pair_set) -> None:
    """With sami_span=cot a cross pair carries its completion up to the CoT's end only, and its
    span sum equals the scorer's over the whole completion, cut at the same place."""
    from dataclasses import replace

    from si_toolkit.backends.base import SamplingConfig

    prompt = load_prompts("builtin:arithmetic", n=1).prompts[0]
    texts = [v.text for v in pair_set.variants]
    group = rollout_group(tiny_backend, tiny_backend.tokenizer, prompt, texts, num_generations=4,
                          sampling=SamplingConfig(max_new_tokens=12), prefill=True, seed=0, step=1, position=0)
    ends = [5, 3, 7, 1]
    group = replace(group, rollouts=tuple(replace(r, cot_end=min(e, len(r.token_ids))) for r, e in zip(group.rollouts, ends)))
    pairs, index, bounds = sami_pairs([group], 2, "cot")
    diagonal = [(r.prompt_ids, r.token_ids) for r in group.rollouts]
    out = forward_pairs(tiny_backend.model, diagonal + pairs, pad_id=tiny_backend.tokenizer.pad_token_id, temperature=1.0)
    sums, _ = span_sums(out.logp, span_mask(bounds, out.logp.shape[1], out.logp.device) & out.mask)
    for m in range(2):
        for i in range(2):
            for j in range(2):
                row = int(index[m, i, j])
                if i == j:
                    continue
                y = group.rollouts[int(index[m, j, j])]  # the completion of column j, from its diagonal entry
                assert pairs[row - len(diagonal)] == (group.variant_prompt_ids[i], y.token_ids[: y.cot_end])
                scored = tiny_backend.score([ScoreRequest(tuple(group.variant_prompt_ids[i]), tuple(y.token_ids))])[0]
                assert float(sums[row]) == pytest.approx(float(scored[: y.cot_end].sum()), abs=1e-4)


STEM = tuple(range(100, 120))  # 20 tokens: prompts that start with it share a stem (>= 16 tokens)


@pytest.mark.parametrize(("a", "b", "c"), [((5, 9, 12, 40, 41, 7), (6, 9, 30), (7,)),
                                           (STEM + (5, 9, 12), STEM + (6, 9, 30, 31), (7, 8, 9))],
                         ids=["distinct-prompts", "shared-stem"])
def test_shared_prompt_passes_equal_one_pass_with_gradients(tiny_model_dir, a, b, c) -> None:
    """forward_pairs runs each shared stem and each distinct prompt once, and the completions on
    their caches: log-probs, entropies, hidden states and the gradient equal one pass over
    [prompt | completion] rows."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = [(a, (3, 4, 5)), (b, (8,)), (a, (11, 12, 13, 14, 15)), (b, (20, 21)), (a, (3, 4)), (c, (9, 9))]
    results = []
    for share, recompute in ((True, False), (False, False), (True, True), (False, True)):
        model.zero_grad()
        out = forward_pairs(model, pairs, pad_id=0, temperature=0.7, layers=[0, 1, -1], with_entropy=True,
                            share_prompts=share, recompute=recompute)
        (out.logp.sum() + sum(h[out.mask].sum() for h in out.hidden.values())).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out, grads))
        assert model._si_head_is_plain is True  # the chunked lm-head ran (it agreed with the model's own)
    (shared, g_shared), (single, g_single) = results[:2]
    for (out, grads), (plain, plain_grads) in zip(results[2:], results[:2]):  # checkpointed layers: same numbers
        torch.testing.assert_close(out.logp, plain.logp, atol=1e-6, rtol=0)
        for name in grads:
            torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-6, rtol=1e-6, msg=name)
    assert torch.equal(shared.mask, single.mask) and shared.mask.sum() == 3 + 1 + 5 + 2 + 2 + 2
    torch.testing.assert_close(shared.logp, single.logp, atol=1e-5, rtol=0)
    m = shared.mask  # padding columns hold whatever the padded position computes
    torch.testing.assert_close(shared.entropy[m], single.entropy[m], atol=1e-5, rtol=0)
    for layer in (0, 1, -1):
        torch.testing.assert_close(shared.hidden[layer][m], single.hidden[layer][m], atol=1e-5, rtol=0)
    for name in g_single:
        torch.testing.assert_close(g_shared[name], g_single[name], atol=1e-4, rtol=1e-4, msg=name)
    # log π_T(y) = log softmax(logits / T)[y]: check one token against a plain forward.
    with torch.no_grad():
        logits = model(torch.tensor([list(a) + [3, 4, 5]])).logits[0, len(a) - 1: len(a) + 2] / 0.7
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor([[3], [4], [5]]))[:, 0]
    torch.testing.assert_close(shared.logp[0, :3], expected.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("cot_ends", "logged"), [((0, 3), False), ((2, 3), True)], ids=["one-point-cloud", "two-points"])
def test_ot_term_needs_two_points_per_cloud(tiny_backend, pair_set, cot_ends, logged) -> None:
    """A completion whose CoT span is empty ('<answer>' first) adds no OT point; a 1-point cloud adds no term."""
    from si_toolkit.chat import render_prompt_ids
    from si_toolkit.train.distributed import DistContext
    from si_toolkit.train.metrics import StatSums
    from si_toolkit.train.rollout import Group, Rollout
    from si_toolkit.train.terms import MicroBatch, Models, micro_batch_loss

    tok, model = tiny_backend.tokenizer, tiny_backend.model
    prompt = load_prompts("builtin:arithmetic", n=1).prompts[0]
    rendered = tuple(tuple(render_prompt_ids(tok, v.text, prompt.text)) for v in pair_set.variants)
    ids = tuple(tok("the total is 4 apples", add_special_tokens=False).input_ids)
    rollouts = tuple(Rollout(variant=v, replicate=0, prompt_ids=rendered[v], token_ids=ids, text="", cot_end=cot_ends[v],
                             format_ok=False, finish_reason="length") for v in range(2))
    group = Group(position=0, prompt=prompt, variant_prompt_ids=rendered, rollouts=rollouts)
    diagonal = [(r.prompt_ids, r.token_ids) for r in rollouts]
    pad = tok.pad_token_id
    with torch.no_grad():
        ref = forward_pairs(model, diagonal, pad_id=pad, temperature=1.0, layers=[-1])  # reference = policy here
    mb = MicroBatch(groups=[group], advantages=torch.zeros(2), weights={"grpo": 1.0, "sami": 1.0, "ot": 1.0}, ref=ref)
    cfg = _config(Path("unused"), preset="grpo+ot", num_generations=2, prompts_per_step=1, monitor_off_terms=False)
    stats = StatSums()
    loss = micro_batch_loss(cfg, Models(model=model, policy=model, pad_id=pad, ctx=DistContext()), mb, 2, stats)
    values = stats.reduce(DistContext())
    assert torch.isfinite(loss)
    assert ("sinkhorn" in values) == logged
    if logged:
        assert values["sinkhorn"] == pytest.approx(0.0, abs=1e-5)  # identical clouds


# ------------------------------------------------------------------ training runs


def test_eval_passes_run_float32_linear_layers_on_onednn(tiny_model_dir, pair_set, tmp_path, monkeypatch) -> None:
    """The eval SAMI bound's passes take the training step's float32 route on CPU (oneDNN)."""
    from si_toolkit.backends import cpu_linear
    from si_toolkit.models import ResolvedModel, load_causal_lm

    calls, eval_calls = [], []  # every oneDNN product; those made inside each eval SAMI bound
    apply, bound = cpu_linear._OneDNNLinear.apply, trainer_module._sami_bound

    def counted_apply(*args):
        calls.append(1)
        return apply(*args)

    def counted_bound(*args):
        before = len(calls)
        value = bound(*args)
        eval_calls.append(len(calls) - before)
        return value

    monkeypatch.setattr(cpu_linear._OneDNNLinear, "apply", counted_apply)
    monkeypatch.setattr(trainer_module, "_sami_bound", counted_bound)
    cfg = _config(tiny_model_dir, max_steps=1, eval_every=1, eval_prompts="builtin:arithmetic", n_eval_prompts=2)
    result = train(cfg, pair_set, tmp_path / "run")
    assert math.isfinite(result.rows[0]["eval_sami_mi_bound"])
    policy = load_causal_lm(ResolvedModel(ref=str(tiny_model_dir), name="tiny", path=str(tiny_model_dir)),
                            dtype="float32", device="cpu")
    linears = sum(type(m) is torch.nn.Linear for m in policy.modules())  # the decoder's layers and the head
    # Every linear layer of a pass, not only the chunked head (which takes oneDNN anywhere).
    assert (sum(eval_calls) >= linears) == cpu_linear._ONEDNN


def test_two_steps_log_every_metric_and_save_a_loadable_checkpoint(tiny_model_dir, pair_set, tmp_path) -> None:
    out = tmp_path / "run"
    cfg = _config(tiny_model_dir, beta=0.05, eval_every=2, eval_prompts="builtin:arithmetic", n_eval_prompts=2)
    result = train(cfg, pair_set, out)
    assert [r["step"] for r in result.rows] == [1, 2] and result.checkpoint == out / "checkpoint-2"
    first = result.rows[0]
    assert "eval_reward_mean" not in first
    assert {"eval_reward_mean", "eval_format_rate", "eval_completion_length", "eval_sami_mi_bound"} <= set(result.rows[1])
    for key in ("reward_mean", "reward_std", "format_rate", "frac_zero_std_groups", "loss", "loss_grpo", "loss_sami",
                "sami_mi_bound", "sinkhorn", "kl", "entropy", "clip_ratio_region", "completion_length_mean",
                "grad_norm", "lr", "step_time", "tokens_per_s"):
        assert key in first and first[key] is not None, key
    assert first["sinkhorn"] == pytest.approx(0.0, abs=1e-5) and first["kl"] == pytest.approx(0.0, abs=1e-6)  # policy = reference
    assert first["sami_mi_bound"] <= math.log(2) + 1e-9
    assert first["loss"] == pytest.approx(first["loss_grpo"] + first["loss_sami"] + first["sinkhorn"])
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    assert json.loads((out / "train_config.json").read_text())["config"]["beta"] == 0.05

    state = load_trainer_state(out / "checkpoint-2")  # weights_only=True
    assert state["step"] == 2 and "optimizer" in state and "rng" in state
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint-2")
    tokenizer = AutoTokenizer.from_pretrained(out / "checkpoint-2")
    ids = tokenizer("the total", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    initial = _params(tiny_model_dir)
    assert any(not torch.equal(initial[k], v) for k, v in _params(out / "checkpoint-2").items())


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_resume_continues_exactly(tiny_model_dir, pair_set, tmp_path, bf16) -> None:
    """4 steps in one go == killed during step 3, resumed from checkpoint-2 (metrics and weights), off-policy updates."""
    cfg = _config(tiny_model_dir, max_steps=4, save_every=2, num_iterations=2, grad_accum=2, beta=0.02,
                  importance_level="sequence", ot_pooling="token", ot_layers=[1, -1], ot_max_points=20, bf16=bf16)
    whole = train(cfg, pair_set, tmp_path / "whole")
    part = tmp_path / "part"

    def kill_at_step_3(row: dict) -> None:  # after step 3 is logged, before its checkpoint would be written
        if row["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, pair_set, part, on_step=kill_at_step_3)
    assert [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    with open(part / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"step": 4, "rew')  # and a row torn by the kill
    with pytest.raises(SIError, match="pass --resume"):
        train(cfg, pair_set, part)
    with pytest.raises(SIError, match=r"learning_rate: 0.001 -> 0.002"):
        train(TrainConfig(**{**cfg.to_dict(), "learning_rate": 2e-3}), pair_set, part, resume=True)
    resumed = train(cfg, pair_set, part, resume=True)
    assert [r["step"] for r in resumed.rows] == [3, 4]
    assert [_comparable(r) for r in resumed.rows] == [_comparable(r) for r in whole.rows[2:]]
    logged = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]  # the orphan row of step 3 and the torn row were replaced, not duplicated
    a, b = _params(tmp_path / "whole" / "checkpoint-4"), _params(part / "checkpoint-4")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_model_only_final_checkpoint_is_small_and_refuses_to_resume(tiny_model_dir, pair_set, tmp_path) -> None:
    """save_final_optimizer=false: checkpoint-2 (save_every) keeps AdamW's state for resuming; the final
    checkpoint-3 does not, still loads in transformers, and --resume from it says what to do."""
    cfg = _config(tiny_model_dir, max_steps=3, save_every=2, save_final_optimizer=False, preset="grpo",
                  monitor_off_terms=False)
    out = tmp_path / "final"
    train(cfg, pair_set, out)
    assert "optimizer" in load_trainer_state(out / "checkpoint-2")
    final = load_trainer_state(out / "checkpoint-3")
    assert "optimizer" not in final and final["step"] == 3
    size = lambda name: (out / name / "trainer_state.pt").stat().st_size  # noqa: E731
    assert size("checkpoint-3") * 10 < size("checkpoint-2")
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "checkpoint-3") is not None
    longer = TrainConfig(**{**cfg.to_dict(), "max_steps": 4})
    with pytest.raises(SIError, match=r"checkpoint-3 was saved without its optimizer state.*--model .*checkpoint-3"):
        train(longer, pair_set, out, resume=True)


def test_missing_tensorboard_is_said_once(tmp_path, monkeypatch) -> None:
    from si_toolkit.train.metrics import MetricsLog

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes the import fail, installed or not
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.warns(UserWarning, match="tensorboard package is not installed.*tensorboard=false") as caught:
        log = MetricsLog(tmp_path, enabled=True, tensorboard=True)
    assert len(caught) == 1 and log.writer is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when TensorBoard is off, or on processes that do not log
        MetricsLog(tmp_path, enabled=True, tensorboard=False)
        MetricsLog(tmp_path, enabled=False, tensorboard=True)


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_the_loop_learns_a_reward_that_varies(tiny_model_dir, pair_set, tmp_path, bf16) -> None:
    """Reward = share of completion tokens from the lower half of the vocabulary: it rises while S_ε stays bounded.
    Under bf16 autocast too, where the reference runs under the same autocast, so S_ε still starts at 0.

    The Sinkhorn term sits on the middle layer: on the tiny model, OT on the last (normed) layer
    pins the very states the logits are read from, and the reward cannot move.
    """
    half = 200

    def share_low(group) -> list[float]:
        return [float(np.mean([t < half for t in r.token_ids])) for r in group.rollouts]

    cfg = _config(tiny_model_dir, preset="grpo+ot", lambda_ot=0.1, ot_layers=[1], max_steps=30, learning_rate=3e-3,
                  lr_schedule="constant", num_generations=8, monitor_off_terms=False, seed=1, bf16=bf16)
    rows = train(cfg, pair_set, tmp_path / "learn", reward_fn=share_low).rows
    rewards = [r["reward_mean"] for r in rows]
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5]) + 0.15, rewards
    sinkhorn = [r["sinkhorn"] for r in rows]
    assert rows[0]["sinkhorn"] == pytest.approx(0.0, abs=1e-5)
    # Bounded: never above 3 reference-variance units, and settled below 1 (≈ half the spread of the
    # reference cloud itself, whose points sit at squared distance ≈ 2 from each other).
    assert max(sinkhorn) < 3.0 and np.mean(sinkhorn[-10:]) < 1.0, sinkhorn
    assert "loss_sami" not in rows[0]  # SAMI neither trained nor monitored


@pytest.mark.parametrize(
    ("loss_type", "importance_level", "scale_rewards"),
    [("grpo", "token", "group"), ("dr_grpo", "token", "none"), ("dapo", "sequence", "group"), ("dapo", "token", "batch")],
    ids=["grpo", "dr_grpo-unscaled", "dapo-gspo", "dapo-batch-scaled"],
)
def test_every_loss_variant_trains(tiny_model_dir, pair_set, tmp_path, loss_type, importance_level, scale_rewards) -> None:
    def by_length(group) -> list[float]:  # varies inside every group: a GRPO signal for each variant
        return [float(len(set(r.token_ids))) for r in group.rollouts]

    cfg = _config(tiny_model_dir, preset="grpo", max_steps=1, loss_type=loss_type, importance_level=importance_level,
                  scale_rewards=scale_rewards, monitor_off_terms=False, num_iterations=2)
    row = train(cfg, pair_set, tmp_path / loss_type, reward_fn=by_length).rows[0]
    assert math.isfinite(row["loss_grpo"]) and row["grad_norm"] > 0
    assert "kl" not in row and "sinkhorn" not in row  # no reference model is loaded


def test_step_advantages_use_the_whole_step_and_keep_this_ranks_rows() -> None:
    """Rank 1 of 2 holds the second group; with scale_rewards=batch its advantages divide by the
    std of all 8 rewards of the step, not of its own 4."""
    from si_toolkit.train.distributed import DistContext

    step = np.array([1.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 2.0])  # rank 0's group, then rank 1's
    # Rank 1's group 3, 1, 2, 2: mean 2, centred 1, −1, 0, 0. Step std = sqrt(8.875 / 7) (see
    # test_losses); its own std would be sqrt(2/3).
    rank1 = DistContext(rank=1, world_size=2)
    batch = trainer_module.step_advantages(step, 4, TrainConfig(scale_rewards="batch"), rank1)
    expected = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64) / (math.sqrt(8.875 / 7) + 1e-4)
    torch.testing.assert_close(batch, expected)
    group = trainer_module.step_advantages(step, 4, TrainConfig(scale_rewards="group"), rank1)
    torch.testing.assert_close(group, torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64) / (math.sqrt(2 / 3) + 1e-4))


def test_loss_tokens_leave_out_truncated_completions(tiny_backend, pair_set) -> None:
    from si_toolkit.train.rollout import Group, Rollout
    from si_toolkit.train.terms import loss_tokens

    prompt = load_prompts("builtin:arithmetic", n=1).prompts[0]
    rollouts = tuple(Rollout(variant=v, replicate=0, prompt_ids=(1,), token_ids=(5,) * n, text="", cot_end=0,
                             format_ok=False, finish_reason=reason)
                     for v, (n, reason) in enumerate([(3, "stop"), (8, "length")]))
    group = Group(position=0, prompt=prompt, variant_prompt_ids=((1,), (1,)), rollouts=rollouts)
    assert loss_tokens([group], mask_truncated=False) == 11
    assert loss_tokens([group], mask_truncated=True) == 3  # the 8 tokens of the truncated one are gone


def test_masking_every_truncated_completion_leaves_no_grpo_gradient(tiny_model_dir, pair_set, tmp_path) -> None:
    """The tiny model never emits EOS in 8 tokens, so every completion is truncated: with
    mask_truncated_completions nothing is left in the GRPO loss and the weights do not move."""
    def by_length(group) -> list[float]:
        return [float(len(set(r.token_ids))) for r in group.rollouts]

    settings = dict(preset="grpo", max_steps=1, monitor_off_terms=False)
    masked = train(_config(tiny_model_dir, mask_truncated_completions=True, **settings), pair_set, tmp_path / "m",
                   reward_fn=by_length).rows[0]
    assert masked["truncated_ratio"] == 1.0
    assert masked["loss_grpo"] == 0.0 and masked["grad_norm"] == 0.0
    initial, after = _params(tiny_model_dir), _params(tmp_path / "m" / "checkpoint-1")
    assert all(torch.equal(initial[k], after[k]) for k in initial)
    plain = train(_config(tiny_model_dir, **settings), pair_set, tmp_path / "p", reward_fn=by_length).rows[0]
    assert plain["grad_norm"] > 0.0  # the same completions without the mask do train


def test_lora_dropout_runs_only_in_the_loss_forward(tiny_model_dir, pair_set) -> None:
    """LoRA dropout is on inside `lora_dropout(…, True)` (two forwards differ) and off elsewhere."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from si_toolkit.train.forward import lora_dropout

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # B = 0 at initialisation would hide the branch, dropout or not
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    model.eval()
    pairs = [((1, 2, 3, 4), (5, 6, 7))]

    def logp() -> torch.Tensor:
        return forward_pairs(model, pairs, pad_id=0, temperature=1.0).logp.detach()

    torch.manual_seed(0)
    assert torch.equal(logp(), logp())  # eval mode: deterministic
    with lora_dropout(model, True):
        first, second = logp(), logp()
    assert not torch.equal(first, second)
    assert torch.equal(logp(), logp()) and not any(m.training for m in model.modules())  # back to eval
    with lora_dropout(model, False):
        assert torch.equal(logp(), logp())


def test_lora_dropout_changes_the_update_and_repeats_under_a_seed(tiny_model_dir, pair_set, tmp_path) -> None:
    def run(name: str, dropout: float, recompute: bool = True) -> dict[str, torch.Tensor]:
        cfg = _config(tiny_model_dir, max_steps=1, lora_r=4, lora_targets=["q_proj", "v_proj"], learning_rate=1e-2,
                      lora_dropout=dropout, preset="grpo", monitor_off_terms=False, gradient_checkpointing=recompute)
        train(cfg, pair_set, tmp_path / name, reward_fn=lambda g: [float(len(set(r.token_ids))) for r in g.rollouts])
        return _params(tmp_path / name / "checkpoint-1")

    a, b, none = run("a", 0.5), run("b", 0.5), run("none", 0.0)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the dropout masks come from (seed, step, rank)
    assert any(not torch.equal(a[k], none[k]) for k in a)  # and they change the update
    kept = run("kept", 0.5, recompute=False)  # the replayed layers drew the same masks as the first run
    assert max(float((a[k] - kept[k]).abs().max()) for k in a) < 1e-6


def test_non_finite_loss_saves_the_last_weights_and_stops(tiny_model_dir, pair_set, tmp_path, monkeypatch) -> None:
    real = trainer_module.micro_batch_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 1 else loss  # step 1 is fine, step 2 is NaN

    monkeypatch.setattr(trainer_module, "micro_batch_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(SIError, match="step 2: the loss or its gradient is not finite.*checkpoint-1"):
        train(_config(tiny_model_dir, max_steps=3), pair_set, out)
    assert load_trainer_state(out / "checkpoint-1")["step"] == 1
    assert all(torch.isfinite(v).all() for v in _params(out / "checkpoint-1").values())


def test_lambda_sami_needs_complete_matrices(tiny_model_dir, pair_set, tmp_path) -> None:
    with pytest.raises(SIError, match="num_generations=3 must be a multiple of K=2"):
        train(_config(tiny_model_dir, num_generations=3), pair_set, tmp_path / "x")


def test_lora_trains_adapters_and_saves_merged_weights(tiny_model_dir, pair_set, tmp_path) -> None:
    out = tmp_path / "lora"
    train(_config(tiny_model_dir, max_steps=1, lora_r=4, lora_targets=["q_proj", "v_proj"], learning_rate=1e-2), pair_set, out)
    assert (out / "checkpoint-1" / "adapter" / "adapter_config.json").is_file()
    merged, initial = _params(out / "checkpoint-1"), _params(tiny_model_dir)
    assert set(merged) == set(initial)  # a plain model: no lora_ keys
    changed = {k for k in merged if not torch.equal(merged[k], initial[k])}
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)


def test_lora_without_peft_is_a_clear_error(tiny_model_dir, pair_set, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
    with pytest.raises(SIError, match="lora_r=4 needs the optional package peft"):
        train(_config(tiny_model_dir, lora_r=4), pair_set, tmp_path / "nopeft")


# ------------------------------------------------------------------ command line


def test_cli_trains_and_reports_json(tiny_model_dir, write_set, tmp_path) -> None:
    path = write_set("pair", PAIR)
    out = tmp_path / "cli"
    args = ["--principles", str(path), "--model", str(tiny_model_dir), "--out", str(out), "--max-steps", "1",
            "--preset", "grpo", "--set", "max_completion_length=6", "--set", "n_prompts=4", "--quiet", "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["last_step"] == 1 and Path(report["checkpoint"]) == out / "checkpoint-1"
    assert json.loads((out / "train_config.json").read_text())["config"]["preset"] == "grpo"


def test_cli_lists_config_keys() -> None:
    result = CliRunner().invoke(app, ["--help-config"])
    assert result.exit_code == 0
    assert "lambda_sami" in result.stdout and "ot_layers" in result.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--set", "lerning_rate=1"], "did you mean 'learning_rate'"), (["--preset", "ppo"], "preset='ppo'"), ([], None)],
    ids=["unknown-key", "bad-preset", "missing-principles"],
)
def test_cli_user_errors_exit_2(extra: list[str], message: str | None, write_set) -> None:
    args = extra if message is None else ["--principles", str(write_set("pair", PAIR)), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert (message or "--principles FILE is required") in result.output


@pytest.mark.slow
def test_si_train_on_the_embedded_model_end_to_end(tmp_path) -> None:
    """`si train` on SmolLM2-135M for one tiny step; the checkpoint reloads in transformers and generates."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from si_toolkit.chat import render_prompt_ids
    from si_toolkit.models import resolve_model

    principles = Path(__file__).resolve().parents[1] / "principles" / "concise-vs-comprehensive.yaml"
    out = tmp_path / "embedded"
    args = ["--principles", str(principles), "--out", str(out), "--max-steps", "1", "--prompts", "builtin:arithmetic",
            "--set", "n_prompts=2", "--set", "prompts_per_step=1", "--set", "num_generations=2",
            "--set", "max_completion_length=8", "--set", "beta=0.01", "--quiet", "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    metrics = report["metrics"]
    assert all(math.isfinite(metrics[k]) for k in ("loss", "loss_grpo", "loss_sami", "sami_mi_bound", "kl", "entropy"))
    checkpoint = Path(report["checkpoint"])
    assert checkpoint == out / "checkpoint-1"

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = torch.tensor([render_prompt_ids(tokenizer, "Be brief.", "What is 2 + 3?")])
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4
    key = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(checkpoint / "model.safetensors"), "pt") as new, \
            safe_open(str(Path(resolve_model("embedded").path) / "model.safetensors"), "pt") as old:
        assert not torch.equal(new.get_tensor(key), old.get_tensor(key))  # the step changed the weights
