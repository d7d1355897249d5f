"""Fixtures of the models tests: the byte tokenizer, a tiny Llama config, a factored model, seeded inputs."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.models import byte_tokenizer

from .tiny_models import RANKS, factor, make_llama


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def tiny_config(tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture
def lowrank_model(tiny_config) -> LlamaForCausalLM:
    return factor(make_llama(tiny_config), RANKS)


@pytest.fixture
def input_ids(tokenizer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, len(tokenizer), (2, 11), generator=generator)
