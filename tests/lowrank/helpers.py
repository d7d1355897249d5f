"""Shared constants, checks and builders for the low-rank tests (fixtures live in conftest.py)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaForCausalLM

from ..tiny_llama import tiny_llama_config

# One tolerance for every float32 comparison: relative Frobenius error. float32 rounding of a product of
# a few factors of size <= 128 lands around 1e-7..1e-6; 1e-5 leaves room for that and nothing else
# (a wrong basis, sign or missing term gives errors of order 1).
REL_TOL = 1e-5

# Rectangular both ways, plus a GQA-like k/v projection (n_kv*d_head = 16 rows, hidden 48 columns).
SHAPES = [(48, 80), (80, 48), (16, 48)]  # (out n, in m)

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (expected is never zero in these tests)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm())


def make_linear(n: int, m: int, bias: bool, gen: torch.Generator) -> nn.Linear:
    """A float32 nn.Linear (out n, in m) with seeded random weights (and bias)."""
    linear = nn.Linear(m, n, bias=bias)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, m, generator=gen) / m**0.5)
        if bias:
            linear.bias.copy_(torch.randn(n, generator=gen))
    return linear


def tiny_llama(tie_word_embeddings: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """hidden 64, 2 layers, 4 query heads sharing 2 KV heads (k/v are 32x64), vocab 128, float32, eval."""
    config = tiny_llama_config(128, intermediate_size=96, max_position_embeddings=64,
                               tie_word_embeddings=tie_word_embeddings)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


@torch.no_grad()
def perturb_as_if_trained(layer, gen: torch.Generator, prune_to: int | None = None) -> None:
    """Random 'retraining': s~ scaled (some signs flipped), U~ nonzero, optionally keep only `prune_to` bases."""
    r = layer.singular_values.numel()
    scale = 0.5 + torch.rand(r, generator=gen)
    signs = torch.where(torch.rand(r, generator=gen) < 0.2, -1.0, 1.0)
    layer.singular_values.mul_(scale * signs)
    layer.extra_u.copy_(0.1 * torch.randn(layer.extra_u.shape, generator=gen))
    if prune_to is not None:
        keep = torch.zeros(r, dtype=torch.bool)
        keep[torch.randperm(r, generator=gen)[:prune_to]] = True
        layer.prune(keep)
