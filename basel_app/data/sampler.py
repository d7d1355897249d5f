"""A deterministic, resumable batch sampler.

The order of epoch ``e`` is a pure function of ``(seed, e)``: ``torch.randperm(n)`` drawn from a
``torch.Generator`` seeded with ``seed + e``. Nothing is carried from one epoch to the next, so a run
resumed from a checkpoint only needs ``(epoch, batches done)`` to continue exactly where it stopped:
``set_epoch(epoch)`` rebuilds the order and ``skip_next(batches_done)`` drops what was already trained.

Lightning calls ``set_epoch`` each epoch on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``
(not on the batch sampler itself), so the per-epoch index order lives in :class:`EpochSeededSampler`,
held as ``ResumableBatchSampler.sampler``; ``ResumableBatchSampler.set_epoch`` forwards to it.

Under DDP each of the ``world_size`` processes holds a sampler with its own ``rank``. They share the epoch's
order and cut it into global batches of ``batch_size × world_size``; rank ``r`` takes the ``r``-th of
``world_size`` equal parts of each. Equal parts need a length divisible by ``world_size``, so the order is
first padded with its own first indices (as ``torch.utils.data.DistributedSampler`` pads): every rank has the
same number of batches (a rank with one batch fewer would leave the others waiting in an all-reduce forever),
the ranks' batches are disjoint but for those few repeats, and one process with ``batch_size × world_size``
sees the same global batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Indices ``0..n-1``, permuted by a generator seeded with ``seed + epoch`` (or in order if not shuffling)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples={num_samples} is not allowed; it must be >= 0")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> list[int]:
        """The index order of ``epoch`` (default: the current one); the same on every call."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return self.num_samples


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of indices in the epoch's seeded order, able to start mid-epoch once (:meth:`skip_next`).

    ``len()`` is always the full number of batches per epoch (Lightning counts an epoch with it, and after
    a mid-epoch restore it counts the batches already done itself).
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is not allowed; it must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not allowed with world_size={world_size}; it must be in [0, world_size)")
        self.sampler = EpochSeededSampler(num_samples, seed, shuffle)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self._skip: tuple[int, int] | None = None  # (epoch, batches) of a pending skip_next

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip_next(self, n_batches: int) -> None:
        """Make the next ``__iter__`` start at batch ``n_batches`` of the current epoch's order (one-shot).

        The skip belongs to the current epoch: if ``set_epoch`` moves to another epoch before the iteration
        starts (a checkpoint taken at the last batch Lightning runs, e.g. with ``limit_train_batches``),
        the skip is dropped and the new epoch runs whole.
        """
        if not 0 <= n_batches <= len(self):
            raise ValueError(f"skip_next({n_batches}) is not allowed; an epoch has {len(self)} batches")
        self._skip = (self.epoch, n_batches)

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current one), ignoring any pending skip."""
        order = self.sampler.order(epoch)
        if order:  # pad to a multiple of world_size by repeating the order's start
            order = (order * self.world_size)[: self._padded_samples]
        size = self.batch_size * self.world_size
        global_batches = [order[i : i + size] for i in range(0, len(order), size)]
        if self.drop_last and global_batches and len(global_batches[-1]) < size:
            global_batches.pop()
        part = [len(batch) // self.world_size for batch in global_batches]
        return [batch[self.rank * n : (self.rank + 1) * n] for batch, n in zip(global_batches, part)]

    @property
    def _padded_samples(self) -> int:
        return -(-self.sampler.num_samples // self.world_size) * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch and the skip are read at the first next(), not at iter(). Lightning creates
        # the first epoch's iterator before it calls set_epoch, so reading late is what makes this correct.
        pending, self._skip = self._skip, None
        start = pending[1] if pending is not None and pending[0] == self.epoch else 0
        yield from self.batches()[start:]

    def __len__(self) -> int:
        n, size = self._padded_samples, self.batch_size * self.world_size
        return n // size if self.drop_last else -(-n // size)
