"""The one-shot baselines' truncated factorisations (METHODS.md, Baselines), in pure torch.

Each one weights the weight W (n×m) by what its paper says matters, takes the SVD of the weighted
matrix, and undoes the weighting in one factor, giving W ≈ L diag(σ) Rᵀ with σ descending:

    SVD       W                = U Σ Vᵀ    L = U,               R = V
    FWSVD     diag(√I) W       = U Σ Vᵀ    L = diag(1/√I) U,    R = V          I: Fisher per output row
    SVD-LLM   W S              = U Σ Vᵀ    L = U,               R = S⁻ᵀ V      S Sᵀ = X Xᵀ (Cholesky)
    ASVD      W diag(a^α)      = U Σ Vᵀ    L = U,               R = diag(a^-α) V   a: mean |x| per input

Truncating to k keeps the first k triplets; σ is also what a keep ratio measures for these methods.
SVD-LLM's whitening makes σ_i² exactly the output error ‖(W − Ŵ)X‖² that dropping triplet i costs (per
token when the Gram is X Xᵀ / tokens, as the one-shot stage passes it: the scale then does not depend on
the number of calibration tokens, which matters where σ is trained, as Basel's s̃ with `method.init`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from basel_app.lowrank.reparam import decomposition_dtype

FACTORIZATIONS = ("svd", "fwsvd", "svd_llm", "asvd")
# Relative floors that keep a zero importance (a dead row, a silent input channel) from dividing by zero.
SCALE_FLOOR = 1e-8
# SVD-LLM's whitening: the first damping tried on a Gram matrix that Cholesky refuses, and the most it may add.
WHITENING_DAMPING = 1e-6
WHITENING_MAX_DAMPING = 1e-2


@dataclass
class Factorization:
    """W ≈ left diag(values) rightᵀ; left (n×r), values (r,) descending, right (m×r)."""

    left: torch.Tensor
    values: torch.Tensor
    right: torch.Tensor
    note: str = ""  # how a weighting was conditioned, where it needed care (SVD-LLM's whitening)

    def truncated(self, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(up (n×k), down (k×m)) of the kept triplets (`keep` a bool mask or index tensor): Ŵ = up @ down."""
        return self.left[:, keep], (self.values[keep, None] * self.right[:, keep].T)


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (n×r), σ (r,), V (m×r) at the decomposition precision (float64 for small matrices)."""
    u, s, vh = torch.linalg.svd(matrix.to(decomposition_dtype(matrix.numel())), full_matrices=False)
    return u, s, vh.T


def _positive(scale: torch.Tensor, name: str) -> torch.Tensor:
    if scale.ndim != 1 or not torch.isfinite(scale).all() or (scale < 0).any():
        raise ValueError(f"{name} must be a finite, non-negative vector, got shape {tuple(scale.shape)}")
    return scale.clamp(min=float(scale.max()) * SCALE_FLOOR + torch.finfo(torch.float64).tiny)


def svd_factorization(weight: torch.Tensor) -> Factorization:
    u, s, v = _svd(weight.detach())
    return Factorization(u, s, v)


def fwsvd_factorization(weight: torch.Tensor, row_fisher: torch.Tensor) -> Factorization:
    """`row_fisher` (n,): Σ over the row's weights of the squared task gradients (Hsu et al., 2022)."""
    w = weight.detach()
    root = _positive(row_fisher.detach().to(decomposition_dtype(w.numel())), "row_fisher").sqrt()
    u, s, v = _svd(root[:, None] * w.to(root.dtype))
    return Factorization(u / root[:, None], s, v)


def whitening_factor(
    gram: torch.Tensor, damping: float = WHITENING_DAMPING, max_damping: float = WHITENING_MAX_DAMPING
) -> tuple[torch.Tensor, str]:
    """S with S Sᵀ = X Xᵀ (m×m), and how it was obtained.

    Cholesky first; a Gram matrix from fewer tokens than inputs is singular and rounding can make it
    slightly indefinite, so `damping` × its mean diagonal is added (×10 each retry, up to `max_damping`).
    If even that fails, fall back to `eigh` with eigenvalues clamped at `max_damping` × the mean
    diagonal: S = Q diag(√λ). Any S with S Sᵀ = X Xᵀ whitens, so the truncation stays error-aware.
    """
    m = gram.shape[0]
    g = (gram + gram.T) / 2
    eye = torch.eye(m, dtype=g.dtype, device=g.device)
    scale = float(g.diagonal().mean().clamp(min=torch.finfo(g.dtype).tiny))
    added = 0.0
    while added <= max_damping:
        chol, info = torch.linalg.cholesky_ex(g + added * scale * eye)
        if int(info) == 0 and bool(torch.isfinite(chol).all()):
            return chol, "cholesky" if added == 0.0 else f"cholesky damped {added:.0e}"
        added = damping if added == 0.0 else added * 10
    eigenvalues, vectors = torch.linalg.eigh(g)
    floor = max_damping * scale
    clamped = int((eigenvalues < floor).sum())
    return vectors * eigenvalues.clamp(min=floor).sqrt(), f"eigh, {clamped} of {m} eigenvalues clamped"


def svd_llm_factorization(weight: torch.Tensor, gram: torch.Tensor, damping: float = WHITENING_DAMPING) -> Factorization:
    """`gram` (m×m): X Xᵀ of the layer's inputs on calibration data (Wang et al., 2024).

    The whitening factor comes from `whitening_factor`; how (plain, damped or eigh) is kept in `note`.
    """
    w = weight.detach()
    dtype = decomposition_dtype(w.numel())
    g = gram.detach().to(dtype)
    m = w.shape[1]
    if g.shape != (m, m):
        raise ValueError(f"gram must be ({m}, {m}) for a weight with {m} inputs, got {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("the activation Gram matrix has non-finite entries; check the calibration batches")
    factor, note = whitening_factor(g, damping)
    u, s, v = _svd(w.to(dtype) @ factor)
    # R = S⁻ᵀ V: solve Sᵀ R = V (triangular when S is a Cholesky factor; S = Q diag(√λ) otherwise).
    if note.startswith("cholesky"):
        right = torch.linalg.solve_triangular(factor.T, v, upper=True)
    else:
        right = torch.linalg.solve(factor.T, v)
    return Factorization(u, s, right, note)


def asvd_factorization(weight: torch.Tensor, input_abs_mean: torch.Tensor, alpha: float = 0.5) -> Factorization:
    """`input_abs_mean` (m,): mean |x| per input channel on calibration data (Yuan et al., 2023)."""
    w = weight.detach()
    dtype = decomposition_dtype(w.numel())
    scale = _positive(input_abs_mean.detach().to(dtype), "input_abs_mean") ** alpha
    u, s, v = _svd(w.to(dtype) * scale[None, :])
    return Factorization(u, s, v / scale[:, None])
