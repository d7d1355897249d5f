"""The budget allocation rule: mass budgets per layer, parameter budgets per layer and global."""

from __future__ import annotations

import pytest
import torch

from basel_app.lowrank import BudgetError, LayerBases, keep_within, layer_weight_params, mass_keep_mask
from basel_app.lowrank.allocation import mass_fraction_before, priority_order, scheduled_weight_budget


def random_layers(gen: torch.Generator, extra: int = 0) -> list[LayerBases]:
    shapes = [(48, 80), (80, 48), (16, 48), (64, 64)]
    layers = []
    for n, m in shapes:
        r = min(n, m)
        s = torch.rand(r, generator=gen) * 10
        keep = torch.rand(r, generator=gen) > 0.1  # some bases already gone
        layers.append(LayerBases(n, m, keep, priority=s, mass=s, extra=extra))
    return layers


def weights(layers: list[LayerBases], masks: list[torch.Tensor], dense_cap: bool = True) -> int:
    return sum(int(layer_weight_params(b.n, b.m, int(k.sum()) + b.extra, dense_cap)) for b, k in zip(layers, masks))


def test_a_priority_order_other_than_magnitude_keeps_by_priority_until_the_mass_is_reached():
    magnitudes = torch.tensor([5.0, 4.0, 1.0, 0.5])
    keep = torch.ones(4, dtype=torch.bool)
    priority = torch.tensor([0.0, 1.0, 3.0, 2.0])  # order: 2, 3, 1, 0 -> masses 1, 0.5, 4, 5 (total 10.5)
    new = mass_keep_mask(magnitudes, keep, 0.5, priority)  # need 5.25: 1 + 0.5 + 4 = 5.5
    assert new.tolist() == [False, True, True, True]
    assert mass_keep_mask(magnitudes, keep, 0.5).tolist() == [True, True, False, False]  # |s| order: 5 + 4 >= 5.25


@pytest.mark.parametrize("allocation", ["per_layer", "global"])
@pytest.mark.parametrize("extra", [0, 3])
def test_a_parameter_budget_is_met_from_below_within_one_basis(allocation, extra, gen):
    layers = random_layers(gen, extra)
    full = weights(layers, [b.keep_mask for b in layers])
    for fraction in (0.3, 0.5, 0.8):
        budget = int(full * fraction)
        masks = keep_within(layers, budget, allocation)
        spent = weights(layers, masks)
        assert spent <= budget
        assert budget - spent < max(b.n + b.m for b in layers)  # less than one more basis would have cost
        for b, k in zip(layers, masks):
            assert not bool((k & ~b.keep_mask).any())  # nothing revived
            assert int(k.sum()) >= 1


def test_per_layer_allocation_gives_every_layer_the_same_mass_fraction(gen):
    layers = random_layers(gen)
    masks = keep_within(layers, int(weights(layers, [b.keep_mask for b in layers]) * 0.5), "per_layer")
    # The layers' kept fractions all straddle one threshold theta: every kept basis was needed below it,
    # every dropped one at or above it.
    needed_below, dropped_at = [], []
    for b, k in zip(layers, masks):
        order = priority_order(b.priority, b.keep_mask)
        before = mass_fraction_before(b.mass, order)
        kept = k[order]
        needed_below.append(float(before[kept].max()))
        if (~kept).any():
            dropped_at.append(float(before[~kept].min()))
    assert max(needed_below) <= min(dropped_at)


def test_global_allocation_drops_the_lowest_priority_per_parameter_first():
    keep = torch.ones(8, dtype=torch.bool)
    cheap = LayerBases(8, 8, keep, priority=torch.linspace(1.0, 0.3, 8), mass=torch.ones(8))  # 16 per basis
    dear = LayerBases(8, 24, keep.clone(), priority=torch.linspace(1.0, 0.3, 8), mass=torch.ones(8))  # 32 per basis
    budget = 10 * 16 + 4 * 32 - 1  # far below the 8 * 16 + 8 * 32 of full rank
    masks = keep_within([cheap, dear], budget, "global", dense_cap=False)
    # Same priorities, but a basis of `dear` costs twice as much: per parameter its bases rank lower.
    assert int(masks[0].sum()) > int(masks[1].sum())
    per_layer = keep_within([cheap, dear], budget, "per_layer", dense_cap=False)
    assert abs(int(per_layer[0].sum()) - int(per_layer[1].sum())) <= 1  # equal masses: equal fractions (± the tie)


def test_dense_layers_cost_nm_and_an_impossible_budget_is_refused():
    keep = torch.ones(16, dtype=torch.bool)
    layer = LayerBases(16, 16, keep, priority=torch.arange(16.0, 0, -1), mass=torch.ones(16))
    assert layer_weight_params(16, 16, 12) == 256  # 12 * 32 = 384 > 256: stored dense
    assert layer_weight_params(16, 16, 12, dense_cap=False) == 384
    assert int(keep_within([layer], 256, "per_layer")[0].sum()) == 16  # dense is free once paid for
    assert int(keep_within([layer], 255, "per_layer")[0].sum()) == 7  # 7 * 32 = 224; 8 * 32 = 256 > 255
    with pytest.raises(BudgetError, match="below the 32 that one basis per layer"):
        keep_within([layer], 31, "per_layer")
    with pytest.raises(ValueError, match="allocation='rows' is not allowed"):
        keep_within([layer], 100, "rows")


def test_the_event_schedule_is_geometric_and_ends_at_the_target():
    aims = [scheduled_weight_budget(1000, 250, t, 4) for t in range(1, 5)]
    assert aims[-1] == 250
    ratios = [b / a for a, b in zip([1000, *aims[:-1]], aims)]
    assert max(ratios) - min(ratios) < 0.01  # each event removes the same fraction (1/4**(1/4))


@pytest.mark.parametrize("allocation", ["per_layer", "global"])
@pytest.mark.parametrize("extra", [0, 3])
def test_rank_multiple_gives_ranks_in_multiples_within_one_block_of_the_budget(allocation, extra, gen):
    q = 8
    layers = random_layers(gen, extra)
    full = weights(layers, [b.keep_mask for b in layers])
    for fraction in (0.3, 0.5, 0.8):
        budget = int(full * fraction)
        masks = keep_within(layers, budget, allocation, rank_multiple=q)
        spent = weights(layers, masks)
        assert spent <= budget
        assert budget - spent < q * max(b.n + b.m for b in layers)  # less than one more block would have cost
        for b, k in zip(layers, masks):
            count, alive = int(k.sum()), int(b.keep_mask.sum())
            assert (count + b.extra) % q == 0 or count in (1, alive), (count, b.extra, alive)
            order = priority_order(b.priority, b.keep_mask)
            assert k[order[:count]].all()  # a prefix of the layer's own order


def test_rank_multiple_rounds_the_mass_rule_down_and_one_changes_nothing(gen):
    magnitudes = torch.arange(20, 0, -1).double()
    keep = torch.ones(20, dtype=torch.bool)
    plain = int(mass_keep_mask(magnitudes, keep, 0.8).sum())
    assert int(mass_keep_mask(magnitudes, keep, 0.8, rank_multiple=1).sum()) == plain
    rounded = int(mass_keep_mask(magnitudes, keep, 0.8, rank_multiple=4, extra=2).sum())
    assert (rounded + 2) % 4 == 0 and plain - 4 < rounded <= plain
    assert int(mass_keep_mask(magnitudes, keep, 0.05, rank_multiple=64).sum()) >= 1  # never below one basis
