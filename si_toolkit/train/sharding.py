"""Fully sharded data parallel (FSDP2) for `parallelism: fsdp` under torchrun.

With DDP every process holds the whole policy, its gradients and AdamW's two moments: about
16 bytes per parameter in float32. `shard_policy` applies `torch.distributed.fsdp.fully_shard`
to every decoder layer and then to the root, so each of the N processes keeps 1/N of the
parameters, gradients and optimizer state; a layer's parameters are all-gathered for its
forward and backward and its gradients reduce-scattered (the FSDP2 recipe). With `bf16` (on
by default with CUDA) the layers compute in bfloat16 and reduce gradients in float32
(`MixedPrecisionPolicy`); the sharded master weights and AdamW stay float32. On CPU (gloo)
the parameters are gathered in the model's dtype and `bf16` acts through autocast alone.

What stays whole on every process:
- the generation copy (`Session.backend.model`): sampling runs the decode loop many times
  per step, a different number on each process, which collective-bound sharded forwards
  cannot do. After every optimizer step `sync_generation_copy` all-gathers the updated
  weights into it, as TRL's colocated vLLM engine receives them; the no-grad passes (π_old,
  the SAMI monitor, evaluation) and the HF checkpoint use it too;
- the frozen reference, when one is loaded (it has no gradients or optimizer state).

Checkpoints are ordinary HF folders (the generation copy's `save_pretrained`); the optimizer
state is gathered into one full, name-keyed state dict on rank 0 (`optimizer_state`) and, on
resume, every process takes its own shards back from it (`load_optimizer_state`).
"""

from __future__ import annotations

from typing import Any

import torch

from si_toolkit.errors import SIError
from si_toolkit.train.distributed import DistContext

__all__ = ["load_optimizer_state", "optimizer_state", "shard_policy", "sync_generation_copy"]


def _decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks of a transformers causal LM (`get_decoder().layers`)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise SIError(f"parallelism=fsdp: cannot find the decoder layers of {type(model).__name__} "
                      "(expected model.get_decoder().layers); use parallelism=ddp")
    return list(layers)


def shard_policy(policy: Any, ctx: DistContext, device: str, *, bf16: bool) -> None:
    """fully_shard each decoder layer, then the root module, over all processes (in place).

    With bf16 on CUDA the gathered layers are cast to bfloat16 and gradients reduced in float32
    (`MixedPrecisionPolicy`); on CPU the parameters are gathered in their own dtype and the bf16
    autocast of the forward passes does the casting (the combination the CPU tests cover).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cuda = torch.device(device).type == "cuda"
    mesh = init_device_mesh("cuda" if cuda else "cpu", (ctx.world_size,))
    bf16_params = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mixed = bf16_params if cuda and bf16 else MixedPrecisionPolicy()
    for layer in _decoder_layers(policy):
        fully_shard(layer, mesh=mesh, mp_policy=mixed)
    fully_shard(policy, mesh=mesh, mp_policy=mixed)


@torch.no_grad()
def sync_generation_copy(policy: Any, copy: Any) -> None:
    """Load the sharded policy's current weights, all-gathered, into the whole copy (every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))
    copy.load_state_dict(full)


def optimizer_state(policy: Any, optimizer: torch.optim.Optimizer, fsdp: bool) -> dict[str, Any]:
    """The optimizer state to checkpoint: AdamW's own state dict, or under FSDP the full state
    gathered to rank 0 (parameter-name keys; other ranks get an empty dict). Call on every rank."""
    if not fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(policy, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(policy: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any], fsdp: bool) -> None:
    """Inverse of `optimizer_state`: under FSDP every rank takes its shards from the full state."""
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(policy, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
