"""The rank-agreement helpers on 2 real gloo processes: sums, rank 0's decision, a disagreement caught, each
rank's share of a global mean."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from basel_app.distributed import (
    all_reduce_sum,
    broadcast_from_zero,
    on_rank_zero,
    require_same_everywhere,
    share_of_global_mean,
)


def _worker(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        (total,) = all_reduce_sum([torch.tensor([1.0, 2.0]) * (rank + 1)])
        (mask,) = broadcast_from_zero([torch.tensor([True, rank == 0, False])])
        same = require_same_everywhere([mask], "event 1")
        try:
            require_same_everywhere([torch.tensor([rank == 0])], "pruning event 7: the keep masks")
            caught = None
        except RuntimeError as err:
            caught = str(err)
        result = on_rank_zero(lambda: rank * 10 + 5)
        share = share_of_global_mean(torch.tensor(1 + 2 * rank))  # 1 and 3 tokens of 4
        results[rank] = (total.tolist(), mask.tolist(), same, caught, result, share)
    finally:
        dist.destroy_process_group()


def test_ranks_sum_take_rank_zeros_masks_and_name_the_event_they_disagree_on(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    for rank in (0, 1):
        total, mask, same, caught, result, share = results[rank]
        assert total == [3.0, 6.0] and mask == [True, True, False] and result == 5
        assert same == results[0][2]
        assert caught is not None and "pruning event 7: the keep masks" in caught
        # DDP averages the 2 ranks' gradients: 2 × (1/4) and 2 × (3/4) make the mean over all 4 tokens.
        assert share == [0.5, 1.5][rank]
    assert share_of_global_mean(torch.tensor(5)) == 1.0  # one process: its mean is the global one
