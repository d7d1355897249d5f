"""The tiny Llama shape every test folder builds on: hidden 64, 2 layers, 4 query heads sharing 2 KV heads
(so k/v_proj are 32x64, as GQA makes them in real Llamas)."""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig


def tiny_llama_config(vocab_size: int, tokenizer: Any = None, **overrides: Any) -> LlamaConfig:
    """`tokenizer`, when given, supplies the bos/eos/pad ids; `overrides` change any LlamaConfig field."""
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if tokenizer is not None:
        fields.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    return LlamaConfig(**{**fields, **overrides})
