"""The registered compressed architecture: config validation, module replacement, Auto-class registration."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from torch import nn

from basel_app.lowrank.thin import LowRankLinear
from basel_app.models import LowRankLlamaConfig, LowRankLlamaForCausalLM, register_with_transformers

from .tiny_models import RANKS


def lowrank_config(tiny_config, ranks, **overrides) -> LowRankLlamaConfig:
    return LowRankLlamaConfig(**{**tiny_config.to_dict(), "lowrank_ranks": ranks, **overrides})


@pytest.mark.parametrize("attention_bias", [False, True])
def test_listed_linears_become_lowrank_with_same_shapes(tiny_config, attention_bias):
    model = LowRankLlamaForCausalLM(lowrank_config(tiny_config, RANKS, attention_bias=attention_bias))
    for name, module in model.named_modules():
        if name in RANKS:
            assert isinstance(module, LowRankLinear) and module.rank == RANKS[name]
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    k = model.get_submodule("model.layers.1.self_attn.k_proj")
    assert (q.in_features, q.out_features, q.up.bias is not None) == (64, 64, attention_bias)
    assert (k.in_features, k.out_features) == (64, 32)  # GQA: 2 KV heads x 16
    assert isinstance(model.get_submodule("model.layers.1.self_attn.q_proj"), nn.Linear)  # unlisted stays dense
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = model(torch.randint(0, tiny_config.vocab_size, (1, 5))).logits
    assert out.shape == (1, 5, tiny_config.vocab_size) and torch.isfinite(out).all()


def test_config_rejects_bad_ranks_and_a_tied_factored_head(tiny_config):
    with pytest.raises(ValueError, match=">= 1"):
        lowrank_config(tiny_config, {"model.layers.0.self_attn.q_proj": 0})
    with pytest.raises(ValueError, match="tie_word_embeddings=False"):
        lowrank_config(tiny_config, {"lm_head": 4})
    with pytest.raises(ValueError, match="not a module"):
        LowRankLlamaForCausalLM(lowrank_config(tiny_config, {"model.layers.7.mlp.up_proj": 4}))
    with pytest.raises(ValueError, match="only nn.Linear"):
        LowRankLlamaForCausalLM(lowrank_config(tiny_config, {"model.norm": 4}))


def test_config_round_trips_through_json(tmp_path, tiny_config):
    lowrank_config(tiny_config, RANKS).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is LowRankLlamaConfig and loaded.lowrank_ranks == RANKS


def test_registration_is_idempotent(tiny_config):
    register_with_transformers()
    register_with_transformers()
    model = AutoModelForCausalLM.from_config(lowrank_config(tiny_config, RANKS))
    assert type(model) is LowRankLlamaForCausalLM


def test_no_tensor_parallel_plan_for_factored_modules(tiny_config):
    model = LowRankLlamaForCausalLM(lowrank_config(tiny_config, RANKS))
    assert not model.tp_plan  # a Linear plan applied to LowRankLinear would shard it wrongly
