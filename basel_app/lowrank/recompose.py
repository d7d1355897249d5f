"""Recompose: turn each trained `BaselLinear` into the smallest plain layer that computes the same map.

W̃ = A Bᵀ is already a product of thin factors (A n×k, B m×k), so its SVD costs O((n+m)k²), not the
O(nm·min(n, m)) of a full SVD:

    A = Q_a R_a,  B = Q_b R_b              (reduced QR)
    R_a R_bᵀ = X Σ Yᵀ                      (SVD of a small matrix)
    W̃ = (Q_a X) Σ (Q_b Y)ᵀ = U' Σ V'ᵀ

Below the break-even rank nm/(n+m) the result is a `LowRankLinear` (down = ΣV'ᵀ, up = U' with the bias);
at or above it, a dense `nn.Linear` is smaller and is used instead.
"""

from __future__ import annotations

from collections.abc import Callable

import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from basel_app.lowrank.inject import basel_layers, set_submodule
from basel_app.lowrank.reparam import BaselLinear, decomposition_dtype, rank_tolerance_eps
from basel_app.lowrank.thin import LowRankLinear

log = logging.getLogger(__name__)


def break_even_rank(n: int, m: int) -> float:
    """nm/(n+m): a rank-k factorisation stores k(n+m) numbers, fewer than nm only when k is below this."""
    return n * m / (n + m)


def thin_svd_of_product(
    a: torch.Tensor, b: torch.Tensor, tol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of W = A Bᵀ from its factors A (n×k), B (m×k), without forming W.

    Returns U' (n×k'), S' (k',) descending, V' (m×k') with W ≈ U' diag(S') V'ᵀ, computed in float64 when
    the factors are small (float32 otherwise, never half precision) and returned in that dtype.
    Singular values ≤ `tol` are truncated; the default tol is S_max · max(n, m) · eps (numerically zero),
    eps that of the factors' precision but at least float32's (see `rank_tolerance_eps`).
    At least one triplet is returned (a zero one when W = 0) so callers always get a usable factorisation.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"expected A (n×k) and B (m×k) with the same k >= 1, got {tuple(a.shape)} and {tuple(b.shape)}")
    n, m = a.shape[0], b.shape[0]
    dtype = decomposition_dtype(max(n, m) * a.shape[1])
    with torch.no_grad():
        q_a, r_a = torch.linalg.qr(a.detach().to(dtype))  # (n, p), (p, k), p = min(n, k)
        q_b, r_b = torch.linalg.qr(b.detach().to(dtype))  # (m, q), (q, k)
        x, sigma, yh = torch.linalg.svd(r_a @ r_b.T, full_matrices=False)  # (p, t) (t,) (t, q)
        if tol is None:
            tol = float(sigma.max()) * max(n, m) * rank_tolerance_eps(torch.promote_types(a.dtype, b.dtype))
        rank = max(1, int((sigma > tol).sum()))
        return q_a @ x[:, :rank], sigma[:rank], q_b @ yh[:rank].T


@torch.no_grad()
def recompose_layer(layer: BaselLinear) -> tuple[nn.Linear | LowRankLinear, int]:
    """The plain layer computing `layer`'s W̃ x + b (in its dtype and device), and W̃'s numerical rank.

    Rank k = the numerical rank of W̃. k < break-even → `LowRankLinear` with down.weight = diag(S')V'ᵀ (k×m)
    and up.weight = U' (n×k); otherwise a dense `nn.Linear` holding W̃. The new parameters all require
    grad; the post-fine-tuning stage chooses what trains.
    """
    n, m = layer.out_features, layer.in_features
    dtype, device = layer.singular_values.dtype, layer.U.device  # the bases may be held narrower
    a, b = layer.thin_factors()
    u, s, v = thin_svd_of_product(a, b)
    k = s.numel()
    has_bias = layer.bias is not None
    if k >= break_even_rank(n, m):
        dense = nn.Linear(m, n, bias=has_bias, device=device, dtype=dtype)
        dense.weight.copy_(a.to(u.dtype) @ b.to(u.dtype).T)  # W̃ formed at decomposition precision, then cast
        if has_bias:
            dense.bias.copy_(layer.bias)
        return dense, k
    return LowRankLinear.from_factors(s[:, None] * v.T, u, layer.bias, dtype, device), k  # down (k, m), up (n, k)


def recomposed_singular_values(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Singular values of W̃ per recomposed layer: the row norms of `down` = diag(S')V'ᵀ, or svdvals if dense."""
    out = {}
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LowRankLinear):
            out[name] = module.down.weight.float().norm(dim=1)
        else:
            out[name] = torch.linalg.svdvals(module.weight.float())
    return out


def recompose_model(
    model: nn.Module,
    recomposed: Callable[[dict[str, BaselLinear]], Callable[[str], tuple[nn.Module, int]]] | None = None,
) -> dict[str, int]:
    """Replace every `BaselLinear` in place; returns {name: numerical rank of W̃} (dense or thin).

    `recomposed(layers)` gives the function that returns each layer's `recompose_layer` result by name, asked
    in order (so the work can be done elsewhere, e.g. spread over processes); default: computed here.
    Idempotent: a model with no `BaselLinear` left is returned unchanged (and the dict is empty).
    """
    layers = basel_layers(model)
    result = recomposed(layers) if recomposed is not None else (lambda name: recompose_layer(layers[name]))
    ranks: dict[str, int] = {}
    thin = 0
    for name in tqdm(list(layers), desc="recompose", unit="layer", leave=False):
        new, ranks[name] = result(name)
        set_submodule(model, name, new)
        thin += isinstance(new, LowRankLinear)
        log.debug("%s: rank %d, %s", name, ranks[name], type(new).__name__)
    if ranks:
        log.info("recomposed %d layers: %d thin, %d dense (mean rank %.1f)", len(ranks), thin,
                 len(ranks) - thin, sum(ranks.values()) / len(ranks))
    return ranks
