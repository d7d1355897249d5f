"""The learning-rate schedule of a fine-tuning stage: a linear warm-up, then constant or cosine decay.

Adam's first updates are about as large as the learning rate in every coordinate, whatever the gradient's
size, before its moment estimates have settled. On a freshly truncated model they undo more than they
repair: post-fine-tuning SmolLM2 at 2x with lr 1e-4 and no warm-up first raised the training loss from 2.46
to 4.03 (docs/BENCHMARKS.md, "What moves the 2× loss"). The schedule is a multiplier of the base lr per optimizer
step, so a resumed stage continues it from the step it had reached (Lightning restores the scheduler)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from basel_app.config.names import LR_DECAYS


@dataclass(frozen=True)
class LRSchedule:
    warmup: float = 0.0  # fraction of the stage's optimizer steps spent rising linearly to the base lr
    decay: str = "constant"  # after the warm-up: constant | cosine (to 0 at the stage's last step)

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup={self.warmup} is not allowed; it is a fraction of the steps in [0, 1)")
        if self.decay not in LR_DECAYS:
            raise ValueError(f"decay={self.decay!r} is not allowed; choose one of: {', '.join(LR_DECAYS)}")

    @property
    def is_constant(self) -> bool:
        return self.warmup == 0.0 and self.decay == "constant"

    def factor(self, step: int, total_steps: int) -> float:
        """The lr multiplier at optimizer step `step` (0-based) of `total_steps`: (step + 1) / warm-up steps
        while warming up, then 1 or the cosine from 1 towards 0."""
        warmup_steps = round(self.warmup * total_steps)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if self.decay == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
