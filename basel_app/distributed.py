"""One run, several processes (DDP): what every rank must agree on, and who writes.

Every helper is the identity on a single process (no process group), so the single-device path pays
nothing and needs no branches:

    world_rank() / world_size()     this process's global rank and how many there are
    all_reduce_sum(tensors)         Σ over ranks (float64 on the wire: statistics are sums of squares)
    share_of_global_mean(count)     the factor that turns a rank's mean into its part of the global mean
    broadcast_from_zero(tensors)    rank 0's values everywhere: a decision is made once
    require_same_everywhere(t, what)  a checksum gathered from every rank; a mismatch is an error naming `what`
    on_rank_zero(fn)                only rank 0 runs `fn` (a write, an evaluation); the others wait for it and
                                    get its result, or raise if it failed, so no rank waits forever
    full_tensor(t)                  a parameter sharded by FSDP gathered whole (every rank must call it)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

T = TypeVar("T")


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every rank when it is a sharded DTensor (FSDP2), else itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _wire_device() -> torch.device:
    """NCCL moves only CUDA tensors; gloo only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor summed over ranks, in float64, on the tensor's own device and dtype (one flat message)."""
    if not is_distributed() or not tensors:
        return list(tensors)
    flat = torch.cat([t.detach().reshape(-1).to(_wire_device(), torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


def share_of_global_mean(count: torch.Tensor) -> float:
    """world_size × count / Σ_ranks count: a rank's mean loss over its `count` tokens, times this, is its share
    of the mean over every rank's tokens once DDP averages the gradients. Exactly 1.0 on one process.

    Without it DDP weights each rank's tokens by 1/(its own count), so two ranks holding 30 and 300 answer
    tokens of one global batch train a different model than one process holding all 330."""
    if not is_distributed():
        return 1.0
    (total,) = all_reduce_sum([count.detach().reshape(1).double()])
    return world_size() * float(count) / max(float(total), 1.0)


def broadcast_from_zero(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Rank 0's tensors on every rank (same shapes and dtypes everywhere), each on its own device."""
    if not is_distributed():
        return list(tensors)
    out = []
    for t in tensors:  # float64 / int64 on the wire: every backend moves those (gloo has no bool)
        wire = t.detach().to(_wire_device(), torch.float64 if t.is_floating_point() else torch.int64).contiguous()
        dist.broadcast(wire, src=0)
        out.append(wire.to(t.device, t.dtype))
    return out


def checksum(tensors: Sequence[torch.Tensor]) -> float:
    """A position-weighted sum: equal on two ranks only if (nearly certainly) the tensors are equal."""
    total = 0.0
    for i, t in enumerate(tensors):
        flat = t.detach().reshape(-1).double().cpu()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64).sqrt() + i
        total += float((flat * weights).sum())
    return total


def require_same_everywhere(tensors: Sequence[torch.Tensor], what: str) -> float:
    """The checksum of `tensors`, after checking that every rank has the same one; else a RuntimeError."""
    mine = checksum(tensors)
    if not is_distributed():
        return mine
    everyone: list[float | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if any(other != mine for other in everyone):
        raise RuntimeError(f"{what}: the ranks disagree (checksums by rank: {everyone}); every rank must hold "
                           "the same masks, or the processes train different models")
    return mine


def on_rank_zero(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only; every rank returns its result (picklable), or raises if it raised on rank 0."""
    if not is_distributed():
        return fn()
    message: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            message = [("ok", fn())]
        except BaseException as err:
            dist.broadcast_object_list([("error", f"{type(err).__name__}: {err}")], src=0)
            raise
    dist.broadcast_object_list(message, src=0)
    status, value = message[0]
    if status == "error":
        raise RuntimeError(f"rank 0 failed, so rank {dist.get_rank()} stops too: {value}")
    return value
