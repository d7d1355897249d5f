"""The joined factored product and its hand-written backward against autograd through the plain formula."""

from __future__ import annotations

import pytest
import torch

from basel_app.lowrank.factored_product import factored_product, plain_product
from tests.lowrank.helpers import rel_err


def operands(gen: torch.Generator, extra: int, dtype: torch.dtype, n: int = 24, m: int = 40, k: int = 12):
    """x (2, 7, m) and U (n×k), s̃ (k,), V (m×k), Ũ (n×r̃), Ṽ (m×r̃); x, s̃, Ũ, Ṽ require grad."""
    def draw(*shape: int, grad: bool = False) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(grad)
    return (draw(2, 7, m, grad=True), draw(n, k), draw(k, grad=True), draw(m, k), draw(n, extra, grad=True),
            draw(m, extra, grad=True))


def plain(x, u, s, v, extra_u, extra_v) -> torch.Tensor:
    """The formula as two separate terms, differentiated by autograd (written out, not `plain_product`, which
    the fast path's second derivatives use)."""
    return ((x @ v) * s) @ u.T + (x @ extra_v) @ extra_u.T


def test_plain_product_is_the_formula(gen):
    tensors = operands(gen, 5, torch.float64)
    assert rel_err(plain_product(*tensors), plain(*tensors)) < 1e-12


@pytest.mark.parametrize("extra", [0, 5])
def test_output_and_gradients_equal_autograd_in_float64(extra, gen):
    tensors = operands(gen, extra, torch.float64)
    g = torch.randn(2, 7, 24, generator=gen, dtype=torch.float64)
    trained = [t for t in tensors if t.requires_grad]
    expected = plain(*tensors)
    expected_grads = torch.autograd.grad(expected, trained, g)
    actual = factored_product(*tensors)
    actual_grads = torch.autograd.grad(actual, trained, g)
    assert actual.dtype == torch.float64 and rel_err(actual, expected) < 1e-12
    for name, a, e in zip(["x", "s", "extra_u", "extra_v"], actual_grads, expected_grads):
        if e.numel():
            assert rel_err(a, e) < 1e-12, name


def test_frozen_bases_get_no_gradient_and_untrained_inputs_none(gen):
    x, u, s, v, extra_u, extra_v = operands(gen, 5, torch.float64)
    u.requires_grad_()
    x.requires_grad_(False)
    factored_product(x, u, s, v, extra_u, extra_v).sum().backward()
    assert u.grad is None and x.grad is None and s.grad is not None


def test_under_bf16_autocast_it_computes_in_bf16_from_float32_scales_as_autocast_did(gen):
    """bf16 output of bf16 GEMMs, within bf16 rounding of the plain formula under autocast; s̃, Ũ, Ṽ keep
    float32 gradients."""
    tensors = operands(gen, 5, torch.float32)
    x, u, s, v, extra_u, extra_v = tensors
    u, v = u.bfloat16(), v.bfloat16()
    results = []
    for product in (plain, factored_product):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = product(x, u, s, v, extra_u, extra_v)
        grads = torch.autograd.grad(y.float().square().sum(), [x, s, extra_u, extra_v])
        results.append((y, grads))
    (expected, expected_grads), (actual, actual_grads) = results
    assert actual.dtype == torch.bfloat16 and rel_err(actual, expected) < 1e-2
    for a, e in zip(actual_grads, expected_grads):
        assert a.dtype == torch.float32 and rel_err(a, e) < 2e-2


def test_second_derivatives_equal_autograd_in_float64(gen):
    """With create_graph (the exact HVP), the gradient is itself differentiable: d/ds̃ of ⟨∂L/∂x, w⟩ agrees."""
    tensors = operands(gen, 5, torch.float64)
    x, s = tensors[0], tensors[2]
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    results = []
    for product in (plain, factored_product):
        (grad_x,) = torch.autograd.grad(product(*tensors).square().sum(), [x], create_graph=True)
        results.append(torch.autograd.grad((grad_x * w).sum(), [s])[0])
    assert rel_err(results[1], results[0]) < 1e-12
