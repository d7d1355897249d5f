"""Weight-only int8 / int4 quantization after compression (torchao), and its safetensors form.

Every `nn.Linear` but the output head is quantized: the dense layers and both thin factors of each
`LowRankLinear`, so a compressed and a dense model quantize alike. Activations stay in floating point.

    int8  symmetric, one scale per output row (torchao `Int8WeightOnlyConfig`): ~1 byte a weight
    int4  asymmetric, one scale and zero point per group of 32 inputs (torchao `IntxWeightOnlyConfig`);
          layers whose input width is not a multiple of 32 (thin factors of small rank) get one per row.
          torchao 0.18 keeps CPU int4 values unpacked, one per int8, so on disk int4 is no smaller than int8.

The quantized tensors are torchao tensor subclasses. They are stored through torchao's safetensors support
(plain tensors plus JSON metadata, an allow-list of classes): nothing is pickled.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from torch import nn

from basel_app.config.names import QUANTIZE_SCHEMES
from basel_app.lowrank import is_wrapper_tensor

logger = logging.getLogger(__name__)

INT4_GROUP_SIZE = 32
METADATA_KEY = "basel_quantization"  # in config.json and the safetensors header: the scheme used


def _torchao():
    """torchao, imported on first use: it costs seconds, and warns about CUDA-only kernels it cannot load."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    import torchao.quantization as quantization
    from torchao.prototype.safetensors import safetensors_support

    return quantization, safetensors_support


def quantizable(module: nn.Module, name: str) -> bool:
    """Every linear layer but the output head (it may share the embedding's weight, which stays float)."""
    return isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"


def quantize_linears(model: nn.Module, scheme: str) -> list[str]:
    """Quantize `model`'s linear weights in place by `scheme`; returns the names of the quantized layers."""
    if scheme not in QUANTIZE_SCHEMES or scheme == "none":
        raise ValueError(f"quantize={scheme!r} is not a quantization; allowed: {[s for s in QUANTIZE_SCHEMES if s != 'none']}")
    quantization, _ = _torchao()
    names = [name for name, module in model.named_modules() if quantizable(module, name)]
    if scheme == "int8":
        quantization.quantize_(model, quantization.Int8WeightOnlyConfig(), filter_fn=quantizable)
    else:
        grouped = {n for n in names if model.get_submodule(n).in_features % INT4_GROUP_SIZE == 0}
        for granularity, chosen in ((quantization.PerGroup(INT4_GROUP_SIZE), grouped),
                                    (quantization.PerAxis(0), set(names) - grouped)):
            config = quantization.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=granularity)
            quantization.quantize_(model, config, filter_fn=lambda m, n, chosen=chosen: n in chosen)
    if getattr(model, "config", None) is not None:
        setattr(model.config, METADATA_KEY, scheme)  # saved in config.json: how a load rebuilds the weights
    logger.info("quantized %d linear layers to %s (weight-only, torchao)", len(names), scheme)
    return names


def is_quantized(state: dict[str, torch.Tensor]) -> bool:
    return any(is_wrapper_tensor(t) for t in state.values())


def to_safetensors(state: dict[str, torch.Tensor], scheme: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(plain tensors, header metadata) for `safetensors.torch.save_file` of a quantized state dict."""
    _, support = _torchao()
    tensors, metadata = support.flatten_tensor_state_dict({k: v.detach() for k, v in state.items()})
    return tensors, {**metadata, METADATA_KEY: scheme}


def from_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    """The state dict `to_safetensors` flattened; an error names any tensor left over or missing."""
    _, support = _torchao()
    header = {k: v for k, v in metadata.items() if k != METADATA_KEY and k != "format"}
    state, leftover = support.unflatten_tensor_state_dict(tensors, header)
    missing = sorted(set(json.loads(header["tensor_names"])) - set(state))
    if leftover or missing:
        raise ValueError(f"quantized weights do not match their header: leftover {sorted(leftover)}, missing {missing}")
    return state
