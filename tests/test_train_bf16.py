"""Mixed precision (`bf16`): forward passes under bfloat16 autocast, float32 weights and updates.

Runs under bf16 (resume, learning) are in test_trainer.py; the chunked head under autocast in
test_train_memory.py.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import pytest
import torch

from si_toolkit.principles import load_principle_set
from si_toolkit.prompts import load_prompts
from si_toolkit.train.config import TrainConfig, load_train_config
from si_toolkit.train.distributed import DistContext
from si_toolkit.train.forward import forward_pairs
from si_toolkit.train.losses import sinkhorn_penalty
from si_toolkit.train.metrics import StatSums
from si_toolkit.train.rollout import Group, Rollout
from si_toolkit.train.session import uses_bf16
from si_toolkit.train.terms import MicroBatch, Models, micro_batch_loss

PAIR = "mode: alternatives\nprinciples:\n  - id: pirate\n    text: Talk like a pirate.\n  - id: butler\n    text: Talk like a butler.\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")

autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16)


def test_bf16_is_on_with_cuda_unless_set() -> None:
    assert not uses_bf16(TrainConfig(), "cpu") and uses_bf16(TrainConfig(), "cuda:0")  # TRL's default is on
    assert uses_bf16(TrainConfig(bf16=True), "cpu") and not uses_bf16(TrainConfig(bf16=False), "cuda")
    assert load_train_config(None, {"bf16": "true"}).bf16 is True  # as --set bf16=true passes it


def test_sinkhorn_ignores_a_callers_autocast() -> None:
    """The solver runs in float32 inside a bf16 autocast block: a bf16 cost matrix would not converge."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 64, generator=gen), torch.randn(20, 64, generator=gen) + 0.3
    plain = sinkhorn_penalty(x, y)
    with autocast():
        inside = sinkhorn_penalty(x, y)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=1e-6, atol=0)


def _micro_batch(tokenizer, variants) -> MicroBatch:
    """One prompt, G = 4 completions (2 per variant) of 12 tokens whose first 6 are the CoT."""
    from si_toolkit.chat import render_prompt_ids

    prompt = load_prompts("builtin:arithmetic", n=1).prompts[0]
    rendered = tuple(tuple(render_prompt_ids(tokenizer, v.text, prompt.text)) for v in variants)
    texts = ["the total is four apples in all so", "we add three and one to get four now",
             "adding the apples gives us four today", "three plus one makes four apples here"]
    rollouts = []
    for n, text in enumerate(texts):
        ids = tuple(tokenizer(text, add_special_tokens=False).input_ids[:12])
        rollouts.append(Rollout(variant=n % 2, replicate=n // 2, prompt_ids=rendered[n % 2], token_ids=ids, text=text,
                                cot_end=6, format_ok=False, finish_reason="length"))
    group = Group(position=0, prompt=prompt, variant_prompt_ids=rendered, rollouts=tuple(rollouts))
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return MicroBatch(groups=[group], advantages=advantages, weights={"grpo": 1.0, "sami": 1.0, "ot": 1.0})


def _loss_and_grads(model, mb: MicroBatch, cfg: TrainConfig, pad: int, precision) -> tuple[dict, dict]:
    with torch.no_grad(), precision():  # the reference pass runs under the policy's precision (trainer.py)
        mb.ref = forward_pairs(model, mb.diagonal(), pad_id=pad, temperature=1.0, layers=[-1])
    model.zero_grad(set_to_none=True)
    stats = StatSums()
    loss = micro_batch_loss(cfg, Models(model=model, policy=model, pad_id=pad, ctx=DistContext(), precision=precision),
                            mb, 2, stats)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return stats.reduce(DistContext()), grads


def test_bf16_loss_is_float32s_up_to_bf16_rounding(tiny_backend, write_set) -> None:
    """Same batch, all three terms: under autocast the KL and S_ε still start at 0 (the reference
    shares the precision), the losses move by bf16 rounding only, and the update keeps its direction."""
    variants = load_principle_set(write_set("pair", PAIR)).variants
    tok, model, pad = tiny_backend.tokenizer, tiny_backend.model, tiny_backend.tokenizer.pad_token_id
    cfg = TrainConfig(model="unused", preset="enigma", beta=0.05, num_generations=4, ot_layers=[-1],
                      monitor_off_terms=False, gradient_checkpointing=True)
    full, full_grads = _loss_and_grads(model, _micro_batch(tok, variants), cfg, pad, nullcontext)
    mixed, mixed_grads = _loss_and_grads(model, _micro_batch(tok, variants), cfg, pad, autocast)

    assert mixed["kl"] == pytest.approx(0.0, abs=1e-6) and mixed["sinkhorn"] == pytest.approx(0.0, abs=1e-5)
    assert mixed["loss_sami"] != full["loss_sami"] and mixed["entropy"] != full["entropy"]  # bf16 did run
    for key in ("loss_grpo", "loss_sami", "entropy"):
        assert mixed[key] == pytest.approx(full[key], rel=2e-2, abs=2e-3), key
    flat = lambda grads: torch.cat([g.flatten() for _, g in sorted(grads.items())])  # noqa: E731
    cosine = torch.nn.functional.cosine_similarity(flat(mixed_grads), flat(full_grads), dim=0)
    assert float(cosine) > 0.99
    assert all(g.dtype == torch.float32 for g in mixed_grads.values())  # float32 master gradients


def test_a_reference_stored_for_autocast_computes_the_same_bits(tiny_backend) -> None:
    """Its Linear weights in bf16 (what autocast casts them to anyway), the embeddings in float32:
    under autocast, hidden states and log-probs equal the float32 model's exactly."""
    import copy

    from si_toolkit.train.memory import store_for_autocast

    model = tiny_backend.model
    stored = copy.deepcopy(model)
    store_for_autocast(stored, torch.bfloat16)
    linear = [m for m in stored.modules() if type(m) is torch.nn.Linear]
    embedding = stored.get_input_embeddings().weight
    assert embedding.dtype == torch.float32
    assert all(m.weight.dtype == torch.bfloat16 for m in linear if m.weight is not embedding)
    assert any(m.weight.dtype == torch.bfloat16 for m in linear)
    pairs = [((5, 6, 7, 8), (9, 10, 11)), ((5, 6, 12), (13, 14, 15, 16))]
    with torch.no_grad(), autocast():
        want = forward_pairs(model, pairs, pad_id=0, temperature=1.0, layers=[1, -1])
        got = forward_pairs(stored, pairs, pad_id=0, temperature=1.0, layers=[1, -1])
    assert torch.equal(got.logp, want.logp)
    assert all(torch.equal(got.hidden[layer], want.hidden[layer]) for layer in (1, -1))
