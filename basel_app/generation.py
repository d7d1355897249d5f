"""Greedy answers from a (possibly compressed) model."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def greedy_answer(model: nn.Module, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> str:
    """Decode greedily with the KV cache until eos / end-of-turn or `max_new_tokens`.

    `prompt_ids` must be the task's training prompt (`Task.prompt_ids`), so the model is asked exactly
    as it was taught.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    output = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model.train(was_training)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()
