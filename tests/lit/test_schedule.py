"""The fine-tuning lr schedule: the multiplier itself, and the lr a real Trainer applies step by step,
across a resume from a checkpoint."""

from __future__ import annotations

import math
import re

import lightning as L
import pytest
from torch.utils.data import DataLoader

from basel_app.lit.module import CompressionModule
from basel_app.lit.schedule import LRSchedule
from basel_app.lit.trainable import all_parameters

from .test_distill import batches, tiny_llama


def test_warmup_rises_linearly_then_cosine_falls_to_zero_and_constant_stays():
    cosine, constant = LRSchedule(0.25, "cosine"), LRSchedule(0.25, "constant")
    total = 20
    assert [cosine.factor(s, total) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert [constant.factor(s, total) for s in range(5, total)] == [1.0] * 15
    falling = [cosine.factor(s, total) for s in range(5, total)]
    assert all(a > b for a, b in zip(falling, falling[1:]))
    assert falling[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 14 / 15)))
    assert LRSchedule().is_constant and not LRSchedule(0.0, "cosine").is_constant
    assert LRSchedule(0.0, "cosine").factor(0, total) == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup": 1.0}, "warmup=1.0 is not allowed; it is a fraction of the steps in [0, 1)"),
    ({"warmup": -0.1}, "warmup=-0.1 is not allowed"),
    ({"decay": "linear"}, "decay='linear' is not allowed; choose one of: constant, cosine"),
])
def test_bad_schedules_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LRSchedule(**kwargs)


class LRRecord(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


class StopAt(L.Callback):
    """Save a checkpoint after `step` optimizer steps and end the fit there."""

    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def fit(module: CompressionModule, data, max_steps: int, tmp_path, *callbacks: L.Callback, resume: str | None = None):
    record = LRRecord()
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record, *callbacks],
                        default_root_dir=tmp_path)
    trainer.fit(module, DataLoader(data, batch_size=None), ckpt_path=resume, weights_only=True)
    return trainer, record.lrs


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_the_trainer_applies_the_schedule_per_optimizer_step_and_a_resume_continues_it(tmp_path):
    schedule, lr, data = LRSchedule(0.25, "cosine"), 1e-3, batches(8)
    _, lrs = fit(CompressionModule(tiny_llama(0), all_parameters, lr, 0.0, schedule=schedule), data, 8, tmp_path)
    assert lrs == pytest.approx([lr * schedule.factor(step, 8) for step in range(8)])

    # Stop after 4 of the 8 steps with a checkpoint; a new module resumed from it goes on from step 4.
    stop = StopAt(4, tmp_path / "mid.ckpt")
    fit(CompressionModule(tiny_llama(0), all_parameters, lr, 0.0, schedule=schedule), data, 8, tmp_path, stop)
    _, resumed = fit(CompressionModule(tiny_llama(0), all_parameters, lr, 0.0, schedule=schedule), data, 8, tmp_path,
                     resume=str(stop.path))
    assert resumed == pytest.approx(lrs[4:])
