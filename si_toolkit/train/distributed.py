"""Data-parallel plumbing of the trainer: process context, collectives, cloud gathering.

The trainer runs as one process (world size 1) or under `torchrun --nproc_per_node N`, which
sets RANK / WORLD_SIZE / LOCAL_RANK. `init_distributed` reads those variables (the CLI passes
`os.environ`; nothing deeper reads the environment) and joins the process group: gloo on CPU,
NCCL on GPU. Gradients are averaged by `torch.nn.parallel.DistributedDataParallel`; every
other cross-process quantity goes through the helpers here, which are no-ops for one process.

No collective is ever run inside autograd: DDP's gradient all-reduce runs during backward,
and a second collective on the same group in the backward graph could interleave differently
on different ranks. Where a term needs the whole batch (the Sinkhorn clouds), the other ranks'
rows are gathered detached and only the local rows carry gradient (see `gather_cloud`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from si_toolkit.errors import SIError

__all__ = ["DistContext", "all_gather_rows", "all_reduce_sum", "barrier", "gather_cloud", "init_distributed", "shutdown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among world_size processes and its local GPU index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(env: Mapping[str, str], *, use_cuda: bool) -> DistContext:
    """Join the torchrun process group described by `env` (os.environ), or return a 1-process context.

    gloo is used on CPU and NCCL when `use_cuda`; each process then drives GPU LOCAL_RANK.
    """
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    try:
        rank, local_rank = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
    except (KeyError, ValueError):
        raise SIError("WORLD_SIZE > 1 but RANK is missing or not a number; "
                      "launch with torchrun --nproc_per_node N") from None
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def _comm_device(x: Tensor) -> torch.device:
    """Where a collective can read `x`: NCCL takes only CUDA tensors, gloo takes CPU ones."""
    if dist.get_backend() == "nccl" and x.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return x.device


def all_reduce_sum(x: Tensor, ctx: DistContext) -> Tensor:
    """Sum of `x` over processes (a new tensor on x's device; `x` itself is unchanged)."""
    out = x.detach().clone()
    if ctx.enabled:
        out = out.to(_comm_device(out))
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(x.device)


def all_gather_rows(x: Tensor, ctx: DistContext) -> Tensor:
    """Concatenate the (n_r, ...) rows of every rank in rank order; rows may differ in count. Detached."""
    x = x.detach().contiguous()
    if not ctx.enabled:
        return x
    return _gather_rows_and_counts(x, ctx)[0]


def _gather_rows_and_counts(x: Tensor, ctx: DistContext) -> tuple[Tensor, list[int]]:
    """(every rank's rows in rank order, each rank's row count); two collectives."""
    home, device = x.device, _comm_device(x)
    x = x.to(device)
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(ctx.world_size)]
    dist.all_gather(counts, torch.tensor([x.shape[0]], dtype=torch.long, device=device))
    sizes = [int(c.item()) for c in counts]
    width = max(sizes)
    padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).to(home), sizes


def gather_cloud(local: Tensor, ctx: DistContext) -> Tensor:
    """All ranks' rows (rank order), where this rank's rows keep their autograd graph.

    Every rank then computes the same value f(cloud), but its backward reaches only its own
    rows: ∂f/∂x_local. DDP averages the parameter gradients over ranks, so a term computed this
    way must be multiplied by world_size to give Σ_r ∂f/∂x_r, the gradient of the whole batch.
    """
    if not ctx.enabled:
        return local
    everything, sizes = _gather_rows_and_counts(local.detach().contiguous(), ctx)
    start = sum(sizes[: ctx.rank])
    return torch.cat([everything[:start], local, everything[start + local.shape[0]:]])
