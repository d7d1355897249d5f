"""Teacher-forced answer loss: the mean next-token NLL over the answer tokens of (prompt, answer) examples.

    input_ids: [ p0 ... p_{P-1} | r0 ... r_{R-1} ]   labels: [ -100 ... -100 | r0 ... r_{R-1} ]
    loss = Σ_examples Σ_answer tokens −log p(r_t | prefix) / (number of answer tokens)

One code path for every such number: the training step's evaluation (`CompressionModule.validation_step`
sums `answer_nll` over the task's eval split), the loss benchmarks (`gsm8k_loss`, `math500_loss`) and the
validation split carved out of the training data all call `answer_nll` on batches padded by the same
collator, so their losses are comparable item for item. Token-weighted, not a mean of per-example means.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from basel_app.data.datamodule import Encoded, PadCollator, pad_token_id_of
from basel_app.modes import eval_mode


def answer_nll(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over the labelled (answer) tokens, and how many there are."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]  # (B, T-1): token t is predicted from the prefix < t
    nll = nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return nll, (targets != -100).sum()


def loss_summary(nll: float, tokens: int) -> dict[str, float]:
    """Mean loss and perplexity from a summed NLL (perplexity capped at e^50 so JSON stays finite)."""
    loss = nll / max(tokens, 1)
    return {"answer_loss": loss, "answer_ppl": math.exp(min(loss, 50.0))}


@torch.no_grad()
def answer_loss(model: nn.Module, tokenizer: Any, examples: list[Encoded | None], batch_size: int) -> dict[str, Any]:
    """The answer loss of encoded examples (None: skipped by the encoder as too long, counted, not scored)."""
    kept = [e for e in examples if e is not None]
    if not kept:
        raise ValueError(f"all {len(examples)} examples were skipped as too long; raise the max length")
    collate = PadCollator(pad_token_id_of(tokenizer))
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with eval_mode(model):
        for start in range(0, len(kept), batch_size):
            batch = {k: v.to(device) for k, v in collate(kept[start : start + batch_size]).items()}
            batch_nll, batch_tokens = answer_nll(model, batch)
            nll += float(batch_nll)
            tokens += int(batch_tokens)
    return {**loss_summary(nll, tokens), "answer_tokens": tokens, "items": len(kept),
            "skipped": len(examples) - len(kept)}
