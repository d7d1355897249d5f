"""Inference: prefill and decode throughput and memory of the dense model and its compressions.

Compressed models are plain truncated SVDs (the `svd` one-shot method: no data, no training) of every
block linear at each whole-model `ratios` (original / compressed parameters), with the run's budget rule;
what is measured is the cost of the two thin GEMMs per layer, which does not depend on how the factors
were found. With `rank_multiple` > 1 each ratio is also measured with its ranks in multiples of it
(`method.rank_multiple`); with `quantize` (int8, int4 or both) each float model, the dense one included, is
also measured with its linear weights quantized as `quantize=` saves them. Each model generates greedily on
`batch` random prompts of `prompt_tokens` tokens through the evaluation path (`generate_greedy`, no early
stop), under the trainer's default precision (bf16 autocast where the CPU has bf16):

    prefill   one new token:            prompt tokens/s = batch × prompt_tokens / t(1)
    decode    `new_tokens` + 1 tokens:  new tokens/s = batch × new_tokens / (t(new_tokens + 1) − t(1))

Memory: the model's state (parameters and buffers, bytes counted) and the peak of a whole generate call
above what was resident before it (KV cache, activations, autocast's bf16 weight copies).

What bounds decoding: one extra untimed generate call per model under `torch.profiler` gives the share of
CPU time spent inside matrix-product kernels (`GEMM_OPS`) and the number of them per decoded token. A low
share means the step is bound by per-operator overhead (Python, dispatch, autocast), not by FLOPs or
memory bandwidth, and then more, thinner GEMMs cost time even though they move fewer bytes. Each float
model's weight stream is also timed alone (`weights_only`: a `batch`-row product with every linear weight per
new token, in the decode's precision, nothing else), the decode rate its linears alone would allow.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from basel_app.bench.measure import alternate, autocast, table, weights_only
from basel_app.bench.models import load
from basel_app.config.names import BLOCK_LINEARS
from basel_app.config.schema import MethodConfig, TrainerConfig
from basel_app.evaluation.generation import generate_greedy
from basel_app.lit.trainer import resolve_precision
from basel_app.lowrank import count_parameters, find_target_linears, state_bytes
from basel_app.lowrank.factorizations import svd_factorization
from basel_app.methods.budget import fixed_parameters, resolve_budget
from basel_app.methods.one_shot import truncate_layers
from basel_app.models.quantization import quantize_linears


GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul_out")  # the kernels doing the products


def gemm_profile(call: Any, tokens: int) -> dict[str, float]:
    """Share of CPU time inside matrix-product kernels during `call()`, and their count per token."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = [e for e in events if e.key in GEMM_OPS]
    return {"gemm_time_share": sum(e.self_cpu_time_total for e in gemm) / total,
            "gemm_calls_per_token": sum(e.count for e in gemm) / tokens}


@dataclass(frozen=True)
class InferenceSettings:
    model: str = "smollm2_135m"
    ratios: str = "1.5,2,3"  # whole-model compression ratios of the compressed models
    quantize: str = "int8"  # comma-separated schemes each model is also measured in (none: only float)
    rank_multiple: int = 8  # > 1: each ratio also with its ranks rounded to multiples of this (method.rank_multiple)
    batch: int = 4
    prompt_tokens: int = 128
    new_tokens: int = 32
    repeats: int = 3
    warmup: int = 1


def svd_compressed(model: torch.nn.Module, ratio: float, factors: dict[str, Any], rank_multiple: int = 1
                   ) -> torch.nn.Module:
    """A copy of `model` with every block linear replaced by its SVD (`factors`, by name) truncated to a
    whole-model `ratio` under the run's budget rule."""
    model = copy.deepcopy(model)
    targets = find_target_linears(model, list(BLOCK_LINEARS))
    method = MethodConfig(name="svd", compression_ratio=ratio, rank_multiple=rank_multiple)
    budget = resolve_budget(method, count_parameters(model), fixed_parameters(model, targets), targets, extra=0)
    truncate_layers(model, targets, factors, budget)
    return model


def run(settings: InferenceSettings) -> dict[str, Any]:
    precision = resolve_precision(TrainerConfig())
    dense, tokenizer = load(settings.model)
    targets = find_target_linears(dense, list(BLOCK_LINEARS))
    factors = {name: svd_factorization(layer.weight) for name, layer in targets.items()}  # once, for every ratio
    models = {"dense": dense}
    for ratio in (float(r) for r in settings.ratios.split(",")):
        models[f"svd {ratio:g}x"] = svd_compressed(dense, ratio, factors)
        if settings.rank_multiple > 1:
            models[f"svd {ratio:g}x ranks%{settings.rank_multiple}"] = svd_compressed(dense, ratio, factors,
                                                                                    settings.rank_multiple)
    unquantized = set(models)
    for scheme in (s for s in settings.quantize.split(",") if s != "none"):
        for name in [n for n in models if n == "dense" or n.endswith("x")]:  # the float ones
            models[f"{name} {scheme}"] = quantized = copy.deepcopy(models[name])
            quantize_linears(quantized, scheme)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, dense.config.vocab_size, (settings.batch, settings.prompt_tokens),
                            generator=generator).tolist()
    never = [dense.config.vocab_size]

    def generate(model: torch.nn.Module, new_tokens: int):
        def call() -> None:
            with autocast(precision == "bf16-mixed"):
                generate_greedy(model, tokenizer, prompts, new_tokens, settings.batch, stop_token_ids=never,
                                show_progress=False)
        return call

    variants = {}
    weights_dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    for name, model in models.items():
        variants[name + "/prefill"] = generate(model, 1)
        variants[name + "/generate"] = generate(model, settings.new_tokens + 1)
        if name in unquantized:  # quantized weights are not plain tensors
            variants[name + "/weights only"] = weights_only(model, settings.batch, settings.new_tokens, weights_dtype)[0]
    measured = alternate(variants, settings.repeats, settings.warmup)
    rows = {}
    for name, model in models.items():
        prefill, whole = measured[name + "/prefill"], measured[name + "/generate"]
        t1, tn = prefill["seconds"]["median"], whole["seconds"]["median"]
        rows[name] = {
            "parameters": count_parameters(model), "state_bytes": state_bytes(model),
            "prefill_s": prefill["seconds"], "generate_s": whole["seconds"],
            "prefill_tokens_per_s": settings.batch * settings.prompt_tokens / t1,
            # None when the difference drowns in noise (too few new tokens for the machine's jitter)
            "decode_tokens_per_s": settings.batch * settings.new_tokens / (tn - t1) if tn > t1 else None,
            "peak_bytes": whole["peak_bytes"],
            "weights_only_tokens_per_s": (settings.batch * settings.new_tokens / measured[name + "/weights only"]
                                          ["seconds"]["median"] if name + "/weights only" in measured else None),
            **gemm_profile(variants[name + "/generate"], settings.new_tokens + 1),
        }
    dense_decode = rows["dense"]["decode_tokens_per_s"]
    for row in rows.values():
        decode = row["decode_tokens_per_s"]
        row["decode_vs_dense"] = decode / dense_decode if decode and dense_decode else None
        row["prefill_vs_dense"] = row["prefill_tokens_per_s"] / rows["dense"]["prefill_tokens_per_s"]
    return {"settings": settings.__dict__, "precision": precision, "models": rows}


def render(result: dict[str, Any]) -> str:
    rows = [[name, v["parameters"], v["state_bytes"] / 2**20, v["prefill_tokens_per_s"],
             f"{v['prefill_vs_dense']:.2f}x", v["decode_tokens_per_s"] or "n/a",
             f"{v['decode_vs_dense']:.2f}x" if v["decode_vs_dense"] else "n/a",
             v["peak_bytes"] / 2**20, (v["state_bytes"] + v["peak_bytes"]) / 2**20,
             f"{v['gemm_time_share']:.0%}", v["gemm_calls_per_token"], v["weights_only_tokens_per_s"] or "—"]
            for name, v in result["models"].items()]
    s = result["settings"]
    header = ["model", "parameters", "weights MB", "prefill tok/s", "prefill / dense", "decode tok/s",
              "decode / dense", "run peak MB", "weights + peak MB", "GEMM time", "GEMMs / token", "weights only tok/s"]
    return (f"inference: {s['model']}, batch {s['batch']}, prompt {s['prompt_tokens']}, {s['new_tokens']} new tokens, "
            f"{result['precision']}\n\n" + table(header, rows))
