"""`run_benchmarks` runs every forward inside the given context (the trainer's autocast)."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from basel_app.evaluation.benchmarks import BenchmarkSettings, run_benchmarks

from ..tiny_llama import tiny_llama_config


def test_benchmarks_run_under_the_given_autocast(tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tokenizer, max_position_embeddings=64)).eval()
    seen: list[tuple[bool, torch.dtype]] = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append((torch.is_autocast_enabled("cpu"), out.dtype)))
    settings = BenchmarkSettings(limit=1, context_length=32, stride=32)

    def bf16_autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    plain = run_benchmarks(model, tokenizer, ["wikitext2"], settings)["wikitext2"]
    assert seen and all(not enabled and dtype == torch.float32 for enabled, dtype in seen)
    seen.clear()
    mixed = run_benchmarks(model, tokenizer, ["wikitext2"], settings, bf16_autocast)["wikitext2"]
    assert seen and all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)
    assert not torch.is_autocast_enabled("cpu")  # the context ends with the benchmark
    # Same windows, same tokens; the loss moves by bf16 rounding only.
    assert mixed["tokens"] == plain["tokens"]
    assert abs(mixed["nll"] - plain["nll"]) < 0.02 * plain["nll"]
