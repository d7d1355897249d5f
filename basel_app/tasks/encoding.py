"""Turning a (prompt, response) pair into token ids with the loss only on the response.

::

    input_ids: [ p0 p1 ... p_{P-1} | r0 r1 ... r_{R-1} <eos/end-of-turn> ]
    labels:    [ -100 ...     -100 | r0 r1 ... r_{R-1} <eos/end-of-turn> ]

Two formats, chosen by the tokenizer:

- **chat template** (instruct tokenizers): prompt ids are
  ``apply_chat_template([system?, user], add_generation_prompt=True)`` and the full ids are
  ``apply_chat_template([system?, user, assistant])``; the response is whatever the full sequence adds
  after the prompt (the answer plus the template's end-of-turn token, which is therefore trained). If the
  full sequence does not start with the prompt ids (a template that rewrites earlier turns), we fall back
  to ``prompt ids + encode(response) + eos``.
- **plain** (base tokenizers): the text is ``"Question: {prompt}\\nAnswer: " + response + eos``. The
  prompt is tokenized as ``"Question: {prompt}\\nAnswer:"`` and the space goes with the response, so a
  byte-level BPE sees ``" 48"`` as it would in running text (a prompt ending in a lone space token is a
  tokenization the model rarely saw in pre-training). The text is identical either way.

The tokenizer's eos is appended when the response does not already contain it, so the model learns to
stop. Truncation cuts the end of the response (a truncated response gets no eos: it did not end); when the
prompt leaves fewer than :data:`MIN_RESPONSE_TOKENS` response tokens the example is skipped (``None``).
Generation must use :func:`prompt_ids` so that evaluation sees exactly the training prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and HF models) ignore
MIN_RESPONSE_TOKENS = 4  # fewer response tokens than this after truncation: skip the example
PLAIN_TEMPLATE = "Question: {prompt}\nAnswer:"
PLAIN_RESPONSE_PREFIX = " "


def _as_ids(output: Any) -> list[int]:
    """Normalize what ``apply_chat_template``/``__call__`` return to a flat ``list[int]``.

    transformers 5 returns a ``BatchEncoding`` (``return_dict=True`` by default); older releases return a
    list; a batch of one may come back nested.
    """
    if isinstance(output, Mapping) or hasattr(output, "input_ids"):
        output = output["input_ids"]
    if hasattr(output, "tolist"):
        output = output.tolist()
    output = list(output)
    if output and isinstance(output[0], (list, tuple)):
        if len(output) != 1:
            raise ValueError(f"expected token ids of one sequence, got a batch of {len(output)}")
        output = list(output[0])
    return [int(i) for i in output]


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}]


def _plain_prompt_text(prompt: str, system_prompt: str | None, template: str) -> str:
    text = template.format(prompt=prompt)
    return f"{system_prompt}\n\n{text}" if system_prompt else text


def _encode_text(tokenizer: PreTrainedTokenizerBase, text: str, special: bool) -> list[int]:
    ids = _as_ids(tokenizer(text, add_special_tokens=special))
    # A few tokenizers append eos with add_special_tokens=True; a prompt must not end the sequence.
    if special and ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    system_prompt: str | None = None,
    plain_template: str = PLAIN_TEMPLATE,
) -> list[int]:
    """Token ids of the prompt exactly as training sees it (use these to generate an answer)."""
    if has_chat_template(tokenizer):
        return _as_ids(
            tokenizer.apply_chat_template(_messages(prompt, system_prompt), add_generation_prompt=True, tokenize=True)
        )
    return _encode_text(tokenizer, _plain_prompt_text(prompt, system_prompt, plain_template), special=True)


def _response_ids(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    system_prompt: str | None,
    plain_template: str,
    head: list[int],
) -> list[int]:
    """The ids that follow ``head`` (the prompt ids) in the full sequence, eos not yet ensured."""
    if has_chat_template(tokenizer):
        messages = _messages(prompt, system_prompt) + [{"role": "assistant", "content": response}]
        full = _as_ids(tokenizer.apply_chat_template(messages, tokenize=True))
        fallback_text = response
    else:
        text = _plain_prompt_text(prompt, system_prompt, plain_template) + PLAIN_RESPONSE_PREFIX + response
        full = _encode_text(tokenizer, text, special=True)
        fallback_text = PLAIN_RESPONSE_PREFIX + response
    if len(full) > len(head) and full[: len(head)] == head:
        return full[len(head) :]
    # The tokenizer merged across the prompt/response boundary or the template rewrote the prompt.
    return _encode_text(tokenizer, fallback_text, special=False)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    response: str,
    max_length: int,
    system_prompt: str | None = None,
    plain_template: str = PLAIN_TEMPLATE,
) -> dict[str, list[int]] | None:
    """Token ids and labels of one example, or ``None`` if the prompt leaves no room for the response.

    Returns ``{"input_ids": [...], "labels": [...]}`` of equal length ``<= max_length``; labels are
    :data:`IGNORE_INDEX` on every prompt token and equal to ``input_ids`` on the response tokens.
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length} is not allowed; it must be >= 1")
    head = prompt_ids(tokenizer, prompt, system_prompt, plain_template)
    tail = _response_ids(tokenizer, prompt, response, system_prompt, plain_template, head)
    eos = tokenizer.eos_token_id
    if eos is not None and eos not in tail:
        tail = tail + [eos]
    room = max_length - len(head)
    if room < min(MIN_RESPONSE_TOKENS, len(tail)):
        return None
    tail = tail[:room]
    return {"input_ids": head + tail, "labels": [IGNORE_INDEX] * len(head) + tail}


def response_span(labels: Sequence[int]) -> list[int]:
    """The labeled (trained) ids of an encoded example — handy for checks and tests."""
    return [i for i in labels if i != IGNORE_INDEX]
