"""Basel layers on data-aware bases (`method.init`): SVD-LLM's whitened and ASVD's scaled factorisations
given to `BaselLinear.from_linear` / `reparameterize` instead of the plain SVD, on fresh random inputs.

Float64 throughout, so one tolerance (1e-9 relative) separates rounding from a wrong basis or scale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from basel_app.lowrank import BaselLinear, basel_layers, find_target_linears, reparameterize
from basel_app.lowrank.factorizations import asvd_factorization, svd_llm_factorization

from .helpers import SHAPES, tiny_llama

TOL = 1e-9


def linear64(n: int, m: int, gen: torch.Generator) -> nn.Linear:
    linear = nn.Linear(m, n, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, m, generator=gen, dtype=torch.float64) / m**0.5)
        linear.bias.copy_(torch.randn(n, generator=gen, dtype=torch.float64))
    return linear


def correlated_inputs(m: int, tokens: int, gen: torch.Generator) -> torch.Tensor:
    """(m, tokens) inputs with correlated channels of very different scales, as LLM activations have."""
    mix = torch.randn(m, m, generator=gen, dtype=torch.float64) * torch.logspace(-1, 1, m, dtype=torch.float64)
    return mix @ torch.randn(m, tokens, generator=gen, dtype=torch.float64)


def from_factorization(linear: nn.Linear, f, additional_dim: int = 0) -> BaselLinear:
    return BaselLinear.from_linear(linear, additional_dim, factors=(f.left, f.values, f.right),
                                   generator=torch.Generator().manual_seed(0))


def output_error(layer: BaselLinear, weight: torch.Tensor, x: torch.Tensor) -> float:
    """‖(W − W̃) X‖_F² / tokens: the mean squared output error per calibration token."""
    with torch.no_grad():
        return float(((weight - layer.dense_weight()) @ x).square().sum() / x.shape[1])


@pytest.mark.parametrize("n,m", SHAPES)
def test_whitened_layer_is_the_input_layer_at_init_and_dropping_basis_i_costs_sigma_i_squared(n, m, gen):
    linear, x = linear64(n, m, gen), correlated_inputs(m, 4 * m, gen)
    f = svd_llm_factorization(linear.weight, x @ x.T / x.shape[1])
    layer = from_factorization(linear, f, additional_dim=3)
    r = layer.singular_values.numel()
    assert r == min(n, m)
    # U orthonormal, V = S⁻ᵀZ not: the layer does not rely on it.
    torch.testing.assert_close(layer.U.T @ layer.U, torch.eye(r, dtype=torch.float64), rtol=0, atol=TOL)
    assert float((layer.V.T @ layer.V - torch.eye(r, dtype=torch.float64)).abs().max()) > 1e-2

    probe = torch.randn(5, m, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(layer(probe), linear(probe), rtol=TOL, atol=TOL)  # identity at init (ŨṼᵀ = 0)
    with torch.no_grad():
        layer.extra_v.zero_()  # Ṽ is random, not the input layer's: leave only the bases in W̃
    sigma = layer.singular_values.detach()
    for i in torch.randperm(r, generator=gen)[:4].tolist():
        keep = torch.ones(r, dtype=torch.bool)
        keep[i] = False
        layer.keep_mask.copy_(keep)
        assert output_error(layer, linear.weight, x) == pytest.approx(float(sigma[i]) ** 2, rel=TOL, abs=TOL)
    # Dropping several costs the sum: the smallest-|s̃| bases are the cheapest on the calibration data,
    # which is SVD-LLM's truncation.
    layer.keep_mask.copy_(torch.arange(r) < r // 2)
    assert output_error(layer, linear.weight, x) == pytest.approx(float(sigma[r // 2:].square().sum()), rel=TOL)


@pytest.mark.parametrize("n,m", SHAPES)
def test_asvd_layer_is_the_input_layer_at_init_and_dropping_basis_i_costs_sigma_i_in_the_scaled_norm(n, m, gen):
    linear, x = linear64(n, m, gen), correlated_inputs(m, 4 * m, gen)
    alpha, scale = 0.5, x.abs().mean(1)
    layer = from_factorization(linear, asvd_factorization(linear.weight, scale, alpha), additional_dim=3)
    probe = torch.randn(5, m, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(layer(probe), linear(probe), rtol=TOL, atol=TOL)
    with torch.no_grad():
        layer.extra_v.zero_()
    r, sigma = layer.singular_values.numel(), layer.singular_values.detach()
    i = int(torch.randint(r, (1,), generator=gen))
    keep = torch.ones(r, dtype=torch.bool)
    keep[i] = False
    layer.keep_mask.copy_(keep)
    with torch.no_grad():
        error = (linear.weight - layer.dense_weight()) * scale[None, :] ** alpha  # ‖(W − W̃) diag(a^α)‖_F
    assert float(error.square().sum()) == pytest.approx(float(sigma[i]) ** 2, rel=TOL)


@pytest.mark.parametrize("n,m", SHAPES)
def test_asvd_with_alpha_zero_is_the_svd_init(n, m, gen):
    linear = linear64(n, m, gen)
    plain = BaselLinear.from_linear(linear, 0)
    asvd = from_factorization(linear, asvd_factorization(linear.weight, torch.rand(m, generator=gen,
                                                                                   dtype=torch.float64), 0.0))
    torch.testing.assert_close(asvd.singular_values, plain.singular_values, rtol=TOL, atol=0)
    for k in (1, min(n, m) // 2):  # the same truncations (bases equal up to sign)
        for layer in (asvd, plain):
            layer.keep_mask.copy_(torch.arange(layer.keep_mask.numel()) < k)
        torch.testing.assert_close(asvd.dense_weight(), plain.dense_weight(), rtol=TOL, atol=TOL)


def test_factors_of_the_wrong_shape_are_refused(gen):
    linear = linear64(8, 6, gen)
    u, s, v = torch.randn(8, 6, dtype=torch.float64), torch.ones(6, dtype=torch.float64), torch.randn(5, 6)
    with pytest.raises(ValueError, match="factors must be U"):
        BaselLinear.from_linear(linear, 0, factors=(u, s, v))


def test_reparameterize_takes_one_factorisation_per_target_and_refuses_a_missing_one(gen, input_ids):
    model = tiny_llama().double()
    names = [name for name, module in model.named_modules() if name.endswith(("q_proj", "down_proj"))]
    x = {name: correlated_inputs(model.get_submodule(name).in_features, 200, gen) for name in names}
    factors = {name: svd_llm_factorization(model.get_submodule(name).weight, x[name] @ x[name].T) for name in names}
    expected = model(input_ids).logits
    with pytest.raises(ValueError, match="no factorisation given for 1 target"):
        fresh = tiny_llama().double()
        reparameterize(fresh, find_target_linears(fresh, ["q_proj", "down_proj"]),
                       factorizations={k: v for k, v in factors.items() if k != names[0]})
    layers = reparameterize(model, find_target_linears(model, ["q_proj", "down_proj"]), additional_dim=2, factorizations=factors)
    assert set(layers) == set(names) == set(basel_layers(model))
    for name, layer in layers.items():
        torch.testing.assert_close(layer.singular_values.detach(), factors[name].values, rtol=TOL, atol=0)
    torch.testing.assert_close(model(input_ids).logits, expected, rtol=TOL, atol=TOL)
