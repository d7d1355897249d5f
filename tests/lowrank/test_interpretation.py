"""Bases read as tokens: a basis built to point at known tokens reads them first, and each query head is
paired with the KV head transformers' attention really gives it."""

from __future__ import annotations

import pytest
import torch

from basel_app.config.names import BLOCK_LINEARS
from basel_app.lowrank import LowRankLinear
from basel_app.lowrank.interpretation import (
    BLOCK_LINEARS as LINEAR_ROLES,
    block_linear,
    deembed,
    head_ov_bases,
    linear_bases,
    residual_directions,
    top_tokens,
)

from .helpers import REL_TOL, rel_err

TOKENS = [17, 42, 99]  # what the constructed direction must read as, in this order
HEAD_DIM = 16


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def uneven_norm_weight(size: int, gen: torch.Generator) -> torch.Tensor:
    """γ spread over two decades: a basis read without its norm then points elsewhere."""
    return torch.exp(torch.empty(size).uniform_(-2.3, 2.3, generator=gen))


@torch.no_grad()
def point_head_at_tokens(llama, gen: torch.Generator) -> torch.Tensor:
    """Make the output head read one residual direction d as TOKENS (logits 1.5, 1, 0.5 along d, 0 for every
    other token), behind a final norm of uneven weight γ. Every token's row has a random part of norm ~4
    orthogonal to d, so a direction off d does not read TOKENS. Returns u (unit) with final_norm(u) ∝ d."""
    hidden = llama.config.hidden_size
    d = unit(torch.randn(hidden, generator=gen))
    head = llama.lm_head.weight
    head.copy_(4 * torch.randn(head.shape, generator=gen) / hidden**0.5)
    head.sub_((head @ d)[:, None] * d[None])  # every token's row orthogonal to d
    for logit, token in zip((1.5, 1.0, 0.5), TOKENS):
        head[token].add_(logit * d)
    gamma = uneven_norm_weight(hidden, gen)
    llama.model.norm.weight.copy_(gamma)
    return unit(d / gamma)  # norm(u) = γ ⊙ u / rms(u) ∝ d


def read(llama, directions: torch.Tensor) -> list[list[int]]:
    return top_tokens(deembed(directions, llama.model.norm, llama.lm_head), len(TOKENS))


def test_a_head_whose_top_basis_points_at_known_tokens_reads_them_first(llama, gen):
    u = point_head_at_tokens(llama, gen)
    attention = llama.model.layers[1].self_attn
    with torch.no_grad():  # head 3 writes 100·u for one direction of what its KV head (1) reads
        a = unit(torch.randn(HEAD_DIM, generator=gen))
        attention.o_proj.weight[:, 3 * HEAD_DIM:4 * HEAD_DIM].add_(100 * u[:, None] * a[None])
    bases = head_ov_bases(attention.o_proj, attention.v_proj, 3, num_heads=4, num_kv_heads=2, head_dim=HEAD_DIM)
    assert read(llama, bases.left[:, :1]) == [TOKENS]
    # A basis's sign is arbitrary: -u reads the same tokens.
    assert read(llama, -bases.left[:, :1]) == [TOKENS]
    # The other heads carry no such basis.
    for head in (0, 1, 2):
        other = head_ov_bases(attention.o_proj, attention.v_proj, head, num_heads=4, num_kv_heads=2, head_dim=HEAD_DIM)
        assert read(llama, other.left[:, :1]) != [TOKENS]


@pytest.mark.parametrize("name", ["o_proj", "down_proj", "q_proj", "up_proj"])
def test_a_linear_whose_top_basis_points_at_known_tokens_reads_them_first(llama, gen, name):
    """o/down_proj write the direction; q/up_proj read it through their block's norm (γ ⊙ v is the direction)."""
    u = point_head_at_tokens(llama, gen)
    block = llama.model.layers[0]
    linear = block_linear(block, name)
    norm = {"q_proj": block.input_layernorm, "up_proj": block.post_attention_layernorm}.get(name)
    with torch.no_grad():
        n, m = linear.weight.shape
        if norm is None:
            linear.weight.add_(100 * u[:, None] * unit(torch.randn(m, generator=gen))[None])
        else:
            norm.weight.copy_(uneven_norm_weight(m, gen))
            linear.weight.add_(100 * unit(torch.randn(n, generator=gen))[:, None] * unit(u / norm.weight)[None])
    bases = linear_bases(linear)
    assert read(llama, residual_directions(block, name, bases)[:, :1]) == [TOKENS]


def test_a_thin_layer_has_the_bases_of_its_product(gen):
    down, up = torch.randn(5, 40, generator=gen), torch.randn(24, 5, generator=gen)
    thin = LowRankLinear.from_factors(down, up, None, torch.float32, torch.device("cpu"))
    bases = linear_bases(thin)
    rebuilt = bases.left @ torch.diag(bases.values) @ bases.right.T
    assert rel_err(rebuilt, up @ down) < REL_TOL
    torch.testing.assert_close(bases.values.float(), torch.linalg.svdvals(up @ down)[:5])


@torch.no_grad()
def test_gqa_pairs_each_query_head_with_its_group_kv_head(llama):
    """Known head slices: KV head g reads input block g (scaled by g + 1); query head h writes output block h.
    So OV_h maps block g(h) to block h with every singular value g(h) + 1, where g(h) = h // 2 (4 heads, 2 KV)."""
    attention = llama.model.layers[0].self_attn
    blocks = [slice(b * HEAD_DIM, (b + 1) * HEAD_DIM) for b in range(4)]  # hidden 64 = 4 blocks
    eye = torch.eye(HEAD_DIM)
    attention.v_proj.weight.zero_()
    attention.o_proj.weight.zero_()
    for g in range(2):
        attention.v_proj.weight[g * HEAD_DIM:(g + 1) * HEAD_DIM, blocks[g]] = (g + 1) * eye
    for h in range(4):
        attention.o_proj.weight[blocks[h], h * HEAD_DIM:(h + 1) * HEAD_DIM] = eye
    for h, g in enumerate([0, 0, 1, 1]):
        bases = head_ov_bases(attention.o_proj, attention.v_proj, h, num_heads=4, num_kv_heads=2, head_dim=HEAD_DIM)
        torch.testing.assert_close(bases.values.float(), torch.full((HEAD_DIM,), g + 1.0))
        outside_h = torch.ones(64, dtype=torch.bool)
        outside_h[blocks[h]] = False
        outside_g = torch.ones(64, dtype=torch.bool)
        outside_g[blocks[g]] = False
        assert bases.left[outside_h].abs().max() < 1e-6 and bases.right[outside_g].abs().max() < 1e-6


@torch.no_grad()
def test_each_head_ov_is_what_the_attention_layer_computes_for_one_token(llama, gen):
    """For a one-token sequence attention is 1 on itself, so with every o_proj column but head h's zeroed,
    transformers' attention returns W_O^h W_V^g x: the factored OV_h must give the same."""
    attention = llama.model.layers[1].self_attn
    x = torch.randn(1, 1, 64, generator=gen)
    position_embeddings = llama.model.rotary_emb(x, torch.zeros(1, 1, dtype=torch.long))
    full_o = attention.o_proj.weight.clone()
    for h in range(4):
        attention.o_proj.weight.zero_()
        attention.o_proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = full_o[:, h * HEAD_DIM:(h + 1) * HEAD_DIM]
        expected = attention(x, position_embeddings=position_embeddings, attention_mask=None)[0].reshape(64)
        attention.o_proj.weight.copy_(full_o)
        bases = head_ov_bases(attention.o_proj, attention.v_proj, h, num_heads=4, num_kv_heads=2, head_dim=HEAD_DIM)
        got = bases.left @ (bases.values * (bases.right.T @ x.reshape(64).to(bases.right.dtype)))
        assert rel_err(got, expected) < REL_TOL, h


def test_every_block_linear_has_a_role():
    assert set(LINEAR_ROLES) == set(BLOCK_LINEARS)
