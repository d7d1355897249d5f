"""Singular bases read as tokens (Basel, Table 1): what a head or a linear layer writes into, or reads
from, the residual stream, seen through the model's own output head.

Attention head h of a Llama with H query heads sharing G key/value heads (head_dim d):

    OV_h = W_O[:, h·d:(h+1)·d] · W_V[g·d:(g+1)·d, :]      g = h // (H/G)      (hidden × hidden, rank ≤ d)
         = U diag(S) Vᵀ                                  thin SVD from the two slices (`thin_svd_of_product`)

transformers' `repeat_kv` repeats each KV head for H/G consecutive query heads, hence g = h // (H/G).
A left basis u (hidden,) is a direction the head writes into the residual stream. De-embedding reads it
the way the model reads its last hidden state:

    logits(u) = lm_head(final_norm(u))      (vocab,)

RMSNorm and a bias-free head are odd maps, so logits(−u) = −logits(u): the sign of a basis is arbitrary,
and each one is oriented so that its largest logit in magnitude is positive.

A block's own linear layers: o_proj and down_proj write the stream (their left bases are read out);
q/k/v_proj and gate/up_proj read it through an RMSNorm of weight γ, so their right bases v are read out
as γ ⊙ v, the residual direction each one responds to.
"""

from __future__ import annotations

import torch
from torch import nn

from basel_app.lowrank.factorizations import Factorization, svd_factorization
from basel_app.lowrank.recompose import thin_svd_of_product
from basel_app.lowrank.thin import LowRankLinear

# Each block linear: (the block's submodule holding it, the norm it reads the stream through; None: it
# writes the stream). Keys are config.names.BLOCK_LINEARS.
BLOCK_LINEARS = {
    "q_proj": ("self_attn", "input_layernorm"),
    "k_proj": ("self_attn", "input_layernorm"),
    "v_proj": ("self_attn", "input_layernorm"),
    "o_proj": ("self_attn", None),
    "gate_proj": ("mlp", "post_attention_layernorm"),
    "up_proj": ("mlp", "post_attention_layernorm"),
    "down_proj": ("mlp", None),
}


def kv_head(head: int, num_heads: int, num_kv_heads: int) -> int:
    """The key/value head that query head `head` reads under grouped-query attention."""
    return head // (num_heads // num_kv_heads)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """W (n×m) of an `nn.Linear`, or of a `LowRankLinear` (up · down)."""
    if isinstance(module, LowRankLinear):
        return module.up.weight @ module.down.weight
    return module.weight


@torch.no_grad()
def linear_bases(module: nn.Module) -> Factorization:
    """W = U diag(S) Vᵀ of a linear layer, S descending; a `LowRankLinear` from its two factors."""
    if isinstance(module, LowRankLinear):
        return Factorization(*thin_svd_of_product(module.up.weight, module.down.weight.T))
    return svd_factorization(module.weight)


@torch.no_grad()
def head_ov_bases(o_proj: nn.Module, v_proj: nn.Module, head: int, num_heads: int, num_kv_heads: int,
                  head_dim: int) -> Factorization:
    """OV_h = W_O^h W_V^g = U diag(S) Vᵀ of query head `head`, paired with its KV head g (module docstring)."""
    g = kv_head(head, num_heads, num_kv_heads)
    w_o = linear_weight(o_proj)[:, head * head_dim:(head + 1) * head_dim]  # (hidden, d)
    w_v = linear_weight(v_proj)[g * head_dim:(g + 1) * head_dim]  # (d, hidden)
    return Factorization(*thin_svd_of_product(w_o, w_v.T))


def block_linear(block: nn.Module, name: str) -> nn.Module:
    """The linear layer `name` (one of BLOCK_LINEARS) of a Llama decoder block."""
    return getattr(getattr(block, BLOCK_LINEARS[name][0]), name)


def residual_directions(block: nn.Module, name: str, bases: Factorization) -> torch.Tensor:
    """(hidden × k) the residual-stream side of a block linear's bases: U if it writes the stream, γ ⊙ V if
    it reads it through the norm of weight γ."""
    norm = BLOCK_LINEARS[name][1]
    if norm is None:
        return bases.left
    return getattr(block, norm).weight.to(bases.right.dtype)[:, None] * bases.right


@torch.no_grad()
def deembed(directions: torch.Tensor, final_norm: nn.Module, lm_head: nn.Module) -> torch.Tensor:
    """(k, vocab) logits of each column of `directions` (hidden × k) read by the final norm and the output
    head, each row oriented so that its largest-magnitude logit is positive."""
    dtype = next(lm_head.parameters()).dtype
    logits = lm_head(final_norm(directions.T.to(dtype))).float()  # (k, vocab)
    flip = logits.amax(dim=-1) < -logits.amin(dim=-1)
    return torch.where(flip[:, None], -logits, logits)


def top_tokens(logits: torch.Tensor, k: int) -> list[list[int]]:
    """The ids of the `k` largest logits of each row, largest first."""
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices.tolist()
