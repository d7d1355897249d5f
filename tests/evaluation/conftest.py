"""The byte-level tokenizer the evaluation tests' tiny Llamas read and write."""

from __future__ import annotations

import pytest

from basel_app.models import byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()
