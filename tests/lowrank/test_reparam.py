"""BaselLinear (Eq. 3): exact at initialisation, both forward paths agree, gradients go where they should."""

from __future__ import annotations

import copy

import pytest
import torch

from basel_app.lowrank import BaselLinear, cheaper_path, recompose_layer
from tests.lowrank.helpers import REL_TOL, SHAPES, make_linear, perturb_as_if_trained, rel_err

PATHS = ["factored", "dense"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("additional_dim", [0, 8])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("n", "m"), SHAPES)
def test_init_reproduces_linear(n, m, bias, additional_dim, path, gen):
    linear = make_linear(n, m, bias, gen)
    layer = BaselLinear.from_linear(linear, additional_dim=additional_dim, generator=gen)
    x = torch.randn(3, 5, m, generator=gen)
    assert rel_err(layer(x, path=path), linear(x)) < REL_TOL
    assert layer.last_path == path
    assert rel_err(layer.dense_weight(), linear.weight) < REL_TOL


def test_token_count_picks_the_path(gen):
    """48x80 at full rank 48 + 8 extra is above break-even: few tokens go factored, many go dense."""
    linear = make_linear(48, 80, True, gen)
    layer = BaselLinear.from_linear(linear, additional_dim=8, generator=gen)
    for tokens in (1, 8, 64, 65, 500):
        x = torch.randn(tokens, 80, generator=gen)
        expected = cheaper_path(tokens, 80, 48, layer.rank)
        assert rel_err(layer(x), linear(x)) < REL_TOL
        assert layer.last_path == expected
    assert cheaper_path(1, 80, 48, layer.rank) == "factored"
    assert cheaper_path(500, 80, 48, layer.rank) == "dense"


@pytest.mark.parametrize(
    ("tokens", "n", "m", "k"),
    [(1, 48, 80, 56), (64, 48, 80, 56), (65, 48, 80, 56), (1000, 48, 80, 56), (1000, 48, 80, 10),
     (10_000, 4096, 4096, 4096), (10_000, 4096, 4096, 512), (1, 4096, 11008, 4128)],
)
def test_cheaper_path_counts_flops(tokens, n, m, k):
    factored = tokens * k * (n + m)
    dense = n * m * k + tokens * n * m
    expected = "factored" if factored <= dense else "dense"
    assert cheaper_path(tokens, m, n, k) == expected


def test_cheaper_path_has_both_outcomes():
    assert cheaper_path(1, 80, 48, 56) == "factored"
    assert cheaper_path(1000, 80, 48, 56) == "dense"
    assert cheaper_path(10**6, 80, 48, 10) == "factored"  # below break-even factored always wins


@pytest.mark.parametrize(("n", "m"), SHAPES)
def test_paths_agree_after_training_and_pruning(n, m, gen):
    layer = BaselLinear.from_linear(make_linear(n, m, True, gen), additional_dim=8, generator=gen)
    perturb_as_if_trained(layer, gen, prune_to=min(n, m) // 2)
    x = torch.randn(7, m, generator=gen)
    assert rel_err(layer(x, path="factored"), layer(x, path="dense")) < REL_TOL
    assert rel_err(layer(x, path="dense"), x @ layer.dense_weight().T + layer.bias) < REL_TOL


def test_rank_deficient_weight_drops_zero_singular_values(gen):
    w = torch.randn(48, 5, generator=gen) @ torch.randn(5, 80, generator=gen)
    linear = make_linear(48, 80, True, gen)
    with torch.no_grad():
        linear.weight.copy_(w)
    layer = BaselLinear.from_linear(linear, additional_dim=4, generator=gen)
    assert layer.keep_mask.numel() == 5 and layer.U.shape == (48, 5) and layer.V.shape == (80, 5)
    x = torch.randn(6, 80, generator=gen)
    assert rel_err(layer(x), linear(x)) < REL_TOL


@pytest.mark.parametrize(("n", "m"), SHAPES)
def test_topk_mask_is_eckart_young(n, m, gen):
    """Keeping the top-k bases gives the best rank-k approximation: error = sqrt(sum of dropped s^2)."""
    linear = make_linear(n, m, False, gen)
    layer = BaselLinear.from_linear(linear, additional_dim=0)
    s = torch.linalg.svdvals(linear.weight.detach().double())
    k = min(n, m) // 3
    keep = torch.zeros_like(layer.keep_mask)
    keep[:k] = True  # singular values come sorted descending
    layer.prune(keep)
    error = (linear.weight.double() - layer.dense_weight().double()).norm().detach()
    expected = s[k:].pow(2).sum().sqrt()
    assert abs(float(error - expected)) / float(expected) < REL_TOL


def _grads(layer, x, path):
    layer.zero_grad(set_to_none=True)
    layer(x, path=path).pow(2).sum().backward()
    return {name: p.grad for name, p in layer.named_parameters()}


@pytest.mark.parametrize("path", PATHS)
def test_gradients_reach_trainables_not_frozen_bases(path, gen):
    layer = BaselLinear.from_linear(make_linear(48, 80, True, gen), additional_dim=8, generator=gen)
    x = torch.randn(4, 80, generator=gen)
    grads = _grads(layer, x, path)
    assert grads["singular_values"].abs().sum() > 0 and grads["extra_u"].abs().sum() > 0
    # dL/dV~ = x (U~^T g)^T is zero while U~ = 0 (LoRA's init); it flows once U~ has moved.
    assert grads["extra_v"] is not None
    assert grads["U"] is None and grads["V"] is None and grads["bias"] is None
    perturb_as_if_trained(layer, gen)
    assert _grads(layer, x, path)["extra_v"].abs().sum() > 0
    assert {id(p) for p in layer.trainable_parameters()} == {
        id(layer.singular_values), id(layer.extra_u), id(layer.extra_v)
    }


@pytest.mark.parametrize("path", PATHS)
def test_free_bases_get_gradients(path, gen):
    layer = BaselLinear.from_linear(make_linear(48, 80, True, gen), additional_dim=8, free_bases=True, generator=gen)
    grads = _grads(layer, torch.randn(4, 80, generator=gen), path)
    assert grads["U"].abs().sum() > 0 and grads["V"].abs().sum() > 0
    assert any(p is layer.U for p in layer.trainable_parameters())
    assert any(p is layer.V for p in layer.trainable_parameters())


@pytest.mark.parametrize("path", PATHS)
def test_pruned_bases_get_zero_gradient(path, gen):
    layer = BaselLinear.from_linear(make_linear(48, 80, True, gen), additional_dim=8, free_bases=True, generator=gen)
    perturb_as_if_trained(layer, gen, prune_to=20)
    dropped = ~layer.keep_mask
    grads = _grads(layer, torch.randn(4, 80, generator=gen), path)
    assert torch.all(grads["singular_values"][dropped] == 0)
    assert torch.all(grads["U"][:, dropped] == 0) and torch.all(grads["V"][:, dropped] == 0)
    assert grads["singular_values"][layer.keep_mask].abs().sum() > 0


def test_prune_only_removes(gen):
    layer = BaselLinear.from_linear(make_linear(16, 48, True, gen), additional_dim=2, generator=gen)
    keep = layer.keep_mask.clone()
    keep[:4] = False
    layer.prune(keep)
    assert layer.kept_rank == 12 and layer.rank == 14 and layer.keep_mask.numel() == 16
    revive = layer.keep_mask.clone()
    revive[0] = True
    with pytest.raises(ValueError, match="revive"):
        layer.prune(revive)
    with pytest.raises(ValueError, match="every basis"):
        layer.prune(torch.zeros(16, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        layer.prune(torch.ones(15, dtype=torch.bool))


def test_state_dict_round_trip_restores_mask(gen):
    """The mask is the only buffer and is persistent: a fresh layer loaded from a mid-pruning state matches."""
    layer = BaselLinear.from_linear(make_linear(48, 80, True, gen), additional_dim=8, generator=gen)
    perturb_as_if_trained(layer, gen, prune_to=10)
    assert [name for name, _ in layer.named_buffers()] == ["keep_mask"]
    fresh = BaselLinear(80, 48, layer.keep_mask.numel(), additional_dim=8)
    x = torch.randn(5, 80, generator=gen)
    fresh(x)  # populate the kept-index cache before loading, so a stale cache would show
    fresh.load_state_dict(layer.state_dict())
    assert fresh.kept_rank == 10
    assert rel_err(fresh(x), layer(x)) < REL_TOL


def test_half_precision_layer_keeps_its_dtype(gen):
    linear = make_linear(48, 80, True, gen).to(torch.bfloat16)
    layer = BaselLinear.from_linear(linear, additional_dim=4, generator=gen)
    assert {p.dtype for p in layer.parameters()} == {torch.bfloat16}
    x = torch.randn(3, 80, generator=gen).to(torch.bfloat16)
    assert rel_err(layer(x), linear(x)) < 2e-2  # bf16 has ~3 significant digits


@pytest.mark.parametrize("free_bases", [False, True])
@pytest.mark.parametrize(("n", "m"), SHAPES)
def test_both_paths_give_the_autograd_reference_gradients(n, m, free_bases, gen):
    """Gradients w.r.t. s̃, Ũ, Ṽ (and U, V when free) of both paths equal those of W̃ = A Bᵀ with A, B from
    `thin_factors` (autograd through the plain product) on fresh inputs; masked bases get exactly zero."""
    layer = BaselLinear.from_linear(make_linear(n, m, True, gen), additional_dim=8, free_bases=free_bases,
                                    generator=gen)
    perturb_as_if_trained(layer, gen, prune_to=min(n, m) // 2)
    x = torch.randn(2, 9, m, generator=gen)
    g = torch.randn(2, 9, n, generator=gen)
    layer.zero_grad(set_to_none=True)
    a, b = layer.thin_factors()
    ((x @ b) @ a.T + layer.bias).mul(g).sum().backward()
    reference = {name: p.grad.clone() for name, p in layer.named_parameters() if p.requires_grad}
    dropped = ~layer.keep_mask
    for path in PATHS:
        layer.zero_grad(set_to_none=True)
        layer(x, path=path).mul(g).sum().backward()
        for name, p in layer.named_parameters():
            if p.requires_grad:
                assert rel_err(p.grad, reference[name]) < REL_TOL, (path, name)
        assert torch.count_nonzero(layer.singular_values.grad[dropped]) == 0


def narrowed_copy(gen: torch.Generator, prune_to: int | None) -> tuple[BaselLinear, BaselLinear, int]:
    """A trained-looking layer (float32) and a copy of it whose frozen bases are held in bf16."""
    wide = BaselLinear.from_linear(make_linear(48, 80, True, gen), additional_dim=8, generator=gen)
    perturb_as_if_trained(wide, gen, prune_to)
    narrow = copy.deepcopy(wide)
    return wide, narrow, narrow.store_frozen_bases(torch.bfloat16)


@pytest.mark.parametrize("prune_to", [None, 20])
def test_bf16_bases_compute_bit_for_bit_what_autocast_computed_from_float32_ones(prune_to, gen):
    wide, narrow, freed = narrowed_copy(gen, prune_to)
    assert (narrow.U.dtype, narrow.V.dtype, narrow.singular_values.dtype) == (torch.bfloat16, torch.bfloat16,
                                                                             torch.float32)
    assert not narrow.U.requires_grad and freed == 2 * (wide.U.numel() + wide.V.numel())
    x = torch.randn(3, 5, 80, generator=gen)
    results = []
    for layer in (wide, narrow):
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(inputs, path="factored")
        y.float().pow(2).sum().backward()
        results.append([y, inputs.grad, layer.singular_values.grad, layer.extra_u.grad, layer.extra_v.grad])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_bf16_bases_compute_in_float32_outside_autocast_and_recompose_to_float32(path, gen):
    """Outside autocast (float32 evaluation, Hutchinson's finite differences) the layer computes in s̃'s dtype
    on the bf16 values, as a float32 layer holding those rounded values does; recomposition yields float32."""
    wide, narrow, _ = narrowed_copy(gen, prune_to=20)
    with torch.no_grad():
        wide.U.copy_(wide.U.bfloat16())
        wide.V.copy_(wide.V.bfloat16())
    x = torch.randn(3, 5, 80, generator=gen)
    y = narrow(x, path=path)
    assert y.dtype == torch.float32 and torch.equal(y, wide(x, path=path))
    (thin, rank), (reference, reference_rank) = recompose_layer(narrow), recompose_layer(wide)
    assert rank == reference_rank and all(p.dtype == torch.float32 for p in thin.parameters())
    assert torch.equal(thin(x), reference(x))


def test_trainable_bases_keep_their_precision(gen):
    layer = BaselLinear.from_linear(make_linear(48, 80, True, gen), additional_dim=8, free_bases=True, generator=gen)
    assert layer.store_frozen_bases(torch.bfloat16) == 0
    assert layer.U.dtype == layer.V.dtype == torch.float32
