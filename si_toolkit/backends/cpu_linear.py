"""Linear layers with pre-packed weights for CPU sampling (oneDNN's blocked weight layout).

A decode step multiplies a few dozen rows by every weight matrix of the model. PyTorch's
plain `F.linear` re-reads each weight in its stored (row-major) layout; oneDNN's matmul
works on the weight in a blocked layout it chooses, and packing the weights into that layout
once per sampling call (what vLLM's CPU build does at load time) made those products
0.63–0.80× as long for the embedded model's shapes at 64 rows, and its 49k-row lm-head
0.68× (bf16, 2-core CPU; benchmarks/README.md). Packing the whole embedded model takes about
75 ms; the packed copies live only inside `packed_linears`, and while they do the linear weights
are held twice (0.27 GB more for the embedded model in bf16, 4 GB more for a 1B-parameter
model in float32). The results equal `F.linear`'s (the same oneDNN kernels, tested).

Only plain `torch.nn.Linear` modules are packed, in bf16 or fp32, without gradients and outside
autocast (under autocast the layer must compute in autocast's dtype, as the trainer's loss
forward does). Anything else, or a PyTorch build without the oneDNN ops, runs as before.

Sibling layers that read the same input (an attention's q/k/v projections, an MLP's gate and
up projections) are packed as one stacked matrix, as vLLM merges them: the first of them to see
an input computes the stacked product, and the others return their slices of it. At 64 rows
one stacked q/k/v product took 0.7x the time of the three apart, and gate/up 0.9x; packed
together they take no more memory than packed apart. `stacked_linear` hands a caller that wants
the whole stacked product (the direct decode step) exactly that tensor.

`onednn_linears` is for the trainer's float32 passes, with gradients or without: PyTorch sends a
float32 `F.linear` and its backward to the BLAS library it was built with (MKL for the
PyPI wheels), while bf16 goes to oneDNN. On the AMD CPU this project is developed on, MKL's
float32 products ran at about 200 GFLOP/s against oneDNN's 440 (2-core EPYC, 2048³), so forward
and backward of a float32 linear layer run through oneDNN there (`_OneDNNLinear`). The values
are the same products summed in another order: float32 rounding, 1e-6 relative.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["linear", "matmul", "onednn_linears", "packed_linears", "stacked_linear"]

_PACKABLE = (torch.bfloat16, torch.float32)
ROWS_HINT = 64  # the batch oneDNN picks the blocked layout for: a sampling call's rows
# Children of one module that multiply the same input, packed as one stacked matrix.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


_ONEDNN = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
           and hasattr(torch.ops.mkldnn, "_linear_pointwise"))  # this PyTorch build has the oneDNN ops


def _packing_available(device: str) -> bool:
    return torch.device(device).type == "cpu" and _ONEDNN


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN (weight dense or packed; operands may be strided views)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _linear(x, weight, bias)

    return forward


class _StackedProduct:
    """Linear layers that read one input, packed as one matrix of their stacked weights.

    The product of an input is kept until every sibling has taken its slice, so the siblings
    called on the same tensor (unchanged since: same object, same version counter) return their
    slices of it instead of multiplying again; then it is dropped, so a prompt pass does not hold
    every layer's product at once. The slices are views of the stacked product, as vLLM's merged
    layers return them.
    """

    def __init__(self, modules: list[torch.nn.Linear]) -> None:
        weight = torch.cat([m.weight.detach() for m in modules])
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT)
        biases = [m.bias for m in modules]
        self.bias = torch.cat([b.detach() for b in biases]) if biases[0] is not None else None
        self.modules = modules
        self.bounds = list(itertools.pairwise(itertools.accumulate([m.out_features for m in modules], initial=0)))
        self._kept: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (input, its version, product)
        self._waiting: set[int] = set()  # the siblings that have not taken their slice of it

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """The stacked product of x (computed, not kept)."""
        return _linear(x, self.weight, self.bias)

    def member(self, index: int):
        start, end = self.bounds[index]

        def forward(x: torch.Tensor) -> torch.Tensor:
            kept = self._kept
            if kept is None or kept[0] is not x or kept[1] != _version(x) or index not in self._waiting:
                kept = (x, _version(x), self.product(x))
                self._kept, self._waiting = kept, set(range(len(self.modules)))
            self._waiting.discard(index)
            if not self._waiting:
                self._kept = None
            return kept[2][..., start:end]

        forward.stacked = self  # type: ignore[attr-defined]  # what `stacked_linear` looks for
        return forward


def _version(x: torch.Tensor) -> int:
    """x's in-place version counter (-1 for an inference tensor, which has none and cannot be
    changed in place outside inference mode)."""
    return -1 if x.is_inference() else x._version


def _packable_as_one(modules: list[Any]) -> bool:
    """Whether `modules` can be packed as one matrix: plain linear layers of one packable dtype and
    input width, with biases on all or none (a single layer: whether it can be packed at all)."""
    if not all(type(m) is torch.nn.Linear for m in modules):
        return False
    dtype, width, has_bias = modules[0].weight.dtype, modules[0].in_features, modules[0].bias is not None
    return dtype in _PACKABLE and all(
        m.weight.dtype == dtype and m.in_features == width and (m.bias is not None) == has_bias
        and (m.bias is None or m.bias.dtype == dtype) for m in modules)


def stacked_linear(modules: tuple[torch.nn.Module, ...], x: torch.Tensor) -> torch.Tensor:
    """The outputs of `modules` on x side by side along the last dimension: the stacked product
    itself where they were packed as one (in this order), else their outputs concatenated."""
    stacked = getattr(modules[0].__dict__.get("forward"), "stacked", None)
    if stacked is not None and stacked.modules == list(modules):
        return stacked.product(x)
    return torch.cat([m(x) for m in modules], -1)


def _patch(modules: list[torch.nn.Module], forwards: list[Any]) -> list[tuple[torch.nn.Module, Any]]:
    """Give each module its own forward; returns what to put back (a forward set earlier, or None)."""
    saved = []
    for module, forward in zip(modules, forwards):
        saved.append((module, module.__dict__.get("forward")))
        module.forward = forward
    return saved


def _restore(saved: list[tuple[torch.nn.Module, Any]]) -> None:
    for module, previous in reversed(saved):
        if previous is None:
            del module.forward  # the class's forward again
        else:
            module.forward = previous


@contextlib.contextmanager
def packed_linears(model: Any, device: str) -> Iterator[None]:
    """Inside the block, the model's linear layers multiply by pre-packed copies of their weights
    (CPU, no gradients, no autocast); elsewhere a no-op. The weights are packed on entry, so
    weights changed since the last call (a training step) are always the ones used."""
    if (not _packing_available(device) or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu") or not isinstance(model, torch.nn.Module)):
        yield
        return
    linears, forwards = [], []
    grouped: set[int] = set()  # the layers packed with their siblings
    for parent in model.modules():
        for names in SIBLINGS:
            siblings = [getattr(parent, name, None) for name in names]
            if _packable_as_one(siblings) and not grouped & {id(m) for m in siblings}:
                stacked = _StackedProduct(siblings)
                linears += siblings
                forwards += [stacked.member(i) for i in range(len(siblings))]
                grouped |= {id(m) for m in siblings}
    for module in model.modules():
        if id(module) in grouped or not _packable_as_one([module]):
            continue
        weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), ROWS_HINT)
        linears.append(module)
        forwards.append(_packed_forward(weight, module.bias.detach() if module.bias is not None else None))
    saved = _patch(linears, forwards)
    try:
        yield
    finally:
        _restore(saved)


class _OneDNNLinear(torch.autograd.Function):
    """F.linear in float32 with forward and backward products by oneDNN."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.with_bias = bias is not None
        return _linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _linear(grad, weight.t(), None)  # grad @ W
        flat_grad = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = _linear(flat_grad.t(), x.reshape(-1, x.shape[-1]).t(), None)  # grad^T @ x
        if ctx.with_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(0)
        return grad_x, grad_weight, grad_bias


def _float32_on_cpu(*tensors: torch.Tensor | None) -> bool:
    """Whether oneDNN takes these operands: plain float32 CPU tensors, outside autocast. Decided
    per call: under autocast (bf16, which goes to oneDNN anyway) or with a sharded FSDP parameter
    (a DTensor subclass) PyTorch's own path runs."""
    present = [t for t in tensors if t is not None]
    return (_ONEDNN and not torch.is_autocast_enabled("cpu")
            and all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.dtype == torch.float32
                    and t.device.type == "cpu" for t in present))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, by oneDNN for float32 CPU operands (with gradients)."""
    if _float32_on_cpu(x, weight, bias):
        return _OneDNNLinear.apply(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for 2-D operands without gradients, by oneDNN for float32 CPU operands."""
    return _linear(a, b.t(), None) if _float32_on_cpu(a, b) else a @ b


def _onednn_forward(module: torch.nn.Linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return linear(x, module.weight, module.bias)

    return forward


@contextlib.contextmanager
def onednn_linears(models: list[Any], device: str) -> Iterator[None]:
    """Inside the block, the float32 linear layers of `models` compute forward and backward with
    oneDNN on CPU (see the module docstring); elsewhere a no-op. Other dtypes, autocast and
    sharded parameters keep PyTorch's path, decided at each call."""
    if not _packing_available(device):
        yield
        return
    linears = list({id(m): m for model in models if isinstance(model, torch.nn.Module)
                    for m in model.modules() if type(m) is torch.nn.Linear}.values())
    saved = _patch(linears, [_onednn_forward(m) for m in linears])
    try:
        yield
    finally:
        _restore(saved)
