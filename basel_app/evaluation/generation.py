"""Batched greedy decoding for evaluation: left padding, an attention mask, stop tokens and stop strings.

::

    batch of prompts (token ids)          left-padded input_ids                 attention_mask
    [p0 p1 p2 p3]                         [p0 p1 p2 p3]                         [1 1 1 1]
    [q0 q1]                     ──►       [pad pad q0 q1]              +        [0 0 1 1]
                                          every row's next token is predicted at the same (last) column

Left padding puts every prompt's last token in the last column, so one forward step extends every row;
the mask keeps pads out of attention and Llama derives positions from it (a padded row's prompt starts at
position 0, exactly as unpadded). Pad = the tokenizer's pad token, or eos when it has none — harmless only
*because* of the mask (pad = eos without a mask halved GSM8K scores in other tools).

Decoding is ``model.generate(do_sample=False, num_beams=1)`` with the KV cache: it owns the
version-specific cache and position plumbing (transformers renames those arguments between releases). The
cache is *dynamic* by default; ``cache="static"`` preallocates it once per batch for prompt +
``max_new_tokens`` positions and writes in place, where the dynamic cache grows by a ``torch.cat`` of every
layer's keys and values at every step. The static cache's unused slots are masked out of attention; in
float32 its tokens were the dynamic cache's in every comparison (tests/evaluation/test_generation.py on a
random Llama; docs/BENCHMARKS.md, "Costs", on SmolLM2), but it paid only in float32 at 256 new tokens
(1.19x) and was slower under bf16 autocast, this CPU's default. Precision is the caller's: evaluation wraps generation in the trainer's forward
context with autocast's weight-cast cache on (``lit.trainer.inference_forward_context``), i.e. bf16 autocast
under bf16-mixed. Autocast caches the bf16 copy of a weight only if the weight requires grad, so a frozen
model (a distillation teacher, one post-fine-tuned with ``post_finetune_params=lowrank``) would still be
cast anew at every decoding step; decoding therefore marks the floating-point weights as requiring grad for
the call (:func:`weights_cast_once`; no gradient is ever taken, and the flags are restored). One
thing is pinned by hand: ``generate`` fills every option we leave unset from the checkpoint's
``generation_config.json`` (repetition penalty, ``min_new_tokens``, suppressed tokens, ...), which would
silently turn "greedy" into something checkpoint-specific. During the call the model's generation config is
swapped for a blank one, so decoding is the plain argmax, whatever checkpoint is loaded.

Greedy results depend on the batch size: padding changes the shapes of the matrix products, and floating
point sums in another order can flip a near-tie argmax (on GPUs in bf16 this happens within a few hundred
tokens). The batch size is therefore an explicit argument; record it with every score, and keep it fixed
when comparing methods. Batches are consecutive slices of ``prompts`` in the given order (no length
sorting), so which prompts share a batch is reproducible from the list alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from basel_app.modes import eval_mode

log = logging.getLogger(__name__)

# Special tokens that end an assistant turn in common Llama-family chat formats; used as stop tokens when
# the tokenizer has them (as single special tokens), in addition to eos and the checkpoint's eos ids.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "</s>")
# KV caches `generate_greedy` can decode with (transformers' `cache_implementation` names).
CACHES = ("static", "dynamic")


def default_stop_token_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """eos, the checkpoint's ``generation_config.eos_token_id`` (int or list) and known end-of-turn tokens."""
    ids: list[int] = []

    def add(value: Any) -> None:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))

    add(tokenizer.eos_token_id)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        add(generation_config.eos_token_id)
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", [])) | set(getattr(tokenizer, "added_tokens_encoder", {}))
    for token in END_OF_TURN_TOKENS:
        if token in vocab and token in special:
            add(vocab[token])
    if not ids:
        raise ValueError("the tokenizer has no eos token and no stop_token_ids were given; pass stop_token_ids")
    return ids


class _StopOnStrings(StoppingCriteria):
    """Marks a row done once the text it generated (after ``prompt_len``) contains any stop string."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str], prompt_len: int) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [any(stop in text for stop in self.stop_strings) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def truncate_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0), default=len(text))
    return text[:cut]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape (B, T_max), prompts right-aligned, mask 0 on the pads."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            input_ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
            attention_mask[row, width - len(prompt) :] = 1
    return input_ids.to(device), attention_mask.to(device)


@contextmanager
def weights_cast_once(model: nn.Module) -> Iterator[None]:
    """Under autocast, cast each floating-point weight once for the block, not at every forward.

    Autocast caches a weight's low-precision copy only for leaf tensors that require grad; this sets the flag
    on those that lack it and clears it again afterwards. The cache costs a low-precision copy of the weights
    for the block, as it does for trainable weights in training. Outside autocast it does nothing.
    """
    frozen = []
    if torch.is_autocast_enabled(next(model.parameters()).device.type):
        frozen = [p for p in model.parameters() if p.is_floating_point() and not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


@dataclass(frozen=True)
class GreedyDecoding:
    """The texts of one ``decode_greedy`` call and what decoding them cost.

    ``decode_steps`` counts the forward steps after the prompt, summed over batches: a batch steps until its
    last row stops, so it exceeds ``new_tokens`` (each row's tokens up to its stop) by what early-stopping rows
    wait. Seconds per step compares models; steps per new token says how much waiting the batching costs.
    """

    texts: list[str]
    decode_steps: int
    new_tokens: int


def generate_greedy(model: nn.Module, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                    stop_strings: Sequence[str] = (), stop_token_ids: Sequence[int] | None = None, *,
                    cache: str = "dynamic", show_progress: bool = True) -> list[str]:
    """The texts of :func:`decode_greedy`."""
    return decode_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, stop_strings, stop_token_ids,
                         cache=cache, show_progress=show_progress).texts


@torch.no_grad()
def decode_greedy(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    batch_size: int,
    stop_strings: Sequence[str] = (),
    stop_token_ids: Sequence[int] | None = None,
    *,
    cache: str = "dynamic",
    show_progress: bool = True,
) -> GreedyDecoding:
    """Greedy continuations of ``prompts`` (token ids, e.g. ``Task.prompt_ids``), one string per prompt, in order.

    Each text is the decoded new tokens only (special tokens skipped), ending before the first stop token
    (``stop_token_ids``, default :func:`default_stop_token_ids`) and cut before the first stop string; at
    most ``max_new_tokens`` tokens. The text is not stripped. ``batch_size`` prompts are decoded together,
    left-padded; results can depend on it (module docstring), so callers record it. ``cache`` is one of
    :data:`CACHES`: ``dynamic`` (measured faster under bf16 autocast here) or ``static``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not allowed; it must be >= 1")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} is not allowed; it must be >= 1")
    if cache not in CACHES:
        raise ValueError(f"cache={cache!r} is not allowed; it must be one of {', '.join(CACHES)}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (use Task.prompt_ids to build them)")
    if not prompts:
        return GreedyDecoding([], 0, 0)
    stop_ids = list(stop_token_ids) if stop_token_ids is not None else default_stop_token_ids(model, tokenizer)
    if not stop_ids:
        raise ValueError("stop_token_ids is empty; pass at least the eos id, or None for the defaults")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    greedy = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        use_cache=True,
        cache_implementation=cache,
    )

    checkpoint_config = getattr(model, "generation_config", None)
    model.generation_config = GenerationConfig()  # nothing of the checkpoint's decoding defaults leaks in
    texts: list[str] = []
    decode_steps = new_tokens = 0
    try:
        with eval_mode(model), weights_cast_once(model):
            starts = range(0, len(prompts), batch_size)
            for start in tqdm(starts, desc="generate", unit="batch", disable=not show_progress):
                batch = prompts[start : start + batch_size]
                input_ids, attention_mask = left_pad(batch, pad_id, device)
                criteria = StoppingCriteriaList(
                    [_StopOnStrings(tokenizer, stop_strings, input_ids.shape[1])] if stop_strings else []
                )
                output = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=greedy,
                    stopping_criteria=criteria,
                )
                generated = output[:, input_ids.shape[1] :].tolist()
                decode_steps += len(generated[0])
                for row in generated:
                    end = _stop_index(row, stop_ids)
                    new_tokens += _stop_index(row[:end], [pad_id])  # a row stopped by a stop string is padded
                    texts.append(_decode_new_tokens(tokenizer, row[:end], stop_strings))
    finally:
        model.generation_config = checkpoint_config
    return GreedyDecoding(texts, decode_steps, new_tokens)


def _stop_index(new_ids: list[int], stop_ids: Sequence[int]) -> int:
    """Where one row's generated ids end: its first stop token, or its length."""
    stops = set(stop_ids)
    return next((i for i, token in enumerate(new_ids) if token in stops), len(new_ids))


def _decode_new_tokens(tokenizer: Any, new_ids: list[int], stop_strings: Sequence[str]) -> str:
    """Text of one row's generated ids (up to its stop token), cut at the first stop string."""
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    return truncate_at_stop_strings(text, stop_strings) if stop_strings else text
