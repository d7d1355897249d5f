"""Encoding (prompt, response) into ids: loss exactly on the response, eos trained, truncation."""

from __future__ import annotations

import pytest
import torch
from transformers import BatchEncoding

from basel_app.tasks import build_task
from basel_app.tasks.encoding import IGNORE_INDEX, MIN_RESPONSE_TOKENS, _as_ids, encode_example, prompt_ids
from tests.tasks.helpers import CHATML, make_byte_tokenizer, task_cfg

PROMPT = "What is 6 times 7?"
RESPONSE = "6 * 7 = 42\n#### 42"


def split(example):
    labels = example["labels"]
    n_prompt = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    return n_prompt, example["input_ids"][n_prompt:]


def check_labels(example, tokenizer, prompt, system_prompt=None):
    head = prompt_ids(tokenizer, prompt, system_prompt)
    n_prompt, response_ids = split(example)
    assert n_prompt == len(head) and example["input_ids"][:n_prompt] == head
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert example["labels"][n_prompt:] == response_ids
    assert len(example["input_ids"]) == len(example["labels"])
    return tokenizer.decode(response_ids)


def test_plain_format(plain_tokenizer):
    example = encode_example(plain_tokenizer, PROMPT, RESPONSE, max_length=256)
    assert plain_tokenizer.decode(example["input_ids"]) == f"Question: {PROMPT}\nAnswer: {RESPONSE}<|endoftext|>"
    assert check_labels(example, plain_tokenizer, PROMPT) == f" {RESPONSE}<|endoftext|>"
    assert example["labels"][-1] == plain_tokenizer.eos_token_id


def test_plain_format_with_bos_and_system_prompt():
    tokenizer = make_byte_tokenizer(bos=True)
    example = encode_example(tokenizer, PROMPT, RESPONSE, max_length=256, system_prompt="Be brief.")
    assert example["input_ids"][0] == tokenizer.bos_token_id
    assert example["input_ids"].count(tokenizer.bos_token_id) == 1
    text = tokenizer.decode(example["input_ids"])
    assert text == f"<s>Be brief.\n\nQuestion: {PROMPT}\nAnswer: {RESPONSE}<|endoftext|>"
    assert check_labels(example, tokenizer, PROMPT, "Be brief.") == f" {RESPONSE}<|endoftext|>"


def test_chat_template_trains_the_end_of_turn(chat_tokenizer):
    example = encode_example(chat_tokenizer, PROMPT, RESPONSE, max_length=256, system_prompt="Be brief.")
    text = chat_tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    assert check_labels(example, chat_tokenizer, PROMPT, "Be brief.") == f"{RESPONSE}<|im_end|>\n"
    assert chat_tokenizer.eos_token_id in split(example)[1]


def test_chat_template_with_other_eos_appends_eos():
    tokenizer = make_byte_tokenizer(CHATML, eos="<|endoftext|>")
    example = encode_example(tokenizer, PROMPT, RESPONSE, max_length=256)
    assert check_labels(example, tokenizer, PROMPT) == f"{RESPONSE}<|im_end|>\n<|endoftext|>"


def test_template_that_rewrites_the_prompt_falls_back():
    # the last assistant turn is rendered without the generation prompt: full ids do not extend prompt ids
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}[A]{{ m['content'] }}"
        "{% else %}<{{ m['role'] }}>{{ m['content'] }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer = make_byte_tokenizer(template)
    example = encode_example(tokenizer, PROMPT, RESPONSE, max_length=256)
    assert tokenizer.decode(example["input_ids"]) == f"<user>{PROMPT}<assistant>{RESPONSE}<|endoftext|>"
    assert check_labels(example, tokenizer, PROMPT) == f"{RESPONSE}<|endoftext|>"


@pytest.mark.parametrize("fixture", ["plain_tokenizer", "chat_tokenizer"])
def test_truncation_cuts_the_response_end(request, fixture):
    tokenizer = request.getfixturevalue(fixture)
    full = encode_example(tokenizer, PROMPT, RESPONSE, max_length=1024)
    n_prompt, _ = split(full)
    cut = encode_example(tokenizer, PROMPT, RESPONSE, max_length=n_prompt + 7)
    assert len(cut["input_ids"]) == n_prompt + 7
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 7]
    assert cut["labels"] == full["labels"][: n_prompt + 7]
    # the prompt must leave MIN_RESPONSE_TOKENS for the answer, else the example is skipped
    assert encode_example(tokenizer, PROMPT, RESPONSE, max_length=n_prompt + MIN_RESPONSE_TOKENS) is not None
    assert encode_example(tokenizer, PROMPT, RESPONSE, max_length=n_prompt + MIN_RESPONSE_TOKENS - 1) is None
    assert encode_example(tokenizer, PROMPT, RESPONSE, max_length=n_prompt // 2) is None


def test_as_ids_accepts_every_return_shape():
    ids = [5, 6, 7]
    assert _as_ids(ids) == ids
    assert _as_ids([ids]) == ids
    assert _as_ids(torch.tensor([ids])) == ids
    assert _as_ids(BatchEncoding({"input_ids": ids, "attention_mask": [1, 1, 1]})) == ids
    assert _as_ids({"input_ids": [ids]}) == ids
    with pytest.raises(ValueError, match="batch of 2"):
        _as_ids([ids, ids])


@pytest.mark.parametrize("fixture", ["plain_tokenizer", "chat_tokenizer"])
def test_real_gsm8k_record(request, fixture):
    tokenizer = request.getfixturevalue(fixture)
    task = build_task(task_cfg(system_prompt="Solve step by step."))
    record = task.load_eval_records()[0]
    example = task.encode(tokenizer, record, max_length=2048)
    _, response = task.to_example(record)
    decoded = check_labels(example, tokenizer, task.to_example(record)[0], "Solve step by step.")
    assert response in decoded and "<<" not in decoded and decoded.rstrip().endswith(
        tokenizer.eos_token
    )
    assert task.prompt_ids(tokenizer, record) == example["input_ids"][: split(example)[0]]
