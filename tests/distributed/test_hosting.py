"""Rank 0 hosts the model between FSDP stages, on 2 real gloo processes: the other rank holds only the meta
replica, its shards are filled from rank 0, and a stage's end gives the whole model back to rank 0 alone."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from basel_app.lit.sharding import consolidate, has_storage, meta_replica, on_host, shard_from_rank_zero
from basel_app.lowrank import basel_layers

from ..lit.test_sharding import tiny_model


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(input_ids=ids).logits


def _worker(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        expected = _logits(tiny_model())  # the same seeded model, built here only to compare against
        model, note = on_host(lambda: (tiny_model(), "built on rank 0"), hosted=True)
        held_before = has_storage(model)
        blueprint = meta_replica(model)
        shard_from_rank_zero(model, torch.device("cpu"))
        sharded_error = float((_logits(model) - expected).abs().max())
        plain = consolidate(model, blueprint)
        after = (has_storage(plain), float((_logits(plain) - expected).abs().max()) if has_storage(plain) else None)
        # bf16-mixed: the layers are all-gathered in bf16; the shards stay float32.
        halved, _ = on_host(lambda: (tiny_model(), None), hosted=True)
        shard_from_rank_zero(halved, torch.device("cpu"), torch.bfloat16)
        shards = {p.to_local().dtype for p in halved.parameters()}
        gathered = []
        for layer in basel_layers(halved).values():
            layer.register_forward_pre_hook(lambda module, args: gathered.append(module.singular_values.dtype))
        bf16_error = float((_logits(halved).float() - expected).abs().max())
        results[rank] = (held_before, note, sharded_error, after, set(gathered), shards, bf16_error)
    finally:
        dist.destroy_process_group()


def test_only_rank_zero_holds_the_model_between_stages_and_every_rank_shards_its_values(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), results), nprocs=2)
    (held_0, note_0, error_0, after_0, *bf16_0), (held_1, note_1, error_1, after_1, *bf16_1) = results[0], results[1]
    assert (held_0, held_1) == (True, False)  # rank 1 got the module tree on the meta device, no values
    assert note_0 == note_1 == "built on rank 0"  # and rank 0's result
    assert error_0 <= 1e-6 and error_1 <= 1e-6  # both ranks' shards came from rank 0: the sharded model is it
    assert after_0 == (True, 0.0)  # the stage's end: rank 0 holds the whole model again, exactly
    assert after_1 == (False, None)  # rank 1 is back to the meta replica
    for gathered, shards, error in (bf16_0, bf16_1):
        assert gathered == {torch.bfloat16} and shards == {torch.float32}
        assert 0 < error < 0.1  # bf16 rounding of logits of magnitude ~1, not a different model


def test_on_one_process_everything_runs_here():
    model, note = on_host(lambda: (tiny_model(), 1), hosted=True)
    assert has_storage(model) and note == 1
