"""The cross-process helpers: gather embeddings (and modality labels) for in-batch negatives, sums over ranks.

Every rank computes the contrastive loss on the *full* gathered batch (Algorithm 1 gathers both
queries and candidates). Only the local slice keeps its gradient, and that gradient is exactly the
single-process gradient of the full loss with respect to the local embeddings, because the loss is
the same function of all embeddings on every rank. Data-parallel training averages parameter gradients
over ranks, so the trainer multiplies the gathered (contrastive) term by :func:`world_size` to recover
the gradient of one process with the whole batch (see ``puma.train.loop``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather ``tensor`` ``[n_r, ...]`` from every rank into ``[sum_r n_r, ...]`` in rank order.

    The local slice is the input tensor itself (so it keeps its autograd graph); the other ranks' slices
    are constants. Ranks may hold different ``n_r`` (the last, smaller batch). On one process this
    returns ``tensor`` unchanged.
    """
    if not is_distributed():
        return tensor
    ws, me = dist.get_world_size(), dist.get_rank()
    # Sizes first, so uneven batches can be padded to a common length for all_gather.
    n_local = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(n_local) for _ in range(ws)]
    dist.all_gather(sizes, n_local)
    sizes = [int(s.item()) for s in sizes]
    n_max = max(sizes)
    local = tensor.detach().contiguous()
    if local.shape[0] < n_max:
        pad = local.new_zeros((n_max - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, pad])
    parts = [torch.empty_like(local) for _ in range(ws)]
    dist.all_gather(parts, local)
    parts = [p[:n] for p, n in zip(parts, sizes)]
    parts[me] = tensor  # the local slice with its gradient
    return torch.cat(parts)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over every rank, in place (a no-op on one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over every rank, in place (a no-op on one process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the parameters' gradients over every rank in one flat all-reduce (a no-op on one process).

    For a data-parallel step whose per-rank losses already add up to the global loss (each normalised by
    global counts), the summed gradient is the single-process gradient. A gradient missing on a rank (the
    parameter was not used there: e.g. no image in its rows) counts as zero; a parameter unused on every rank
    keeps ``grad is None`` (as on one process, so AdamW skips it the same way).
    """
    if not is_distributed():
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
    dist.all_reduce(used, op=dist.ReduceOp.SUM)
    live = [p for p, u in zip(params, used.tolist()) if u]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in live:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def same_on_all_ranks(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is bitwise equal on every rank (True on one process)."""
    if not is_distributed():
        return True
    low, high = tensor.clone(), tensor.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return torch.equal(low, high)


def launched() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as torchrun / accelerate set them; ``(0, 1, 0)`` when not launched."""
    import os

    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))


def join_group() -> None:
    """Join the launcher's process group (nccl on GPUs, gloo on CPU) when WORLD_SIZE > 1 and not joined yet."""
    if launched()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def barrier() -> None:
    """Wait for every process of the group (no-op on one process)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def leave_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
