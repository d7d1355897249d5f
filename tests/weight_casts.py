"""Counting autocast's casts of given weights: how the tests see whether a weight's bf16 copy is reused."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class CountWeightCasts(TorchDispatchMode):
    """Within the block, `casts` counts the dtype copies (`aten._to_copy`) made of any tensor in `weights`."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        super().__init__()
        self.pointers = {w.data_ptr() for w in weights}
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.pointers:
            self.casts += 1
        return func(*args, **(kwargs or {}))
