"""Sliding-window perplexity: the window arithmetic, and the value against an independent loop.

The independent computation is the Hugging Face "perplexity of fixed-length models" loop, written here from
scratch: each window is fed with ``labels`` (the overlap masked with -100) and the model's own mean loss is
scaled back to a sum. The project's code instead gathers next-token logits and sums float64 log-probabilities
with torchmetrics. One tolerance for the tiny model: 1e-6 relative.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from basel_app.evaluation.perplexity import (
    _ARTICLE_START,
    sliding_windows,
    stream_perplexity,
    tokenize_stream,
    wikitext_perplexity,
)
from basel_app.models import byte_tokenizer
from basel_app.tasks.lm import wikitext_test_text
from tests.tasks.helpers import make_byte_tokenizer

REL = 1e-6


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tokenizer) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def excerpt() -> str:
    """The start of the packaged WikiText-2 test split: 1,201 bytes, two articles' worth of structure."""
    text = wikitext_test_text()
    return text[:1201]


def reference_nll_sum(model, ids: torch.Tensor, context_length: int, stride: int) -> tuple[float, int]:
    """Σ −log p over every token after the first, by the HF loop over windows of context_length + 1 ids."""
    n = ids.numel()
    total, count, scored_up_to = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + context_length + 1, n)  # the last id is only a target
        chunk = ids[begin:end].unsqueeze(0)
        labels = chunk.clone()
        labels[:, : scored_up_to + 1 - begin] = -100  # already scored (or x_0, which has no context)
        with torch.no_grad():
            loss = model(input_ids=chunk, labels=labels).loss  # mean over the unmasked shifted labels
        new = int((labels[:, 1:] != -100).sum())
        total += loss.item() * new
        count += new
        scored_up_to = end - 1
        if end == n:
            break
    return total, count


@pytest.mark.parametrize(("n", "context", "stride"), [(2, 4, 4), (17, 4, 4), (17, 4, 1), (100, 16, 5), (33, 8, 8)])
def test_every_token_after_the_first_is_scored_exactly_once(n, context, stride):
    windows = sliding_windows(n, context, stride)
    scored = [t for w in windows for t in range(w.first_scored, w.end + 1)]
    assert scored == list(range(1, n))  # each target once, in order
    for w in windows:
        assert 0 < w.end - w.begin <= context and w.begin <= w.first_scored - 1  # its context is in the window
        # every scored token sees at least context - stride earlier tokens (all of them in window 0)
        assert w.first_scored - w.begin >= min(w.first_scored, context - stride + 1)


def test_stride_equal_to_context_gives_non_overlapping_windows():
    windows = sliding_windows(30, 8, 8)
    assert [(w.begin, w.end) for w in windows] == [(0, 8), (8, 16), (16, 24), (24, 29)]
    assert all(w.first_scored == w.begin + 1 for w in windows)  # a window scores all of its own next tokens


@pytest.mark.parametrize(("context", "stride"), [(8, 9), (8, 0), (0, 1)])
def test_bad_context_or_stride_is_refused(context, stride):
    with pytest.raises(ValueError, match="is not allowed"):
        sliding_windows(100, context, stride)


def test_stride_equal_to_context_is_plain_chunked_evaluation(tiny_model, tokenizer, excerpt):
    ids = torch.tensor(tokenize_stream(tokenizer, excerpt))
    context = 64
    result = stream_perplexity(tiny_model, ids, context, context, progress=False)
    # plain evaluation: consecutive chunks of context + 1 ids, each scoring its own next tokens
    total, count = 0.0, 0
    for begin in range(0, ids.numel() - 1, context):
        chunk = ids[begin : begin + context + 1].unsqueeze(0)
        with torch.no_grad():
            total += tiny_model(input_ids=chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
        count += chunk.shape[1] - 1
    assert result["tokens"] == count == ids.numel() - 1
    assert result["windows"] == result["total_windows"] == math.ceil((ids.numel() - 1) / context)
    assert result["nll_sum"] == pytest.approx(total, rel=REL)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=REL)


@pytest.mark.parametrize(("context", "stride", "batch_size"), [(64, 16, 1), (64, 16, 4), (100, 37, 3), (32, 32, 5)])
def test_matches_the_independent_loop(tiny_model, tokenizer, excerpt, context, stride, batch_size):
    result = wikitext_perplexity(tiny_model, tokenizer, excerpt, context, stride, batch_size=batch_size)
    ids = torch.tensor(tokenizer(excerpt)["input_ids"])  # the whole excerpt at once: a different route
    total, count = reference_nll_sum(tiny_model, ids, context, stride)
    assert result["stream_tokens"] == ids.numel() and result["tokens"] == count == ids.numel() - 1
    assert (result["context_length"], result["stride"], result["batch_size"]) == (context, stride, batch_size)
    assert result["nll"] == pytest.approx(total / count, rel=REL)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=REL)


def test_max_windows_scores_a_prefix(tiny_model, tokenizer, excerpt):
    result = wikitext_perplexity(tiny_model, tokenizer, excerpt, 64, 32, max_windows=5)
    assert (result["windows"], result["tokens"]) == (5, 64 + 4 * 32)
    assert result["total_windows"] > 5
    prefix = torch.tensor(tokenize_stream(tokenizer, excerpt)[: 64 + 4 * 32 + 1])
    total, count = reference_nll_sum(tiny_model, prefix, 64, 32)
    assert count == result["tokens"] and result["nll_sum"] == pytest.approx(total, rel=REL)


def test_training_mode_is_restored(tiny_model, tokenizer, excerpt):
    tiny_model.train()
    try:
        wikitext_perplexity(tiny_model, tokenizer, excerpt[:200], 32, 32)
        assert tiny_model.training
    finally:
        tiny_model.eval()


def test_stream_is_per_article_ids_with_the_special_prefix():
    full = wikitext_test_text()
    second = full.index("\n = Du Fu = \n")  # the second article of the test split
    text = full[second - 3000 : second + 3000]
    assert len(_ARTICLE_START.split(text)) == 2  # the excerpt spans an article boundary
    plain = make_byte_tokenizer()
    assert tokenize_stream(plain, text) == plain(text, add_special_tokens=False)["input_ids"]
    with_bos = make_byte_tokenizer(bos=True)
    stream = tokenize_stream(with_bos, text)
    assert stream[0] == with_bos.convert_tokens_to_ids("<s>") and stream.count(stream[0]) == 1
    assert stream == with_bos(text)["input_ids"]  # one BOS for the stream, as whole-text tokenization gives


@pytest.mark.slow
def test_smollm2_wikitext2_matches_the_independent_loop(model_cache):
    """SmolLM2-135M on the first 10 windows of WikiText-2 test (context 512, stride 256): about 60 s on 2 cores."""
    from omegaconf import OmegaConf

    from basel_app.config.schema import ModelConfig
    from basel_app.models import load_model

    loaded = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig)), model_cache)
    model, tok = loaded.model.eval(), loaded.tokenizer
    context, stride, windows = 512, 256, 10
    text = wikitext_test_text()
    result = wikitext_perplexity(model, tok, text, context, stride, max_windows=windows)
    n = context + (windows - 1) * stride + 1  # the ids these windows cover
    ids = torch.tensor(tok(text)["input_ids"][:n])
    total, count = reference_nll_sum(model, ids, context, stride)
    assert result["windows"] == windows and result["tokens"] == count == n - 1
    reference = math.exp(total / count)
    assert result["perplexity"] == pytest.approx(reference, rel=0.02)
    assert 5 < result["perplexity"] < 100  # a trained model, not a random one
