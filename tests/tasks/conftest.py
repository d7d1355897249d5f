"""Fixtures for the task tests: byte-level tokenizers with and without a chat template, and task configs
shaped like ``TaskConfig``."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from tests.tasks.helpers import CHATML, make_byte_tokenizer, task_cfg


@pytest.fixture(scope="session")
def plain_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer()


@pytest.fixture(scope="session")
def chat_tokenizer() -> PreTrainedTokenizerFast:
    return make_byte_tokenizer(CHATML, eos="<|im_end|>")


@pytest.fixture
def make_cfg():
    return task_cfg
