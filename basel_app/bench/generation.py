"""Greedy generation for evaluation, before and after the static KV cache, in float32 and bf16 autocast.

The prompts are the first `batch` GSM8K test questions, encoded as the `gsm8k` benchmark encodes them
(chat template, left-padded batch). No stop token ends a row early (the stop id is one past the
vocabulary), so every row produces exactly `new_tokens` tokens and new tokens/s = batch × new_tokens /
seconds. Variants:

    dynamic/fp32   the path before this benchmark existed (the one of commit 6d10212: fp32, dynamic cache)
    static/fp32    the evaluation path of a `32-true` run
    dynamic/bf16   bf16 autocast (the weights' casts cached for the call), dynamic cache
    static/bf16    the evaluation path of a `bf16-mixed` run (`trainer.precision=auto` on CPUs with bf16)
    dynamic/bf16/frozen  dynamic/bf16 with no weight requiring grad, as a frozen or partly trained model is
                   evaluated (autocast caches only the casts of weights that require grad)
    weights only/fp32, weights only/bf16  no model: per decoding step, one `batch`-row product with every
                   linear weight of the model (the head included), back to back. What a decode step cannot go
                   below with these kernels and this precision, whatever the Python around them; its
                   speed-up column is the most that cutting everything else (attention, norms, dispatch) could
                   give, and its GB/s is the weight stream's rate.

Each variant's texts are compared with dynamic/fp32's: float32 must agree token for token (the tests check
it on a random model); bf16 rounds the logits, so a near-tie may flip and the text part ways from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from basel_app.bench.measure import alternate, autocast, table, weights_only
from basel_app.bench.models import load
from basel_app.evaluation.generation import generate_greedy


@dataclass(frozen=True)
class GenerationSettings:
    model: str = "smollm2_135m"
    batch: int = 4
    new_tokens: int = 64
    repeats: int = 3
    warmup: int = 1


def gsm8k_prompts(tokenizer: Any, count: int) -> list[list[int]]:
    from basel_app.tasks.encoding import prompt_ids
    from basel_app.tasks.records import read_packaged_split

    records = read_packaged_split("gsm8k", "test", {"question": str, "answer": str})[:count]
    return [prompt_ids(tokenizer, record["question"], None) for record in records]


def run(settings: GenerationSettings) -> dict[str, Any]:
    model, tokenizer = load(settings.model)
    prompts = gsm8k_prompts(tokenizer, settings.batch)
    never = [model.config.vocab_size]  # no row stops early: each yields exactly new_tokens tokens

    def variant(cache: str, precision: str, frozen: bool = False):
        def generate() -> list[str]:
            model.requires_grad_(not frozen)
            with autocast(precision == "bf16"):
                return generate_greedy(model, tokenizer, prompts, settings.new_tokens, settings.batch,
                                       stop_token_ids=never, cache=cache, show_progress=False)
        return generate

    names = [(cache, precision) for precision in ("fp32", "bf16") for cache in ("dynamic", "static")]
    variants = {f"{c}/{p}": variant(c, p) for c, p in names}
    variants["dynamic/bf16/frozen"] = variant("dynamic", "bf16", frozen=True)
    weight_bytes = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        variants[f"weights only/{precision}"], weight_bytes[f"weights only/{precision}"] = weights_only(
            model, settings.batch, settings.new_tokens, dtype)
    measured = alternate(variants, settings.repeats, settings.warmup)
    model.requires_grad_(True)
    reference = measured["dynamic/fp32"]["result"]
    tokens = settings.batch * settings.new_tokens
    base = measured["dynamic/fp32"]["seconds"]["median"]
    rows = {}
    for name, m in measured.items():
        texts = m.pop("result")
        rows[name] = {**m, "new_tokens_per_s": tokens / m["seconds"]["median"],
                      "speedup_vs_dynamic_fp32": base / m["seconds"]["median"]}
        if texts is None:  # weights only: no text, a weight stream
            rows[name]["weight_gb_per_s"] = weight_bytes[name] * settings.new_tokens / m["seconds"]["median"] / 1e9
        else:
            rows[name] |= {"rows_identical_to_dynamic_fp32": sum(a == b for a, b in zip(texts, reference)),
                           "first_difference_chars": [_first_difference(a, b) for a, b in zip(texts, reference)]}
    return {"settings": settings.__dict__, "prompt_tokens": [len(p) for p in prompts], "variants": rows}


def _first_difference(a: str, b: str) -> int | None:
    """Index of the first character where the two texts differ (None: identical)."""
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    rows = [[name, v["seconds"]["median"], f"{v['seconds']['min']:.3g}-{v['seconds']['max']:.3g}",
             v["new_tokens_per_s"], f"{v['speedup_vs_dynamic_fp32']:.2f}x",
             f"{v['rows_identical_to_dynamic_fp32']}/{s['batch']}" if "weight_gb_per_s" not in v else "—",
             v["peak_bytes"] / 2**20, v.get("weight_gb_per_s", "—")]
            for name, v in result["variants"].items()]
    header = ["cache/precision", "s (median)", "s (min-max)", "new tokens/s", "speed-up", "rows = dynamic/fp32",
              "peak MB", "weights GB/s"]
    return f"generation: {s['model']}, batch {s['batch']}, {s['new_tokens']} new tokens\n\n" + table(header, rows)
