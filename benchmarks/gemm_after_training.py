"""Why is greedy decoding slower after training in the same process? Small bf16 GEMMs, timed around training.

A decode step is hundreds of 4-row GEMMs, each cheap enough that what surrounds the kernel counts: oneDNN's
bf16 path allocates its scratchpad and attributes on every call. This times a fixed 4×576·576×1536 product
(bf16, and float32 for contrast, which takes another library's path), and a 1.7 MB `torch.empty`, before and
after bf16-autocast AdamW steps on the input model with batches of varying length, as the pipeline's are.
It is a script, not one of the command lines that restart under tcmalloc (basel_app.allocator): it runs under
glibc's malloc unless told otherwise (`LD_PRELOAD=libtcmalloc_minimal.so.4`); the allocator is printed.

    .venv/bin/python benchmarks/gemm_after_training.py --steps 12
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from basel_app.allocator import allocator_in_use
from basel_app.bench.measure import autocast
from basel_app.config.schema import ModelConfig
from basel_app.models import load_model


def microseconds(call, repeats: int) -> float:
    for _ in range(repeats // 20):
        call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return 1e6 * (time.perf_counter() - start) / repeats


def small_gemms(label: str) -> None:
    timings = {}
    for dtype in (torch.bfloat16, torch.float32):
        a, b = torch.randn(4, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
        out = torch.empty(4, 1536, dtype=dtype)
        timings[str(dtype).removeprefix("torch.")] = microseconds(lambda: torch.mm(a, b, out=out), 1000)
    timings["empty 1.7 MB"] = microseconds(lambda: torch.empty(1_700_000, dtype=torch.uint8), 2000)
    print(f"{label:>14}: " + "  ".join(f"{name} {us:.0f} us" for name, us in timings.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--min-length", type=int, default=120)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator: {allocator_in_use()}")
    model = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig))).model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    generator = torch.Generator().manual_seed(0)
    small_gemms("before")
    for step in range(1, args.steps + 1):
        length = int(torch.randint(args.min_length, args.max_length + 1, (1,), generator=generator))
        ids = torch.randint(0, model.config.vocab_size, (args.batch_size, length), generator=generator)
        start = time.perf_counter()
        with autocast(bf16=True):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        print(f"step {step} ({length} tokens): {time.perf_counter() - start:.2f} s", flush=True)
        if step % 4 == 0 or step == args.steps:
            small_gemms(f"after {step} steps")


if __name__ == "__main__":
    main()
