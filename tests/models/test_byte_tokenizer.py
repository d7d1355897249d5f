"""The byte tokenizer of the tiny random model: lossless on any text, ChatML chat template, saves and reloads."""

from __future__ import annotations

import random

import pytest
from transformers import AutoTokenizer


def random_text(seed: int, length: int = 200) -> str:
    """Mixed scripts, emoji, whitespace and control characters (no surrogates)."""
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x0400, 0x04FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF)]
    return "".join(chr(rng.randint(*rng.choice(pools))) for _ in range(length))


@pytest.mark.parametrize("seed", range(5))
def test_decode_encode_is_identity_on_unicode(tokenizer, seed):
    text = random_text(seed)
    ids = tokenizer.encode(text)
    assert ids == list(text.encode("utf-8"))  # one token per byte, id == byte value
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_distinct_and_outside_the_bytes(tokenizer):
    special = [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
               tokenizer.convert_tokens_to_ids("<|im_start|>")]
    assert len(set(special)) == len(special) and min(special) >= 256
    assert tokenizer.eos_token == "<|im_end|>"  # a chat turn ends generation
    assert tokenizer.decode([tokenizer.eos_token_id], skip_special_tokens=True) == ""


def test_chat_template_is_chatml(tokenizer):
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids) == prompt


def test_save_and_reload(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = random_text(99)
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.decode(reloaded.encode(text)) == text
    assert reloaded.chat_template == tokenizer.chat_template
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == (
        tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert len(reloaded) == len(tokenizer)


def test_batch_padding_uses_the_pad_token(tokenizer):
    batch = tokenizer(["a", "abc"], padding=True)
    assert batch["input_ids"][0] == [ord("a"), tokenizer.pad_token_id, tokenizer.pad_token_id]
    assert batch["attention_mask"][0] == [1, 0, 0]
