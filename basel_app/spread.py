"""Independent tasks (one layer's decomposition each) run on every rank at once while rank 0 alone holds the
model (`lit/sharding.on_host`): rank 0 hands each rank one task a round, the others wait in `serve` until it
says stop, and every result comes back to rank 0. A served task runs on its rank's accelerator (the GPU of
its process under NCCL), so a model's SVDs are split over the GPUs instead of queueing on rank 0's CPU.

    rank 0                                  every other rank
    with serving():                         serve()
        spread(tasks)  ──scatter──▶         run its task on its device
                       ◀──gather──          its result (or its error, which rank 0 raises)
    (leaving `serving` sends stop)          returns

Outside `serving` (one process, DDP, a step nobody serves) `spread` runs every task here, in order, as the
code did before; so does `Prefetched`, one key at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from basel_app.distributed import world_rank, world_size

Task = tuple[Callable[..., Any], tuple]  # (a module-level function, its arguments): picklable
STOP = "stop"
_serving = False  # rank 0 inside `serving`: the other ranks wait in `serve`


def compute_device() -> torch.device:
    """Where a served task runs: this process's GPU under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def serving_device_type(local: torch.device) -> str:
    """The device type a task on a tensor that lives on `local` runs on (part of a cache key)."""
    return compute_device().type if _serving else local.type


def ranks_serving() -> int:
    return world_size() if _serving else 1


def moved(value: Any, device: torch.device) -> Any:
    """`value` with every tensor and module in it (also inside tuples and dataclasses) on `device`."""
    if isinstance(value, (torch.Tensor, nn.Module)):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(moved(v, device) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: moved(getattr(value, f.name), device)
                                             for f in dataclasses.fields(value)})
    return value


def _attempt(task: Task | None, device: torch.device) -> tuple[str, Any]:
    """("ok", the task's result on the CPU), or ("error", what went wrong): a helper's error is rank 0's."""
    if task is None:
        return "ok", None
    fn, args = task
    try:
        return "ok", moved(fn(*moved(args, device)), torch.device("cpu"))
    except Exception as err:  # noqa: BLE001 - sent to rank 0, which raises it
        return "error", f"{type(err).__name__}: {err}"


def spread(tasks: list[Task]) -> list[Any]:
    """Each task's result, in order: one per rank a round while the others serve, else one by one here."""
    if not _serving:
        return [fn(*args) for fn, args in tasks]
    ranks, device, results = world_size(), compute_device(), []
    for start in range(0, len(tasks), ranks):
        chunk = tasks[start : start + ranks]
        mine: list[Any] = [None]
        dist.scatter_object_list(mine, [*chunk, *[None] * (ranks - len(chunk))], src=0)
        gathered: list[Any] = [None] * ranks
        dist.gather_object(_attempt(mine[0], device), gathered, dst=0)
        for rank, (status, value) in enumerate(gathered[: len(chunk)]):
            if status == "error":
                raise RuntimeError(f"a task spread to rank {rank} failed: {value}")
            results.append(value)
    return results


def serve() -> int:
    """Every rank but 0: run the tasks rank 0 hands out until it says stop; returns how many ran here."""
    device, count = compute_device(), 0
    while True:
        mine: list[Any] = [None]
        dist.scatter_object_list(mine, None, src=0)
        if isinstance(mine[0], str) and mine[0] == STOP:
            return count
        dist.gather_object(_attempt(mine[0], device), None, dst=0)
        count += mine[0] is not None


@contextmanager
def serving() -> Iterator[None]:
    """Rank 0: `spread` hands tasks to the other ranks (waiting in `serve`) while inside; leaving tells them
    to stop, also when the block raised, so no rank waits for ever."""
    global _serving
    if world_rank() != 0:
        raise RuntimeError("only rank 0 hands out tasks")
    _serving = True
    try:
        yield
    finally:
        _serving = False
        dist.scatter_object_list([None], [STOP] * world_size(), src=0)


class Prefetched:
    """`task_of(key)`'s result for each of `keys`, computed when first asked for, together with the next keys
    not computed yet, one per serving rank; each result is handed out once, then forgotten (a key asked for
    again is computed again). `needed(key)` says whether a later key will be asked for at all (a cache
    holding its result: no), so no rank computes what nobody takes."""

    def __init__(self, keys: list[str], task_of: Callable[[str], Task],
                 needed: Callable[[str], bool] = lambda key: True) -> None:
        self._keys, self._task_of, self._needed = keys, task_of, needed
        self._ready: dict[str, Any] = {}
        self._handed: set[str] = set()

    def __call__(self, key: str) -> Any:
        if key not in self._ready:  # this key (again, if asked twice) and the next ones nobody has had yet
            later = (k for k in self._keys[self._keys.index(key) + 1 :]
                     if k not in self._ready and k not in self._handed and self._needed(k))
            batch = [key, *islice(later, ranks_serving() - 1)]  # one rank: no later key is looked at
            self._ready.update(zip(batch, spread([self._task_of(k) for k in batch])))
        self._handed.add(key)
        return self._ready.pop(key)
