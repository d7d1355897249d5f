"""Decompositions and recompositions spread over 2 real gloo processes while rank 0 holds the model: each rank
takes its share of the layers, and rank 0 gets exactly what it would have computed alone; a helper's error is
rank 0's."""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from basel_app.decomposition_cache import DecompositionCache
from basel_app.lowrank import find_target_linears, recompose_model
from basel_app.methods.one_shot import factorize_layers, plain_bases, svd_bases_of
from basel_app.pipeline import recompose_spread
from basel_app.spread import serve, serving, spread

from ..lit.test_sharding import tiny_model
from ..lowrank.helpers import LLAMA_TARGETS, tiny_llama
from ..test_decomposition_cache import batches


def _refuse() -> None:
    raise ValueError("this layer cannot be factored")


def _factors_equal(a, b) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("left", "values", "right"))


def _worker(rank: int, init_file: str, cache_dir: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if rank != 0:
            results[rank] = serve()
            return
        model = tiny_llama(seed=4)
        targets = find_target_linears(model, LLAMA_TARGETS)
        data = batches()
        reparameterised = tiny_model()
        here = copy.deepcopy(reparameterised)
        cache = DecompositionCache(cache_dir)
        dict(svd_bases_of({n: targets[n] for n in list(targets)[1:]}, cache).items())  # all but the first layer's
        with serving():
            spread_ranks = recompose_model(reparameterised, recompose_spread)
            bases = dict(svd_bases_of(targets).items())
            computed_before = cache.computed
            cached = dict(svd_bases_of(targets, cache).items())
            whitened = factorize_layers("svd_llm", model, targets, lambda: data, lambda m, b: m(**b).loss)
            try:
                spread([(plain_bases, (torch.eye(3),)), (_refuse, ())])
                error = None
            except RuntimeError as err:
                error = str(err)
        alone = factorize_layers("svd_llm", model, targets, lambda: data, lambda m, b: m(**b).loss)
        ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
        recomposed_same = (spread_ranks == recompose_model(here, recompose_spread)
                           and torch.equal(reparameterised(input_ids=ids).logits, here(input_ids=ids).logits))
        results[0] = (
            len(targets),
            all(_factors_equal(bases[n], plain_bases(targets[n].weight.detach())) for n in targets)
            and all(_factors_equal(cached[n], bases[n]) for n in targets),
            cache.computed - computed_before,
            all(_factors_equal(whitened[n], alone[n]) and whitened[n].note == alone[n].note for n in targets),
            error,
            recomposed_same,
            len(spread_ranks),
        )
    finally:
        dist.destroy_process_group()


def test_each_rank_factors_its_share_and_rank_zero_gets_its_own_factors(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path / "cache"), results), nprocs=2)
    layers, bases_same, computed_with_cache, whitened_same, error, recomposed_same, recomposed_layers = results[0]
    assert bases_same and whitened_same and recomposed_same
    assert computed_with_cache == 1  # only the first layer missed the cache
    # Rank 1 took every second layer of the recomposition and of both factorisations, and the second task of
    # the failing round; nothing of the cached pass, where the one miss is followed only by hits.
    assert results[1] == recomposed_layers // 2 + 2 * (layers // 2) + 1
    assert error is not None and "rank 1" in error and "this layer cannot be factored" in error


def test_outside_serving_everything_runs_here():
    assert spread([(torch.add, (torch.ones(2), 1))])[0].tolist() == [2.0, 2.0]
