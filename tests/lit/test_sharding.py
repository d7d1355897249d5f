"""FSDP's stage bookends on one process: the meta replica costs no memory, and consolidating a model into it
gives back the same model (tied weights tied, non-persistent buffers filled). Sharded, on 2 processes, they
are exercised end to end by tests/distributed/test_fsdp_pipeline.py."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.lit.sharding import consolidate, decoder_layers, meta_replica
from basel_app.lowrank import basel_layers, find_target_linears, reparameterize


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    reparameterize(model, find_target_linears(model, ["q_proj", "down_proj"]), 4)
    layer = next(iter(basel_layers(model).values()))
    layer.prune(torch.arange(layer.keep_mask.numel()) % 3 != 0)  # a mask that is not all ones
    return model


def test_consolidating_into_the_meta_replica_rebuilds_the_same_model_with_its_ties():
    model = tiny_model()
    blueprint = meta_replica(model)
    assert all(t.is_meta for t in [*blueprint.parameters(), *blueprint.buffers()])
    assert all(not t.is_meta for t in model.parameters())  # the original is untouched
    rebuilt = consolidate(model, blueprint)
    assert rebuilt.lm_head.weight is rebuilt.model.embed_tokens.weight
    assert [layer.kept_rank for layer in basel_layers(rebuilt).values()] == \
           [layer.kept_rank for layer in basel_layers(model).values()]
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_only_a_causal_lm_with_decoder_layers_can_be_sharded():
    assert len(decoder_layers(tiny_model())) == 2
    with pytest.raises(TypeError, match="model.layers"):
        decoder_layers(torch.nn.Linear(2, 2))
