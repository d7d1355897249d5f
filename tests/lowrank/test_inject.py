"""Target selection by name patterns, tied heads, and the in-place swap on a tiny Llama."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from basel_app.lowrank import (
    BaselLinear,
    basel_layers,
    count_parameters,
    find_target_linears,
    matches_target,
    reparameterize,
    set_submodule,
    set_trainable,
    untie_from_embedding,
)
from tests.lowrank.helpers import LLAMA_TARGETS, REL_TOL, rel_err

Q0 = "model.layers.0.self_attn.q_proj"


def test_suffix_matching():
    assert matches_target(Q0, ["q_proj"])
    assert matches_target("q_proj", ["q_proj"])
    assert matches_target(Q0, ["self_attn.q_proj"])
    assert not matches_target("model.layers.0.self_attn.xq_proj", ["q_proj"])
    assert not matches_target(Q0, ["proj"])  # suffixes match whole name components only
    assert not matches_target(Q0, ["q_proj"], exclude_modules=["layers.0.self_attn.q_proj"])
    assert matches_target("model.layers.1.self_attn.q_proj", ["q_proj"], exclude_modules=["layers.0.self_attn.q_proj"])


def test_regex_matching():
    pattern = r".*\.(q|v)_proj"
    assert matches_target(Q0, pattern)
    assert matches_target("model.layers.3.self_attn.v_proj", pattern)
    assert not matches_target("model.layers.0.self_attn.k_proj", pattern)
    assert not matches_target("q_proj", r"proj")  # fullmatch, not search
    assert not matches_target(Q0, pattern, exclude_modules=r".*layers\.0\..*")


def test_finds_every_linear_and_no_embedding(llama):
    names = list(find_target_linears(llama, LLAMA_TARGETS))
    assert len(names) == 2 * 7 + 1 and names[-1] == "lm_head"
    assert all(isinstance(llama.get_submodule(n), nn.Linear) for n in names)
    assert not any("embed" in n for n in names)


def test_embedding_is_never_a_target(llama):
    with pytest.raises(ValueError, match="embed_tokens"):
        find_target_linears(llama, ["embed_tokens"])
    assert "model.embed_tokens" not in find_target_linears(llama, r".*")


def test_nothing_matches_is_a_clear_error(llama):
    with pytest.raises(ValueError) as info:
        find_target_linears(llama, ["query_key_value"])
    message = str(info.value)
    assert "query_key_value" in message and Q0 in message


def test_tied_head_skipped_by_default(tied_llama, caplog):
    assert tied_llama.lm_head.weight is tied_llama.get_input_embeddings().weight
    with caplog.at_level(logging.INFO, logger="basel_app.lowrank.inject"):
        names = find_target_linears(tied_llama, LLAMA_TARGETS)
    assert "lm_head" not in names and len(names) == 14
    assert "lm_head" in caplog.text and "tied" in caplog.text
    assert tied_llama.lm_head.weight is tied_llama.get_input_embeddings().weight


def test_tied_head_untied_when_asked(tied_llama, input_ids):
    params = count_parameters(tied_llama)
    with torch.no_grad():
        before = tied_llama(input_ids).logits
    targets = find_target_linears(tied_llama, LLAMA_TARGETS, include_tied_head=True)
    assert "lm_head" in targets
    assert tied_llama.lm_head.weight is tied_llama.get_input_embeddings().weight  # finding changes nothing
    untie_from_embedding(tied_llama, targets)
    assert tied_llama.lm_head.weight is not tied_llama.get_input_embeddings().weight
    assert tied_llama.config.tie_word_embeddings is False
    assert count_parameters(tied_llama) == params + tied_llama.lm_head.weight.numel()
    with torch.no_grad():
        assert rel_err(tied_llama(input_ids).logits, before) < REL_TOL


def test_reparameterized_llama_computes_the_same(llama, input_ids):
    with torch.no_grad():
        before = llama(input_ids).logits
    layers = reparameterize(llama, find_target_linears(llama, LLAMA_TARGETS), additional_dim=8)
    assert set(layers) == set(basel_layers(llama)) and len(layers) == 15
    with torch.no_grad():
        after = llama(input_ids).logits
    assert rel_err(after, before) < REL_TOL


def test_only_trainable_parameters_require_grad(llama):
    reparameterize(llama, find_target_linears(llama, LLAMA_TARGETS), additional_dim=8, free_bases=False)
    set_trainable(llama, [p for layer in basel_layers(llama).values() for p in layer.trainable_parameters()])
    trainable = {id(p) for layer in basel_layers(llama).values() for p in layer.trainable_parameters()}
    assert trainable
    for name, p in llama.named_parameters():
        assert p.requires_grad == (id(p) in trainable), name
    assert not llama.get_input_embeddings().weight.requires_grad


def test_free_bases_train_u_and_v(llama):
    reparameterize(llama, find_target_linears(llama, ["q_proj"]), additional_dim=0, free_bases=True)
    set_trainable(llama, [p for layer in basel_layers(llama).values() for p in layer.trainable_parameters()])
    layer = llama.get_submodule(Q0)
    assert isinstance(layer, BaselLinear) and layer.U.requires_grad and layer.V.requires_grad
    assert not llama.get_submodule("model.layers.0.self_attn.k_proj").weight.requires_grad


def test_seed_fixes_the_extra_factor():
    from tests.lowrank.helpers import tiny_llama

    a, b = tiny_llama(), tiny_llama()
    reparameterize(a, find_target_linears(a, ["v_proj"]), additional_dim=4, seed=7)
    reparameterize(b, find_target_linears(b, ["v_proj"]), additional_dim=4, seed=7)
    name = "model.layers.1.self_attn.v_proj"
    assert torch.equal(a.get_submodule(name).extra_v, b.get_submodule(name).extra_v)


def test_set_submodule(llama):
    replacement = nn.Identity()
    set_submodule(llama, "model.layers.0.mlp", replacement)
    assert llama.model.layers[0].mlp is replacement
    with pytest.raises(AttributeError):
        set_submodule(llama, "model.layers.0.nonexistent", nn.Identity())
    with pytest.raises(ValueError):
        set_submodule(llama, "", nn.Identity())
