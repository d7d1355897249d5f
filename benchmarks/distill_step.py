"""What distillation costs per training step: SmolLM2 on GSM8K training batches, with and without the teacher.

One training step = forward, loss, backward and an AdamW step of every parameter (as post-fine-tuning
does), on `--batch` examples of at most 256 tokens (the CPU profile). The two variants alternate, so a
machine whose load drifts slows both alike; the median of `--steps` timings of each is printed.

    .venv/bin/python benchmarks/distill_step.py --steps 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from omegaconf import OmegaConf

from basel_app.config.schema import ModelConfig, TaskConfig
from basel_app.data import TaskDataModule
from basel_app.methods.distillation import Distillation
from basel_app.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args()

    loaded = load_model(OmegaConf.to_object(OmegaConf.structured(ModelConfig)))
    task = OmegaConf.to_object(OmegaConf.structured(TaskConfig(max_train_samples=64, max_length=256,
                                                               train_batch_size=args.batch)))
    data = TaskDataModule.from_config(task, seed=0)
    data.load_records()
    data.attach_tokenizer(loaded.tokenizer)
    data.setup("fit")
    batches = data.calibration_batches(args.steps + 1, seed=0)
    student = loaded.model.train()
    distill = Distillation(copy.deepcopy(student), args.alpha)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)

    def step(batch, teacher: bool) -> float:
        start = time.perf_counter()
        out = student(**batch)
        loss = distill.loss(out.loss, out.logits, batch)[0] if teacher else out.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return time.perf_counter() - start

    step(batches[0], True)  # warm-up (allocations, optimizer state)
    times: dict[bool, list[float]] = {False: [], True: []}
    for batch in batches[1:]:
        for teacher in (False, True):
            times[teacher].append(step(batch, teacher))
    plain, with_teacher = (statistics.median(times[t]) for t in (False, True))
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in batches[1:])
    print(f"SmolLM2-135M float32, batch {args.batch} (mean {tokens:.0f} tokens), {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps each")
    print(f"plain CE step      {plain:.3f} s")
    print(f"with teacher step  {with_teacher:.3f} s  ({with_teacher / plain:.2f}x)")


if __name__ == "__main__":
    main()
