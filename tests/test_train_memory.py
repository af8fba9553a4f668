"""What the loss forward keeps for backward: the chunked lm-head, checkpointed layers, the prompt prefix."""

from __future__ import annotations

import pytest
import torch

from si_toolkit.train import memory
from si_toolkit.train.forward import forward_pairs
from si_toolkit.train.memory import head_logp


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_equals_log_softmax_with_gradients(monkeypatch, temperature) -> None:
    """Values, entropy and both gradients equal log_softmax(W·h / T) over chunks that split rows."""
    monkeypatch.setattr(memory, "CHUNK_TOKENS", 5)  # 2 x 7 positions: three chunks, one across rows
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (2, 7), generator=gen)
    upstream = torch.randn(2, 7, generator=gen, dtype=torch.float64)

    logp, entropy = head_logp(hidden, weight, targets, temperature, True)
    (logp * upstream).sum().backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    log_probs = torch.log_softmax((hidden @ weight.T) / temperature, -1)
    expected = log_probs.gather(-1, targets[..., None])[..., 0]
    (expected * upstream).sum().backward()

    torch.testing.assert_close(logp.double(), expected.detach(), atol=1e-5, rtol=0)  # float32 logits inside
    torch.testing.assert_close(entropy.double(), -(log_probs.exp() * log_probs).sum(-1).detach(), atol=1e-5, rtol=0)
    assert not entropy.requires_grad
    torch.testing.assert_close(got[0], hidden.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], weight.grad, atol=1e-5, rtol=1e-5)


def test_a_head_that_does_more_falls_back_to_the_models_logits(tiny_model_dir) -> None:
    """A model whose logits are not W·h (here halved by a hook, as soft-capping would change them)
    is found out on its first call and scored through its own head from then on."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: out * 0.5)
    pairs = [((5, 9, 12, 40), (3, 4, 5)), ((6, 9, 30), (8, 9)), ((5, 9, 12, 40), (11, 12, 13, 14))]
    shared = forward_pairs(model, pairs, pad_id=0, temperature=1.0)
    assert model._si_head_is_plain is False
    single = forward_pairs(model, pairs, pad_id=0, temperature=1.0, share_prompts=False)
    torch.testing.assert_close(shared.logp, single.logp, atol=1e-5, rtol=0)
    with torch.no_grad():  # the halved logits, from a plain forward
        logits = model(torch.tensor([[5, 9, 12, 40, 3, 4, 5]])).logits[0, 3:6]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor([[3], [4], [5]]))[:, 0]
    torch.testing.assert_close(shared.logp[0, :3], expected, atol=1e-5, rtol=0)


def test_gradient_checkpointing_keeps_a_fraction_of_the_activations(tiny_model_dir) -> None:
    """With recompute the completion pass keeps each decoder layer's input only: the tensors saved
    for backward are a fraction of those of the plain pass, and the prompt cache is not copied per pair."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pairs = [((5, 9, 12, 40, 41, 7), tuple(range(3, 40)))] * 3 + [((6, 9, 30), tuple(range(10, 50)))] * 3

    def saved_bytes(recompute: bool) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward_pairs(model, pairs, pad_id=0, temperature=1.0, recompute=recompute)
        out.logp.sum().backward()
        return sum(seen.values())

    plain, recomputed = saved_bytes(False), saved_bytes(True)
    print(f"saved for backward: {recomputed} bytes with recompute, {plain} without")
    assert recomputed < 0.6 * plain, (recomputed, plain)


def test_chunked_head_under_autocast_matches_autograd(monkeypatch) -> None:
    """In a bf16 autocast block the chunked head gives what autograd gives for log_softmax of the
    bf16 logits: its backward recomputes them under the forward's autocast."""
    monkeypatch.setattr(memory, "CHUNK_TOKENS", 64)  # 3 x 70 positions: four chunks
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 70, 32, generator=gen, requires_grad=True)
    weight = torch.randn(500, 32, generator=gen, requires_grad=True)
    targets = torch.randint(0, 500, (3, 70), generator=gen)
    upstream = torch.randn(3, 70, generator=gen)
    results = []
    for chunked in (True, False):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if chunked:
                logp = head_logp(hidden, weight, targets, 0.7, False)[0]
            else:
                logits = (hidden @ weight.T).float() / 0.7
        if not chunked:
            logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
        (logp * upstream).sum().backward()
        results.append((logp.detach(), hidden.grad.clone(), weight.grad.clone()))
    (logp, grad_h, grad_w), (expected, want_h, want_w) = results
    torch.testing.assert_close(logp, expected, atol=1e-4, rtol=0)
    assert grad_h.dtype == grad_w.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: the gradients agree to its rounding (2^-8 relative), not to float32's.
    torch.testing.assert_close(grad_h, want_h, rtol=2 ** -7, atol=2 ** -7 * float(want_h.abs().max()))
    torch.testing.assert_close(grad_w, want_w, rtol=2 ** -7, atol=2 ** -7 * float(want_w.abs().max()))
    fp32 = torch.log_softmax((hidden @ weight.T) / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    assert not torch.allclose(logp, fp32.detach(), atol=1e-4)  # the head did run in bf16
