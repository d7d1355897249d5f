"""Recompose: the QR-trick SVD is right, and the plain layer computes what the BaselLinear computed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from basel_app.lowrank import (
    BaselLinear,
    LowRankLinear,
    basel_layers,
    break_even_rank,
    count_parameters,
    find_target_linears,
    linear_parameter_count,
    lowrank_parameter_count,
    recompose_layer,
    recompose_model,
    reparameterize,
    thin_svd_of_product,
)
from tests.lowrank.helpers import LLAMA_TARGETS, REL_TOL, SHAPES, make_linear, perturb_as_if_trained, rel_err


@pytest.mark.parametrize(("n", "m", "k"), [(48, 80, 12), (80, 48, 12), (16, 48, 30), (48, 80, 60)])
def test_qr_trick_matches_full_svd(n, m, k, gen):
    a = torch.randn(n, k, generator=gen)
    b = torch.randn(m, k, generator=gen)
    u, s, v = thin_svd_of_product(a, b)
    expected = torch.linalg.svdvals((a.double() @ b.double().T))
    assert s.numel() == min(n, m, k)
    assert rel_err(s, expected[: s.numel()]) < REL_TOL
    assert rel_err(u @ torch.diag(s) @ v.T, a @ b.T) < REL_TOL
    eye = torch.eye(s.numel(), dtype=u.dtype)
    assert rel_err(u.T @ u, eye) < REL_TOL and rel_err(v.T @ v, eye) < REL_TOL


def test_qr_trick_truncates_numerically_zero_values(gen):
    core = torch.randn(48, 3, generator=gen)
    a = torch.cat([core, core @ torch.randn(3, 5, generator=gen)], dim=1)  # rank 3 in 8 columns
    b = torch.randn(80, 8, generator=gen)
    _, s, _ = thin_svd_of_product(a, b)
    assert s.numel() == 3


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("n", "m"), SHAPES)
def test_thin_recompose_matches_reparam(n, m, bias, gen):
    layer = BaselLinear.from_linear(make_linear(n, m, bias, gen), additional_dim=4, generator=gen)
    kept = max(1, int(break_even_rank(n, m)) // 2 - 4)
    perturb_as_if_trained(layer, gen, prune_to=kept)
    x = torch.randn(3, 7, m, generator=gen)
    expected = layer(x)
    new, rank = recompose_layer(layer)
    assert isinstance(new, LowRankLinear)
    assert new.rank == kept + 4  # generic: kept bases and the extra term are independent
    assert rel_err(new(x), expected) < REL_TOL
    assert sum(p.numel() for p in new.parameters()) == lowrank_parameter_count(n, m, new.rank, bias)
    assert new.down.weight.shape == (new.rank, m) and new.up.weight.shape == (n, new.rank)


@pytest.mark.parametrize(("n", "m"), SHAPES)
def test_rank_at_or_above_break_even_stays_dense(n, m, gen):
    layer = BaselLinear.from_linear(make_linear(n, m, True, gen), additional_dim=8, generator=gen)
    perturb_as_if_trained(layer, gen)  # nothing pruned: rank min(n, m) >= break-even
    x = torch.randn(5, m, generator=gen)
    expected = layer(x)
    new, rank = recompose_layer(layer)
    assert type(new) is nn.Linear
    assert rel_err(new(x), expected) < REL_TOL
    assert sum(p.numel() for p in new.parameters()) == linear_parameter_count(n, m, True)


def test_recomposed_layer_keeps_dtype(gen):
    layer = BaselLinear.from_linear(make_linear(48, 80, True, gen).to(torch.bfloat16), additional_dim=4)
    perturb_as_if_trained(layer, gen, prune_to=6)
    new, rank = recompose_layer(layer)
    assert {p.dtype for p in new.parameters()} == {torch.bfloat16}


def test_recompose_model_on_sequential_is_idempotent(gen):
    model = nn.Sequential(make_linear(80, 48, True, gen), nn.GELU(), make_linear(48, 80, True, gen))
    reparameterize(model, find_target_linears(model, ["0", "2"]), additional_dim=4)
    for layer in basel_layers(model).values():
        perturb_as_if_trained(layer, gen, prune_to=8)
    x = torch.randn(6, 48, generator=gen)
    expected = model(x)
    ranks = recompose_model(model)
    assert ranks == {"0": 12, "2": 12}
    assert rel_err(model(x), expected) < REL_TOL
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert recompose_model(model) == {}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_tiny_llama_logits_survive_recompose(llama, input_ids, gen):
    reparameterize(llama, find_target_linears(llama, LLAMA_TARGETS), additional_dim=4)
    for layer in basel_layers(llama).values():
        perturb_as_if_trained(layer, gen, prune_to=max(1, min(layer.out_features, layer.in_features) // 4))
    with torch.no_grad():
        before = llama(input_ids).logits
        ranks = recompose_model(llama)
        after = llama(input_ids).logits
    assert len(ranks) == 15 and all(r >= 1 for r in ranks.values())
    assert not basel_layers(llama)
    assert rel_err(after, before) < REL_TOL
    params = count_parameters(llama)
    assert recompose_model(llama) == {} and count_parameters(llama) == params
