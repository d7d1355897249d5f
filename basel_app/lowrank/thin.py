"""The recomposed layer: a rank-k linear map stored as two thin linears.

    y = B (A x) + b,    A = S'V'^T  (k×m, no bias),    B = U'  (n×k, the original bias)

It stores k(n+m) numbers instead of nm, so it only pays off below the break-even rank nm/(n+m).
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """`nn.Linear(in_features, out_features)` factored through `rank` channels."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank={rank} is not allowed: a LowRankLinear needs rank >= 1")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)  # A: (k, m)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)  # B: (n, k)

    @classmethod
    @torch.no_grad()
    def from_factors(
        cls, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, device: torch.device
    ) -> LowRankLinear:
        """The layer computing up (down x) + bias: down (k, m), up (n, k), stored in `dtype` on `device`."""
        (k, m), n = down.shape, up.shape[0]
        thin = cls(m, n, k, bias=bias is not None, device=device, dtype=dtype)
        thin.down.weight.copy_(down)
        thin.up.weight.copy_(up)
        if bias is not None:
            thin.up.bias.copy_(bias)
        return thin

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., m) -> (..., n)
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
