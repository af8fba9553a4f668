"""CPU linear layers by oneDNN: packed weights for sampling, forward and backward for training."""

from __future__ import annotations

import pytest
import torch

from si_toolkit.backends.cpu_linear import _OneDNNLinear, onednn_linears, packed_linears


def _patched(model: torch.nn.Module) -> list[bool]:
    return ["forward" in m.__dict__ for m in model.modules() if type(m) is torch.nn.Linear]


@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_has_the_values_and_gradients_of_linear(bias) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(3, 7, 24, requires_grad=True)
    grad = torch.randn(3, 40, 7).transpose(1, 2)  # a strided incoming gradient, as attention passes back
    want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    want_grads = torch.autograd.grad(want, [x, *layer.parameters()], grad)
    got = _OneDNNLinear.apply(x, layer.weight, layer.bias)
    got_grads = torch.autograd.grad(got, [x, *layer.parameters()], grad)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_onednn_linears_cover_float32_outside_autocast_and_restore() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    want = model(x)
    calls = []
    apply = _OneDNNLinear.apply
    with onednn_linears([model, model], "cpu"):  # a model named twice is patched once
        assert all(_patched(model))
        _OneDNNLinear.apply = lambda *a: calls.append(1) or apply(*a)
        try:
            got = model(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast: PyTorch's own (bf16) path
                assert model(x).dtype == torch.bfloat16
        finally:
            _OneDNNLinear.apply = apply
        assert len(calls) == 2  # both layers once, in float32 only
        with torch.no_grad(), packed_linears(model, "cpu"):  # nested: packed inside, oneDNN again after
            torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)
        assert all(_patched(model))
    assert not any(_patched(model))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_onednn_linears_do_nothing_off_cpu() -> None:
    model = torch.nn.Linear(4, 4)
    with onednn_linears([model], "cuda"):
        assert not any(_patched(model))


def test_linear_and_matmul_helpers_follow_the_operands() -> None:
    """float32 CPU operands go to oneDNN (equal values); under autocast PyTorch's bf16 path runs."""
    from si_toolkit.backends.cpu_linear import linear, matmul

    torch.manual_seed(0)
    x, w = torch.randn(6, 32, requires_grad=True), torch.randn(48, 32, requires_grad=True)
    got = linear(x, w)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)
    got.sum().backward()  # gradients flow through the oneDNN route
    torch.testing.assert_close(w.grad, x.detach().sum(0).expand(48, 32), atol=1e-5, rtol=1e-5)
    a, b = torch.randn(5, 48), torch.randn(48, 32)
    torch.testing.assert_close(matmul(a, b), a @ b, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert linear(x, w).dtype == torch.bfloat16 and matmul(a, b).dtype == torch.bfloat16


class _Attention(torch.nn.Module):
    """Sibling projections of one input, as in a transformer's attention block."""

    def __init__(self, bias: bool, v_bias: bool | None = None) -> None:
        super().__init__()
        self.q_proj, self.k_proj = torch.nn.Linear(16, 24, bias=bias), torch.nn.Linear(16, 8, bias=bias)
        self.v_proj = torch.nn.Linear(16, 8, bias=bias if v_bias is None else v_bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_siblings_packed_as_one_give_each_layers_product(dtype, bias) -> None:
    """q/k/v packed as one stacked matrix: each layer returns its own product (its slice of the
    stacked one, computed once per input), and stacked_linear returns the stacked product."""
    from si_toolkit.backends import cpu_linear
    from si_toolkit.backends.cpu_linear import stacked_linear

    torch.manual_seed(0)
    block = _Attention(bias).to(dtype)
    layers = (block.q_proj, block.k_proj, block.v_proj)
    x, y = torch.randn(5, 3, 16, dtype=dtype), torch.randn(5, 3, 16, dtype=dtype)
    want_x = [torch.nn.functional.linear(x, m.weight, m.bias) for m in layers]
    want_y = [torch.nn.functional.linear(y, m.weight, m.bias) for m in layers]
    products = []
    original = cpu_linear._linear

    def counted(*args):
        products.append(1)
        return original(*args)

    with torch.no_grad(), packed_linears(block, "cpu"):
        cpu_linear._linear = counted
        try:
            got_x = [m(x) for m in layers]
            assert len(products) == 1  # one stacked product for the three layers
            got_y = [m(y) for m in layers]  # another input: multiplied again
            assert len(products) == 2
            assert block.q_proj.forward.stacked._kept is None  # every slice taken: the product dropped
            stacked = stacked_linear(layers, y)
            assert len(products) == 3
            block.q_proj(x)
            x.mul_(2)  # changed in place since its product: multiplied again
            twice = block.k_proj(x)
            assert len(products) == 5
            block.k_proj(x)  # a slice taken twice: multiplied again
            assert len(products) == 6
        finally:
            cpu_linear._linear = original
    for got, want in zip(got_x + got_y, want_x + want_y):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert torch.equal(stacked, torch.cat(got_y, -1))
    want_twice = torch.nn.functional.linear(x, block.k_proj.weight, block.k_proj.bias)
    torch.testing.assert_close(twice, want_twice, atol=1e-5, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)
    assert stacked_linear(layers, y).shape == (5, 3, 40)  # outside packing: the outputs concatenated
    assert not any(_patched(block))


def test_siblings_are_packed_apart_when_they_cannot_stack() -> None:
    """Layers with biases on some and not others (or of other types) are packed one by one."""
    from si_toolkit.backends.cpu_linear import stacked_linear

    block = _Attention(bias=True, v_bias=False)
    x = torch.randn(2, 16)
    with torch.no_grad(), packed_linears(block, "cpu"):
        assert all(_patched(block))
        assert not any(hasattr(m.__dict__["forward"], "stacked") for m in block.modules() if type(m) is torch.nn.Linear)
        got = stacked_linear((block.q_proj, block.k_proj, block.v_proj), x)
    want = torch.cat([m(x) for m in (block.q_proj, block.k_proj, block.v_proj)], -1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
