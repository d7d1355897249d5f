"""Which tensor first holds a NaN or inf: the one question the numerical guards ask (training and saving)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """The name of the first floating-point tensor in `named` holding a NaN or inf (None entries skipped),
    or None when every one is finite. The order is the caller's: module order names the earliest layer."""
    for name, tensor in named:
        if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
