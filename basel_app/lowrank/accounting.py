"""Parameter and byte accounting, so "compression ratio" always means real parameter counts.

Compression ratio = all parameters of the original model / all parameters of the compressed one
(embeddings, norms and head included). Tensors that share memory (tied embeddings) are counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from basel_app.lowrank.reparam import BaselLinear
from basel_app.lowrank.thin import LowRankLinear


def is_wrapper_tensor(tensor: torch.Tensor) -> bool:
    """A tensor subclass that holds other tensors (torchao's quantized weights)."""
    return type(tensor) not in (torch.Tensor, nn.Parameter) and hasattr(tensor, "__tensor_flatten__")


def _unique(tensors: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Each tensor once: by identity, and by memory (same storage, offset, shape) for real devices."""
    seen: set[Any] = set()
    for t in tensors:
        keys = [("id", id(t))]
        if t.device.type != "meta" and t.numel() > 0 and not is_wrapper_tensor(t):  # a wrapper has no storage of its own
            keys.append(("mem", t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)))
        if any(k in seen for k in keys):
            continue
        seen.update(keys)
        yield t


def _persistent_buffers(model: nn.Module) -> Iterator[torch.Tensor]:
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                yield buf


def count_parameters(model: nn.Module) -> int:
    """Number of parameters, tied tensors once."""
    return sum(p.numel() for p in _unique(model.parameters()))


def state_bytes(model: nn.Module) -> int:
    """Bytes the model's state actually takes: unique parameters plus persistent buffers (numel · itemsize)."""
    tensors = _unique([*model.parameters(), *_persistent_buffers(model)])
    return sum(stored_bytes(t) for t in tensors)


def stored_bytes(tensor: torch.Tensor) -> int:
    """numel · itemsize; a wrapper tensor subclass (a quantized weight: int8 data and float scales, whose own
    dtype is the float it stands for) counts the tensors it holds."""
    if is_wrapper_tensor(tensor):
        inner, _ = tensor.__tensor_flatten__()
        return sum(stored_bytes(getattr(tensor, name)) for name in inner)
    return tensor.numel() * tensor.element_size()


def linear_parameter_count(n: int, m: int, bias: bool = True) -> int:
    """A dense n×m linear (n = out, m = in): nm (+ n for the bias)."""
    return n * m + (n if bias else 0)


def lowrank_parameter_count(n: int, m: int, k: int, bias: bool = True) -> int:
    """A rank-k thin linear (n = out, m = in): k(n + m) (+ n for the bias)."""
    return k * (n + m) + (n if bias else 0)


def compression_ratio(original_params: int, compressed_params: int) -> float:
    """original / compressed parameter counts (> 1 means smaller)."""
    if compressed_params <= 0:
        raise ValueError(f"compressed_params={compressed_params} must be positive")
    return original_params / compressed_params


def layer_ranks(model: nn.Module, recomposed: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Shape, rank and kind of every `BaselLinear` ("reparam") and `LowRankLinear` ("lowrank") in `model`,
    and of the layers in `recomposed` ({name: numerical rank}, from `recompose_model`) that stayed dense."""
    recomposed = recomposed or {}
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if isinstance(module, BaselLinear):
            out[name] = {
                "kind": "reparam",
                "in_features": module.in_features,
                "out_features": module.out_features,
                "rank": module.rank,
                "kept_rank": module.kept_rank,
                "additional_dim": module.additional_dim,
            }
        elif isinstance(module, LowRankLinear) or (name in recomposed and type(module) is nn.Linear):
            thin = isinstance(module, LowRankLinear)
            out[name] = {
                "kind": "lowrank" if thin else "dense",
                "in_features": module.in_features,
                "out_features": module.out_features,
                "rank": module.rank if thin else recomposed[name],
                "params": sum(p.numel() for p in module.parameters()),
            }
    return out
