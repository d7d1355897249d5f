"""A deterministic, resumable batch sampler.

The order of epoch ``e`` is a pure function of ``(seed, e)``: ``torch.randperm(n)`` drawn from a
``torch.Generator`` seeded with ``seed + e``. Nothing is carried from one epoch to the next, so a run
resumed from a checkpoint only needs ``(epoch, batches done)`` to continue exactly where it stopped:
``set_epoch(epoch)`` rebuilds the order and ``skip_next(batches_done)`` drops what was already trained.

Lightning calls ``set_epoch`` each epoch on ``dataloader.sampler`` and ``dataloader.batch_sampler.sampler``
(not on the batch sampler itself), so the per-epoch index order lives in :class:`EpochSeededSampler`,
held as ``ResumableBatchSampler.sampler``; ``ResumableBatchSampler.set_epoch`` forwards to it.
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
        self, num_samples: int, batch_size: int, seed: int, shuffle: bool = True, drop_last: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is not allowed; it must be >= 1")
        self.sampler = EpochSeededSampler(num_samples, seed, shuffle)
        self.batch_size = batch_size
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
        """All batches of ``epoch`` (default: the current one), ignoring any pending skip."""
        order = self.sampler.order(epoch)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the epoch and the skip are read at the first next(), not at iter(). Lightning creates
        # the first epoch's iterator before it calls set_epoch, so reading late is what makes this correct.
        pending, self._skip = self._skip, None
        start = pending[1] if pending is not None and pending[0] == self.epoch else 0
        yield from self.batches()[start:]

    def __len__(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
