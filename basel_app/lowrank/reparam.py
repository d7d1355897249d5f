"""The reparameterized layer of Basel (Eq. 3): the SVD bases of a trained weight, with relearnable scales
and a small extra low-rank term.

    W̃ = U diag(s̃ ⊙ keep) V^T + Ũ Ṽ^T                     y = W̃ x + b

    x (…, m) ──V_kᵀ──► (…, k) ──⊙ s̃_k──► ──U_k──► (…, n)
             └─Ṽᵀ──► (…, r̃) ─────────────Ũ──────┘  +  b

    U (n×r), V (m×r)   bases of the input weight W = U diag(s) Vᵀ; frozen unless `free_bases`
    s̃ (r,)             relearned singular values, initialised to s
    Ũ (n×r̃), Ṽ (m×r̃)   additional dimension; Ũ = 0 and Ṽ small random, so ŨṼᵀ = 0 at start
    keep (r,)           bool mask of the bases still alive (pruning only clears entries)

By default (U, s, V) is the SVD of W (U, V orthonormal). A data-aware factorisation may be given instead
(`method.init`, e.g. SVD-LLM's whitened one: U = Y orthonormal, V = S⁻ᵀZ not): nothing here needs V
orthonormal, and recomposition re-orthonormalises both factors by QR.

At initialisation the layer computes exactly what the `nn.Linear` it replaces computed (up to rounding).
Frozen bases may be held in a mixed-precision run's autocast dtype (`store_frozen_bases`): autocast casts them
to it for every product anyway, so the factored path computes the same in less memory. All tensors are
`nn.Parameter`s (frozen ones with `requires_grad=False`) so FSDP shards them; the mask is the only buffer,
persistent so that a checkpoint taken mid-pruning restores exactly.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import nn

from basel_app.lowrank.factored_product import factored_product, plain_product

log = logging.getLogger(__name__)

ForwardPath = Literal["factored", "dense"]

# Matrices up to this many entries (e.g. 2048×2048) are decomposed in float64: it is cheap there and
# keeps small / ill-conditioned spectra accurate. Larger ones use float32 (the cost of float64 grows
# quickly on GPUs). Half precision is never used: cuSOLVER has no bf16/fp16 SVD and it would be too coarse.
FLOAT64_MAX_NUMEL = 4_194_304


def decomposition_dtype(numel: int) -> torch.dtype:
    """The dtype to run an SVD/QR in for a matrix (or factor pair) with `numel` entries."""
    return torch.float64 if numel <= FLOAT64_MAX_NUMEL else torch.float32


def rank_tolerance_eps(dtype: torch.dtype) -> float:
    """Machine epsilon for deciding that a singular value is numerically zero, for data stored in `dtype`.

    It is the precision the data was *stored* in (at least float32's), not the precision of the SVD: a
    float32 matrix of rank 5 decomposed in float64 has further singular values of float32 rounding size
    (~1e-7 relative), which float64's eps would keep as bases. Half precision uses float32's eps, since
    max(n, m) · eps(bf16) exceeds 1 for LLM-sized matrices and would drop everything.
    """
    return torch.finfo(torch.promote_types(dtype, torch.float32)).eps


def cheaper_path(tokens: int, in_features: int, out_features: int, rank: int) -> ForwardPath:
    """Which forward computes fewer multiply-adds for `tokens` inputs through a rank-`rank` layer.

    With n = out_features, m = in_features, k = rank, T = tokens:

        factored:  U_k (s̃_k ⊙ (V_kᵀ x)) + Ũ (Ṽᵀ x)   ≈ T·k·(n + m)
        dense:     W̃ = A Bᵀ, then W̃ x                 ≈ n·m·k + T·n·m

    Below the break-even rank (k(n+m) < nm) the factored path always wins; above it the dense one wins
    once T is large enough to amortise forming W̃. Ties go to the factored path (it allocates no n×m).
    """
    factored = tokens * rank * (out_features + in_features)
    dense = out_features * in_features * rank + tokens * out_features * in_features
    return "factored" if factored <= dense else "dense"



def svd_bases(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain SVD bases a `BaselLinear` starts from: U (n×r), s (r,), V (m×r) with W ≈ U diag(s) Vᵀ.

    The SVD runs in float64 for matrices with at most `FLOAT64_MAX_NUMEL` entries, float32 above, never
    in half precision. Numerically zero singular values (s ≤ s_max · max(n, m) · eps, the usual
    matrix-rank tolerance, with eps that of the weight's storage precision but at least float32's, see
    `rank_tolerance_eps`) are dropped: their bases are rounding noise and would only cost compute. At
    least one basis is kept (a zero weight keeps one zero basis) so the layer stays well formed.
    """
    weight = weight.detach()
    n, m = weight.shape
    u, s, vh = torch.linalg.svd(weight.to(decomposition_dtype(n * m)), full_matrices=False)
    tol = s.max() * max(n, m) * rank_tolerance_eps(weight.dtype)
    rank = max(1, int((s > tol).sum()))  # s is sorted descending: keep a prefix
    if rank < s.numel():
        log.debug("dropping %d numerically zero singular values of a %dx%d weight", s.numel() - rank, n, m)
    return u[:, :rank], s[:rank], vh[:rank].T  # (n,r) (r,) (m,r)

class BaselLinear(nn.Module):
    """A linear layer held as `U diag(s̃ ⊙ keep) Vᵀ + ŨṼᵀ` (plus the original, frozen bias).

    Build one with `from_linear`; the constructor only allocates (zeros) so that a checkpoint can be
    loaded into it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        additional_dim: int = 32,
        bias: bool = True,
        free_bases: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank={rank} is not allowed: a BaselLinear needs at least one basis")
        if additional_dim < 0:
            raise ValueError(f"additional_dim={additional_dim} must be >= 0 (0 disables the extra term)")
        kw = {"device": device, "dtype": dtype}
        n, m = out_features, in_features
        self.free_bases = free_bases
        self.U = nn.Parameter(torch.zeros(n, rank, **kw), requires_grad=free_bases)  # (n, r)
        self.V = nn.Parameter(torch.zeros(m, rank, **kw), requires_grad=free_bases)  # (m, r)
        self.singular_values = nn.Parameter(torch.zeros(rank, **kw))  # s̃: (r,)
        self.extra_u = nn.Parameter(torch.zeros(n, additional_dim, **kw))  # Ũ: (n, r̃), zero at start
        self.extra_v = nn.Parameter(torch.empty(m, additional_dim, **kw))  # Ṽ: (m, r̃), small random
        self.bias = nn.Parameter(torch.zeros(n, **kw), requires_grad=False) if bias else None
        self.register_buffer("keep_mask", torch.ones(rank, dtype=torch.bool, device=device))  # (r,)
        self.last_path: ForwardPath | None = None  # which forward ran last (for tests and profiling)
        self._index_cache: tuple[tuple[int, int, torch.device], torch.Tensor] | None = None
        self.reset_extra(generator)

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def reset_extra(self, generator: torch.Generator | None = None) -> None:
        """Ũ = 0, Ṽ ~ U(−1/√m, 1/√m): what LoRA's kaiming_uniform(a=√5) gives its A factor (fan-in m).

        One factor zero keeps ŨṼᵀ = 0 (the layer starts as the input layer). Ṽ random makes Ũ's first
        gradient nonzero (∂L/∂Ũ = g (Ṽᵀx)ᵀ); Ṽ's is zero until Ũ has moved (∂L/∂Ṽ = x (Ũᵀg)ᵀ), as in LoRA.
        """
        m, extra = self.extra_v.shape
        self.extra_u.zero_()
        if extra == 0:
            return
        bound = 1.0 / math.sqrt(m)
        where = generator.device if generator is not None else self.extra_v.device
        draw = torch.rand(m, extra, generator=generator, device=where, dtype=torch.float32)
        self.extra_v.copy_((draw * 2 - 1) * bound)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        additional_dim: int = 32,
        free_bases: bool = False,
        generator: torch.Generator | None = None,
        factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> BaselLinear:
        """Factor `linear.weight = U diag(s) Vᵀ` once, outside autograd (`svd_bases`), and wrap it; the
        factors are cast to the weight's dtype.

        `factors` = (U (n×r), s (r,), V (m×r)) with W = U diag(s) Vᵀ replaces the SVD: a data-aware
        factorisation computed elsewhere (`lowrank.factorizations`), whose s measures what each basis is
        worth on the calibration data. It is taken whole: a tiny value there marks a direction the data
        barely excites, not rounding noise in W, and dropping it would change W off the calibration data.
        """
        weight = linear.weight.detach()
        n, m = weight.shape
        with torch.no_grad():
            u, s, v = svd_bases(weight) if factors is None else (f.detach() for f in factors)
            if u.shape[0] != n or v.shape[0] != m or not u.shape[1] == s.numel() == v.shape[1]:
                raise ValueError(f"factors must be U (n×r), s (r,), V (m×r) for a {n}x{m} weight, got "
                                 f"{tuple(u.shape)}, {tuple(s.shape)}, {tuple(v.shape)}")
            rank = s.numel()
            layer = cls(
                m, n, rank, additional_dim, bias=linear.bias is not None, free_bases=free_bases,
                device=weight.device, dtype=weight.dtype, generator=generator,
            )
            layer.U.copy_(u)
            layer.V.copy_(v)
            layer.singular_values.copy_(s)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    # ------------------------------------------------------------------ shape and state
    @property
    def in_features(self) -> int:
        return self.V.shape[0]

    @property
    def out_features(self) -> int:
        return self.U.shape[0]

    @property
    def additional_dim(self) -> int:
        return self.extra_u.shape[1]

    @property
    def kept_rank(self) -> int:
        return self._kept_index().numel()

    @property
    def rank(self) -> int:
        """Upper bound on rank(W̃): kept bases plus the additional dimension."""
        return self.kept_rank + self.additional_dim

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What trains in the keep and prune phases: s̃, Ũ, Ṽ (when r̃ > 0), plus U, V with free bases."""
        params = [self.singular_values]
        if self.additional_dim > 0:
            params += [self.extra_u, self.extra_v]
        if self.free_bases:
            params += [self.U, self.V]
        return params

    def _kept_index(self) -> torch.Tensor:
        """Indices of the kept bases, (k_kept,). Cached until the mask changes.

        The key includes the mask's in-place version counter, so `prune`, `load_state_dict` or any direct
        in-place write invalidates it; without the cache every forward would sync with the device.
        """
        mask = self.keep_mask
        if mask.is_inference():  # inference tensors keep no version counter: no caching for them
            return mask.nonzero().squeeze(1)
        key = (mask.data_ptr(), mask._version, mask.device)
        if self._index_cache is None or self._index_cache[0] != key:
            self._index_cache = (key, mask.nonzero().squeeze(1))
        return self._index_cache[1]

    def _kept_bases(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U_k (n×k), s̃_k (k,), V_k (m×k) of the kept bases; no gather when nothing was pruned.

        Bases held narrower than s̃ (`store_frozen_bases`) come back in s̃'s dtype outside autocast; under it
        they stay narrow, since autocast would cast them to that dtype for the products anyway.
        """
        idx = self._kept_index()
        u, s, v = self.U, self.singular_values, self.V
        if idx.numel() != self.keep_mask.numel():
            u, s, v = u[:, idx], s[idx], v[:, idx]
        if u.dtype != s.dtype and not torch.is_autocast_enabled(u.device.type):
            u, v = u.to(s.dtype), v.to(s.dtype)
        return u, s, v

    @torch.no_grad()
    def store_frozen_bases(self, dtype: torch.dtype) -> int:
        """Hold U and V in `dtype`, a mixed-precision run's autocast dtype, while they do not train; returns the
        bytes freed.

        Autocast casts the bases to that dtype for every product, and keeps the cast copies for backward, so
        under it the factored path computes bit for bit the same. What changes is memory: one narrow copy
        instead of the float32 bases plus a step's cast copies of them (docs/BENCHMARKS.md, "Training step").
        Trainable bases (`free_bases`) keep their precision for the optimizer.
        """
        freed = 0
        for name in ("U", "V"):
            basis = getattr(self, name)
            if basis.requires_grad or basis.dtype == dtype:
                continue
            narrow = basis.to(dtype)
            freed += basis.numel() * basis.element_size() - narrow.numel() * narrow.element_size()
            setattr(self, name, nn.Parameter(narrow, requires_grad=False))
        return freed

    @torch.no_grad()
    def prune(self, new_keep_mask: torch.Tensor) -> None:
        """Drop bases for good: `new_keep_mask` (r,) bool must be a non-empty subset of the current mask.

        Only the mask changes (no shapes), so the optimizer's view of the parameters stays valid.
        """
        new = torch.as_tensor(new_keep_mask, device=self.keep_mask.device)
        if new.dtype != torch.bool or new.shape != self.keep_mask.shape:
            raise ValueError(
                f"new_keep_mask must be a bool tensor of shape {tuple(self.keep_mask.shape)}, "
                f"got {new.dtype} {tuple(new.shape)}"
            )
        revived = int((new & ~self.keep_mask).sum())
        if revived:
            raise ValueError(f"pruning can only remove bases, but new_keep_mask revives {revived} dropped basis(es)")
        if not bool(new.any()):
            raise ValueError("new_keep_mask drops every basis; keep at least one")
        self.keep_mask.copy_(new)

    # ------------------------------------------------------------------ the map
    def thin_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) with W̃ = A Bᵀ: A = [U_k·diag(s̃_k), Ũ] (n×k'), B = [V_k, Ṽ] (m×k'), k' = kept + r̃."""
        u, s, v = self._kept_bases()
        return torch.cat([u * s, self.extra_u], dim=1), torch.cat([v, self.extra_v], dim=1)

    def dense_weight(self) -> torch.Tensor:
        """W̃ materialised, (n, m), as (U_k·diag(s̃_k)) V_kᵀ + ŨṼᵀ rather than one product of `thin_factors`.

        Same n·m·k' multiply-adds forward, but backward never forms the gradient of a frozen V_k: it costs
        n·m·(k + 2r̃) instead of 2·n·m·k' multiply-adds (SmolLM2's q_proj at full rank, r̃ = 16: 0.20 G
        instead of 0.39 G; autograd through `[V_k, Ṽ]` computed all of it and kept Ṽ's 16 columns).
        """
        u, s, v = self._kept_bases()
        return torch.addmm(self.extra_u @ self.extra_v.T, u * s, v.T)

    def forward(self, x: torch.Tensor, path: ForwardPath | None = None) -> torch.Tensor:
        """x (…, m) → (…, n) by the cheaper of the two paths (see `cheaper_path`); `path` forces one."""
        tokens = x.numel() // self.in_features
        if path is None:
            path = cheaper_path(tokens, self.in_features, self.out_features, self.rank)
        self.last_path = path
        if path == "dense":
            return nn.functional.linear(x, self.dense_weight(), self.bias)
        if path != "factored":
            raise ValueError(f"path={path!r}: expected 'factored', 'dense' or None")
        u, s, v = self._kept_bases()
        product = plain_product if self.free_bases else factored_product  # trainable U, V: autograd's gradients
        y = product(x, u, s, v, self.extra_u, self.extra_v)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"kept_rank={self.kept_rank}/{self.keep_mask.numel()}, additional_dim={self.additional_dim}, "
            f"free_bases={self.free_bases}, bias={self.bias is not None}"
        )
