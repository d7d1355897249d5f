"""The activation statistics one decoder layer at a time against whole forwards, on a real model: whether
every Gram matrix and |x| sum is bitwise equal, and the seconds each path takes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/calibration_paths.py --model smollm2_135m --batches 4

A targeted head is outside every decoder layer, so adding it makes `activation_statistics` take whole
forwards; the layers compared are the seven block linear types of every decoder layer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's basel_app, run from anywhere

from basel_app.bench.models import load  # noqa: E402
from basel_app.lowrank import find_target_linears  # noqa: E402
from basel_app.methods.calibration import activation_statistics  # noqa: E402

LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main(argv: list[str] | None = None) -> dict[str, float | bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args(argv)
    model, _ = load(args.model)
    targets = find_target_linears(model, LINEARS)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.batches):
        ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.tokens), generator=generator)
        mask = torch.ones_like(ids)
        mask[1::2, args.tokens // 2 :] = 0  # every second row padded from its middle on
        batches.append({"input_ids": ids, "attention_mask": mask})
    start = time.perf_counter()
    by_layer = activation_statistics(model, targets, batches, gram=True, abs_mean=True)
    middle = time.perf_counter()
    whole = activation_statistics(model, {**targets, "lm_head": model.lm_head}, batches, gram=True, abs_mean=True)
    end = time.perf_counter()
    result = {
        "bitwise_equal": all(torch.equal(by_layer[n].gram, whole[n].gram)
                             and torch.equal(by_layer[n].abs_sum, whole[n].abs_sum) for n in targets),
        "layer_by_layer_s": round(middle - start, 1),
        "whole_forwards_s": round(end - middle, 1),
    }
    print(f"{args.model}, {len(targets)} layers, {args.batches} batches of {args.batch_size} x {args.tokens} tokens: "
          f"{result}")
    return result


if __name__ == "__main__":
    main()
