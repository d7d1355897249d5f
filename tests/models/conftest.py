"""Fixtures of the models tests: the byte tokenizer, a tiny Llama config, a factored model, seeded inputs."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.models import byte_tokenizer

from ..tiny_llama import tiny_llama_config
from .tiny_models import RANKS, factor, make_llama


@pytest.fixture(scope="session")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture
def tiny_config(tokenizer) -> LlamaConfig:
    return tiny_llama_config(len(tokenizer), tokenizer, tie_word_embeddings=True)


@pytest.fixture
def lowrank_model(tiny_config) -> LlamaForCausalLM:
    return factor(make_llama(tiny_config), RANKS)


@pytest.fixture
def input_ids(tokenizer) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, len(tokenizer), (2, 11), generator=generator)
