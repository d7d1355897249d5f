"""Fixtures for the low-rank core: a seeded generator, fresh random token ids, tiny Llamas."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.lowrank.helpers import tiny_llama


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def llama() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture
def tied_llama() -> LlamaForCausalLM:
    return tiny_llama(tie_word_embeddings=True)


@pytest.fixture
def input_ids(gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 128, (2, 12), generator=gen)
