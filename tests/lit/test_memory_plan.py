"""The FSDP memory plan: its meta-device counts are the bytes of the real model on a tiny Llama, and Llama-2-13B
on 16 ranks fits 80 GB GPUs and the stated host RAM in every phase."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.lit.memory_plan import (
    GPU_BYTES,
    HEADROOM,
    RANK_ZERO_HOST_BYTES,
    RunShape,
    llama2_13b,
    memory_plan,
    svd_workspace_bytes,
)
from basel_app.lowrank import find_target_linears, reparameterize, state_bytes

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_the_meta_counts_are_the_bytes_of_the_real_model():
    config = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=100, tie_word_embeddings=False)
    plan = {p.name: p for p in memory_plan(config, RunShape(world_size=2, additional_dim=4, distill=False))}
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)  # random weights: every layer has full numerical rank, as the plan assumes
    assert plan["load"].host_zero == state_bytes(model)
    targets = find_target_linears(model, LINEARS)
    dense_targets = sum(state_bytes(linear) for linear in targets.values())
    reparameterize(model, targets, additional_dim=4)
    reparameterised = dense_targets + state_bytes(model) + svd_workspace_bytes(48, 32)
    assert plan["reparameterise (init=svd)"].host_zero == reparameterised


def test_llama2_13b_on_16_ranks_fits_80gb_gpus_and_rank_zeros_host_in_every_phase():
    plan = memory_plan(llama2_13b(), RunShape(world_size=16))
    phases = {p.name: p for p in plan}
    assert phases["load"].host_zero == 13_015_864_320 * 4  # Llama-2-13B's parameters, in float32
    assert list(phases) == ["load", "reparameterise (init=svd)", "reparameterise (init=whitened)", "train (stage 1)",
                            "recompose", "post-finetune (stage 2)", "save", "factorise (SVD-LLM)", "truncate (SVD-LLM)"]
    for phase in plan:
        assert phase.gpu <= HEADROOM * GPU_BYTES, phase
        assert phase.host_zero <= RANK_ZERO_HOST_BYTES, phase
        assert phase.host_other == 0, phase  # the other ranks hold the meta replica between stages
    # Training is where the GPUs fill: the shards of 82 GB of reparameterised fp32 weights, 2 whole layers,
    # the teacher's shards and the activations.
    assert 10e9 < phases["train (stage 1)"].gpu < 40e9


def test_fewer_ranks_hold_more_each():
    eight, sixteen = ({p.name: p for p in memory_plan(llama2_13b(), RunShape(world_size=w))}["train (stage 1)"].gpu
                      for w in (8, 16))
    assert eight > sixteen
