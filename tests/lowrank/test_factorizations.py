"""The one-shot baselines' factorisations against SVD and Eckart–Young, on fresh random matrices."""

from __future__ import annotations

import pytest
import torch

from basel_app.lowrank.factorizations import (
    asvd_factorization,
    fwsvd_factorization,
    svd_factorization,
    svd_llm_factorization,
    whitening_factor,
)


def truncation(factorization, k: int) -> torch.Tensor:
    up, down = factorization.truncated(torch.arange(k))
    return up @ down


@pytest.fixture
def weight(gen: torch.Generator) -> torch.Tensor:
    return torch.randn(40, 24, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 5, 23])
def test_svd_truncation_error_is_the_norm_of_the_dropped_singular_values(weight, k):
    s = torch.linalg.svdvals(weight)
    error = weight - truncation(svd_factorization(weight), k)
    assert float(torch.linalg.matrix_norm(error)) == pytest.approx(float(s[k:].norm()), rel=1e-10)  # Frobenius
    assert float(torch.linalg.matrix_norm(error, ord=2)) == pytest.approx(float(s[k]), rel=1e-10)  # spectral


def test_full_rank_reconstructs_the_weight_for_every_method(weight, gen):
    x = torch.randn(24, 200, generator=gen, dtype=torch.float64)
    for f in (svd_factorization(weight), fwsvd_factorization(weight, torch.rand(40, generator=gen, dtype=torch.float64)),
              svd_llm_factorization(weight, x @ x.T), asvd_factorization(weight, x.abs().mean(1))):
        torch.testing.assert_close(truncation(f, 24), weight, rtol=0, atol=1e-10)
        assert bool((f.values[:-1] >= f.values[1:]).all())


@pytest.mark.parametrize("k", [3, 10])
def test_fwsvd_with_uniform_fisher_is_svd(weight, k):
    expected = truncation(svd_factorization(weight), k)
    actual = truncation(fwsvd_factorization(weight, torch.full((40,), 3.7, dtype=torch.float64)), k)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [3, 10])
def test_svd_llm_with_identity_gram_is_svd(weight, k):
    expected = truncation(svd_factorization(weight), k)
    actual = truncation(svd_llm_factorization(weight, torch.eye(24, dtype=torch.float64)), k)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [3, 10])
def test_asvd_with_alpha_zero_is_svd(weight, gen, k):
    expected = truncation(svd_factorization(weight), k)
    scale = torch.rand(24, generator=gen, dtype=torch.float64) * 5
    torch.testing.assert_close(truncation(asvd_factorization(weight, scale, alpha=0.0), k), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [2, 6, 12])
def test_svd_llm_beats_svd_on_the_output_error_of_correlated_activations(weight, gen, k):
    mixing = torch.randn(24, 24, generator=gen, dtype=torch.float64) * torch.logspace(0, -3, 24, dtype=torch.float64)
    x = mixing @ torch.randn(24, 500, generator=gen, dtype=torch.float64)  # strongly correlated inputs
    whitened = svd_llm_factorization(weight, x @ x.T)
    err_llm = float(((weight - truncation(whitened, k)) @ x).norm())
    err_svd = float(((weight - truncation(svd_factorization(weight), k)) @ x).norm())
    assert err_llm < err_svd
    # Truncation-aware: the output error is exactly the norm of the dropped whitened singular values.
    assert err_llm == pytest.approx(float(whitened.values[k:].norm()), rel=1e-8)


def test_a_singular_gram_is_damped_an_indefinite_one_falls_back_to_eigh_and_a_bad_one_is_refused(weight, gen):
    x = torch.randn(24, 5, generator=gen, dtype=torch.float64)  # 5 tokens for 24 inputs: rank 5
    damped = svd_llm_factorization(weight, x @ x.T)
    assert damped.note.startswith("cholesky damped") and torch.isfinite(damped.right).all()
    assert svd_llm_factorization(weight, x @ x.T + torch.eye(24, dtype=torch.float64)).note == "cholesky"
    # A clearly indefinite "Gram" (what accumulated rounding can give on a big model): no damping up to 1e-2
    # of the mean diagonal makes it positive definite, so the clamped eigendecomposition whitens instead.
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen, dtype=torch.float64))
    eigenvalues = torch.linspace(1.0, 2.0, 24, dtype=torch.float64)
    eigenvalues[:3] = -0.5
    indefinite = q @ torch.diag(eigenvalues) @ q.T
    f = svd_llm_factorization(weight, indefinite)
    assert f.note == "eigh, 3 of 24 eigenvalues clamped"
    torch.testing.assert_close(truncation(f, 24), weight, rtol=0, atol=1e-9)  # still an exact factorisation
    s, _ = whitening_factor(indefinite)
    clamped = q @ torch.diag(eigenvalues.clamp(min=1e-2 * float(indefinite.diagonal().mean()))) @ q.T
    torch.testing.assert_close(s @ s.T, clamped, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"gram must be \(24, 24\)"):
        svd_llm_factorization(weight, torch.eye(23, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite entries"):
        svd_llm_factorization(weight, torch.full((24, 24), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="input_abs_mean must be a finite, non-negative vector"):
        asvd_factorization(weight, -torch.ones(24, dtype=torch.float64))
