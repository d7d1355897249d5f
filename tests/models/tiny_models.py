"""Tiny seeded Llamas shared by the models tests (hidden 64, 2 layers, 4 heads, 2 KV heads, byte vocabulary)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.lowrank.inject import set_submodule
from basel_app.lowrank.thin import LowRankLinear

# Module name -> rank for the factored fixtures: square, GQA-shaped (k_proj is 32 x 64) and MLP matrices.
RANKS = {
    "model.layers.0.self_attn.q_proj": 7,
    "model.layers.1.self_attn.k_proj": 3,
    "model.layers.1.mlp.down_proj": 5,
}


def make_llama(config: LlamaConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    # Built in `dtype` the way from_pretrained does it (rotary buffers stay float32), not by .to(dtype).
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(config, dtype=dtype).eval()


def factor(model: LlamaForCausalLM, ranks: dict[str, int], seed: int = 1) -> LlamaForCausalLM:
    """Replace the named nn.Linear modules by random LowRankLinear ones (same shapes and bias)."""
    torch.manual_seed(seed)
    for name, rank in ranks.items():
        dense = model.get_submodule(name)
        thin = LowRankLinear(dense.in_features, dense.out_features, rank, bias=dense.bias is not None)
        if thin.up.bias is not None:
            torch.nn.init.normal_(thin.up.bias)  # non-zero, so a lost bias would show in the logits
        thin.to(dense.weight.dtype)
        set_submodule(model, name, thin)
    return model
