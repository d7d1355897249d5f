"""ResumableBatchSampler: the order is a pure function of (seed, epoch); skip_next is one-shot."""

from __future__ import annotations

import pytest
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DataLoader

from basel_app.data.sampler import ResumableBatchSampler


def epoch_batches(sampler: ResumableBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_is_a_function_of_seed_and_epoch():
    a, b = ResumableBatchSampler(10, 3, seed=7), ResumableBatchSampler(10, 3, seed=7)
    # b visits epochs in another order first: history must not matter
    for epoch in (4, 0, 2):
        epoch_batches(b, epoch)
    assert [epoch_batches(a, e) for e in range(3)] == [epoch_batches(b, e) for e in range(3)]
    assert epoch_batches(a, 0) != epoch_batches(a, 1)
    assert epoch_batches(a, 0) != epoch_batches(ResumableBatchSampler(10, 3, seed=8), 0)


def test_each_epoch_covers_every_index_once():
    sampler = ResumableBatchSampler(10, 3, seed=0)
    batches = epoch_batches(sampler, 3)
    assert [len(b) for b in batches] == [3, 3, 3, 1] and len(sampler) == 4
    assert sorted(i for b in batches for i in b) == list(range(10))


def test_drop_last_and_no_shuffle():
    sampler = ResumableBatchSampler(10, 3, seed=0, shuffle=False, drop_last=True)
    assert len(sampler) == 3 and list(sampler) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert len(ResumableBatchSampler(9, 3, seed=0, drop_last=True)) == 3


def test_skip_next_is_one_shot():
    sampler = ResumableBatchSampler(10, 3, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.skip_next(2)
    assert list(sampler) == full[2:]
    assert list(sampler) == full  # the next epoch's iteration starts from the beginning again
    sampler.skip_next(len(sampler))
    assert list(sampler) == []
    with pytest.raises(ValueError, match="an epoch has 4 batches"):
        sampler.skip_next(5)


def test_skip_is_dropped_when_the_epoch_changes_first():
    sampler = ResumableBatchSampler(10, 3, seed=1)
    sampler.set_epoch(2)
    sampler.skip_next(3)
    sampler.set_epoch(3)
    assert list(sampler) == epoch_batches(ResumableBatchSampler(10, 3, seed=1), 3)


def test_epoch_and_skip_are_read_at_first_next():
    # Lightning creates the first iterator before calling set_epoch; the order must follow set_epoch.
    sampler = ResumableBatchSampler(10, 3, seed=1)
    expected = epoch_batches(ResumableBatchSampler(10, 3, seed=1), 5)
    iterator = iter(sampler)
    sampler.set_epoch(5)
    assert list(iterator) == expected


def test_lightning_set_epoch_reaches_the_batch_sampler():
    sampler = ResumableBatchSampler(10, 3, seed=1)
    loader = DataLoader(list(range(10)), batch_sampler=sampler)
    _set_sampler_epoch(loader, 3)  # what the fit loop calls at each epoch start
    assert sampler.epoch == 3
    assert [b.tolist() for b in loader] == epoch_batches(ResumableBatchSampler(10, 3, seed=1), 3)


@pytest.mark.parametrize("num_samples,batch_size,world_size", [(10, 3, 2), (11, 2, 3), (2, 4, 4), (16, 4, 2)])
def test_ranks_get_equal_disjoint_slices_of_the_same_global_batches(num_samples, batch_size, world_size):
    ranks = [ResumableBatchSampler(num_samples, batch_size, seed=5, rank=r, world_size=world_size)
             for r in range(world_size)]
    per_rank = [epoch_batches(s, 2) for s in ranks]
    assert len({len(s) for s in ranks}) == 1 and [len(b) for b in per_rank] == [len(ranks[0])] * world_size
    for step in zip(*per_rank):  # every step: equal-sized parts on every rank
        assert len({len(part) for part in step}) == 1
    seen = [i for batches in per_rank for b in batches for i in b]
    padded = -(-num_samples // world_size) * world_size
    assert sorted(set(seen)) == list(range(num_samples)) and len(seen) == padded  # repeats: the padding only
    # One process with the global batch sees the same global batches, rank parts concatenated.
    single = epoch_batches(ResumableBatchSampler(num_samples, batch_size * world_size, seed=5), 2)
    joined = [sum(step, []) for step in zip(*per_rank)]
    assert [set(b) for b in joined][: len(single) - 1] == [set(b) for b in single][:-1]
    assert set(joined[-1]) >= set(single[-1])  # plus the padding


def test_a_rank_resumes_mid_epoch_in_its_own_slice():
    full = ResumableBatchSampler(20, 2, seed=1, rank=1, world_size=2)
    resumed = ResumableBatchSampler(20, 2, seed=1, rank=1, world_size=2)
    resumed.set_epoch(3)
    resumed.skip_next(2)
    assert list(resumed) == epoch_batches(full, 3)[2:]
    with pytest.raises(ValueError, match="rank=2 is not allowed"):
        ResumableBatchSampler(20, 2, seed=1, rank=2, world_size=2)
