"""WikiText-2 perplexity by the sliding-window protocol.

The text: the test split exactly as its file is laid out (:func:`basel_app.tasks.lm.wikitext_test_text`, the raw
``test.txt``: one line per paragraph or heading, ``" \\n"`` for an empty line; no ``"\\n\\n".join`` of hub rows).
It is tokenized *per article* (split before each top-level heading line ``" = Title = \\n"``) without special
tokens, the articles' ids are concatenated in order, and the tokenizer's special prefix (its BOS, if it adds one;
nothing for SmolLM2) goes in front: one stream ``x_0 .. x_{N-1}``. For SmolLM2 this stream is identical to
tokenizing the whole file at once (checked), without handing a tokenizer one 1.2 MB string.

The windows (``L = context_length``, ``S = stride``, ``1 <= S <= L``)::

    stream      x_0 x_1 ...                                                       x_{N-1}
    window 0    inputs x_0 .. x_{L-1}              scores x_1 .. x_L
    window 1    inputs x_S .. x_{S+L-1}            scores x_{L+1} .. x_{S+L}         (the S not scored before)
    window w    inputs x_{wS} .. x_{wS+L-1}        scores x_{(w-1)S+L+1} .. x_{wS+L}
    last        inputs stop at x_{N-2}             scores up to x_{N-1}

Each window is a fresh forward pass (positions from 0, no cache). A window's logit at input position ``i``
predicts the next token, so a window of ``L`` inputs predicts ``L`` targets — the last one is the token just
after the window — and scores only the targets no earlier window scored. Every token but ``x_0`` is scored
exactly once, with at least ``L - S`` tokens of context (all earlier tokens in window 0). ``S == L`` is plain
non-overlapping evaluation; ``S < L`` buys context with ``L / S`` times the compute. This is the Hugging Face
"perplexity of fixed-length models" loop with the target shifted by one (so no window-start token goes
unscored when ``S == L``), the same as lm-evaluation-harness's rolling windows.

    nll = Σ_scored −log p(x_t | window context) / (N − 1)        ppl = exp(nll)

Log-probabilities come from the logits in float64 (``torchmetrics.text.Perplexity`` with float64 state), so the
sum over ~300k tokens loses nothing to rounding. ``max_windows`` evaluates the first windows only (a bounded,
deterministic prefix of the stream, for quick checks); the result says how many of how many were run.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics.text import Perplexity
from tqdm.auto import tqdm

from basel_app.modes import eval_mode
from basel_app.tasks.encoding import _as_ids
from basel_app.tasks.lm import special_prefix

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

_ARTICLE_START = re.compile(r"(?m)^(?= = [^=].* = \n)")  # a top-level heading line starts an article


@dataclass(frozen=True)
class Window:
    """Inputs ``ids[begin:end]``; targets ``ids[first_scored : end + 1]`` are the ones this window scores."""

    begin: int
    end: int  # exclusive for inputs; the last scored target is ids[end]
    first_scored: int

    @property
    def num_scored(self) -> int:
        return self.end + 1 - self.first_scored


def sliding_windows(num_tokens: int, context_length: int, stride: int) -> list[Window]:
    """The windows of the protocol above over a stream of ``num_tokens`` ids (targets 1..N-1, each once)."""
    if context_length < 1:
        raise ValueError(f"context_length={context_length} is not allowed; it must be >= 1")
    if not 1 <= stride <= context_length:
        raise ValueError(
            f"stride={stride} is not allowed with context_length={context_length}; use 1 <= stride <= "
            "context_length (a larger stride would skip tokens)"
        )
    if num_tokens < 2:
        raise ValueError(f"the text has {num_tokens} token(s); perplexity needs at least 2")
    windows: list[Window] = []
    scored_up_to = 0  # index of the last scored target (x_0 is never a target)
    begin = 0
    while scored_up_to < num_tokens - 1:
        end = min(begin + context_length, num_tokens - 1)
        windows.append(Window(begin, end, scored_up_to + 1))
        scored_up_to = end
        begin += stride
    return windows


def tokenize_stream(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The token stream of a WikiText text: special prefix + each article's ids (no special tokens), in order."""
    ids = list(special_prefix(tokenizer))
    for article in _ARTICLE_START.split(text):
        if article:
            ids.extend(_as_ids(tokenizer(article, add_special_tokens=False)))
    return ids


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.inference_mode()
def stream_perplexity(
    model: nn.Module,
    ids: Sequence[int] | torch.Tensor,
    context_length: int,
    stride: int,
    batch_size: int = 1,
    max_windows: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sliding-window perplexity of a causal LM on one token stream ``ids`` (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not allowed; it must be >= 1")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows={max_windows} is not allowed; use None (all) or >= 1")
    stream = torch.as_tensor(ids, dtype=torch.long).flatten()
    all_windows = sliding_windows(stream.numel(), context_length, stride)
    windows = all_windows if max_windows is None else all_windows[:max_windows]
    device = _model_device(model)
    metric = Perplexity().set_dtype(torch.float64).to(device)  # Σ −log p and count, in float64

    with eval_mode(model):
        with tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress) as bar:
            for start in range(0, len(windows), batch_size):
                batch = windows[start : start + batch_size]
                longest = max(w.end - w.begin for w in batch)
                # Right padding: with a causal mask, padding after a row's last input changes none of its logits.
                inputs = torch.zeros((len(batch), longest), dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, w in enumerate(batch):
                    inputs[row, : w.end - w.begin] = stream[w.begin : w.end]
                    mask[row, : w.end - w.begin] = 1
                logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device), use_cache=False).logits
                for row, w in enumerate(batch):  # logits (B, T, V); position i predicts ids[begin + i + 1]
                    positions = slice(w.first_scored - 1 - w.begin, w.end - w.begin)
                    preds = logits[row, positions].to(torch.float64).unsqueeze(0)  # (1, n, V)
                    target = stream[w.first_scored : w.end + 1].to(device).unsqueeze(0)  # (1, n)
                    metric.update(preds, target)
                bar.update(len(batch))

    total = float(metric.total_log_probs)
    count = int(metric.count)
    nll = total / count
    return {
        "perplexity": math.exp(nll),
        "nll": nll,  # mean negative log-likelihood per scored token, nats
        "nll_sum": total,
        "tokens": count,  # scored tokens
        "context_length": context_length,
        "stride": stride,
        "windows": len(windows),
        "total_windows": len(all_windows),
        "stream_tokens": int(stream.numel()),
        "batch_size": batch_size,
    }


def wikitext_perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    context_length: int,
    stride: int,
    batch_size: int = 1,
    max_windows: int | None = None,
) -> dict[str, Any]:
    """Sliding-window perplexity of ``model`` on a WikiText split's text (the raw file text, e.g. test.txt).

    Returns ``perplexity``, ``nll`` (mean per scored token, nats), ``nll_sum``, ``tokens`` (scored),
    ``context_length``, ``stride``, ``windows`` (evaluated) and ``total_windows``, ``stream_tokens``,
    ``batch_size``. The value does not depend on ``batch_size`` beyond float rounding.
    """
    ids = tokenize_stream(tokenizer, text)
    result = stream_perplexity(model, ids, context_length, stride, batch_size=batch_size, max_windows=max_windows)
    log.info(
        "WikiText perplexity %.4f over %d tokens (%d of %d windows, context %d, stride %d)",
        result["perplexity"], result["tokens"], result["windows"], result["total_windows"], context_length, stride,
    )
    return result
