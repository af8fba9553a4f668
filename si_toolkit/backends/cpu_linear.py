"""Linear layers with pre-packed weights for CPU sampling (oneDNN's blocked weight layout).

A decode step multiplies a few dozen rows by every weight matrix of the model. PyTorch's
plain `F.linear` re-reads each weight in its stored (row-major) layout; oneDNN's matmul
works on the weight in a blocked layout it chooses, and packing the weights into that layout
once per sampling call (what vLLM's CPU build does at load time) made those products
0.63–0.80× as long for the embedded model's shapes at 64 rows, and its 49k-row lm-head
0.68× (bf16, 2-core CPU; benchmarks/README.md). Packing the whole embedded model takes about
75 ms; the packed copies live only inside `packed_linears`. The results equal `F.linear`'s
(the same oneDNN kernels, tested).

Only plain `torch.nn.Linear` modules are packed, in bf16 or fp32, without gradients and outside
autocast (under autocast the layer must compute in autocast's dtype, as the trainer's loss
forward does). Anything else, or a PyTorch build without the oneDNN ops, runs as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["packed_linears"]

_PACKABLE = (torch.bfloat16, torch.float32)
ROWS_HINT = 64  # the batch oneDNN picks the blocked layout for: a sampling call's rows


def _packing_available(device: str) -> bool:
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _packed_forward(weight: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    return forward


@contextlib.contextmanager
def packed_linears(model: Any, device: str) -> Iterator[None]:
    """Inside the block, the model's linear layers multiply by pre-packed copies of their weights
    (CPU, no gradients, no autocast); elsewhere a no-op. The weights are packed on entry, so
    weights changed since the last call (a training step) are always the ones used."""
    if (not _packing_available(device) or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu") or not isinstance(model, torch.nn.Module)):
        yield
        return
    patched = []
    try:
        for module in model.modules():
            if type(module) is not torch.nn.Linear or module.weight.dtype not in _PACKABLE:
                continue
            if module.bias is not None and module.bias.dtype != module.weight.dtype:
                continue
            weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), ROWS_HINT)
            bias = module.bias.detach() if module.bias is not None else None
            module.forward = _packed_forward(weight, bias)
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward  # the class's forward again
