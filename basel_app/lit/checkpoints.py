"""Checkpoints of one training stage that a resume can trust.

`StageCheckpoints` saves every N optimizer steps, at every epoch end (Lightning's `ModelCheckpoint` takes one
trigger only: `every_n_train_steps` turns its epoch-end saving off) and when SIGTERM asks the run to stop,
then raises `Preempted`. Each checkpoint gets a `<name>.sha256` beside it, written after it (`sha256sum -c`
reads it), and the newest `keep` are kept; under DDP rank 0 alone writes and removes. `newest_good_checkpoint`
is the resume rule: the newest checkpoint whose sha256 matches; one without a checksum (its save was cut off)
or with a wrong one is logged in one line naming it, removed, and the one before it is tried.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint

from basel_app.config.errors import Preempted
from basel_app.distributed import all_reduce_sum
from basel_app.files import atomic_write_text, sha256_of
from basel_app.preemption import Preemption

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"
_STEP = re.compile(r"step=(\d+)")


def checkpoints_dir(run_dir: Path) -> Path:
    """Where a run keeps what a resume needs: one folder per stage and per stage boundary, gone once it finishes."""
    return run_dir / "checkpoints"


class StageCheckpoints(Checkpoint):
    """Saves `<dir>/epoch=E-step=S.ckpt` every `every_n_steps` optimizer steps, at each epoch end and on SIGTERM."""

    def __init__(self, directory: Path, every_n_steps: int, preemption: Preemption | None = None, keep: int = 2) -> None:
        self.directory, self.every_n_steps, self.preemption, self.keep = directory, every_n_steps, preemption, keep
        self._saved_step: int | None = None
        self._seen_step: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        step = trainer.global_step
        stepped, self._seen_step = step != self._seen_step, step
        # Mid-accumulation the accumulated gradients are in no checkpoint. After an epoch's last batch the epoch
        # end saves instead: a checkpoint from that batch's end resumes into a repeated epoch once it is itself
        # the product of a resume (measured by the kill test in tests/lit/test_pipeline.py).
        if not stepped or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        if step % self.every_n_steps == 0:
            self.save(trainer)
        self._stop_if_preempted(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)
        self._stop_if_preempted(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.preemption is not None:
            self.preemption.reclaim()  # after Lightning has installed its own handler (preemption.py)

    def _stop_if_preempted(self, trainer: L.Trainer) -> None:
        """Every rank stops at the same step if any got SIGTERM (SLURM signals each task; they see it at
        different moments), after one checkpoint they all take part in."""
        if self.preemption is None:
            return
        (anywhere,) = all_reduce_sum([torch.tensor([float(self.preemption.requested)])])
        if float(anywhere) > 0:
            self.preemption.requested = True
            raise Preempted(f"pre-empted by SIGTERM at step {trainer.global_step}: saved {self.save(trainer)}; "
                            "re-run on the same output dir to continue from it")

    def save(self, trainer: L.Trainer) -> Path:
        path = self.directory / f"epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
        if self._saved_step == trainer.global_step:
            return path
        trainer.save_checkpoint(path, weights_only=False)  # the optimizer state too: a resume is exact
        # Lightning writes the file on rank 0 alone; the checksum and the clean-up too, or ranks race on the
        # same files (one's unlink between another's glob and stat killed that rank under DDP).
        if trainer.is_global_zero:
            atomic_write_text(checksum_file(path), f"{sha256_of(path)}  {path.name}\n")
            for old in checkpoints_newest_first(self.directory)[self.keep:]:
                remove_checkpoint(old)
        trainer.strategy.barrier("StageCheckpoints.save")  # every rank returns once the checkpoint is trusted
        self._saved_step = trainer.global_step
        return path


def checksum_file(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + CHECKSUM_SUFFIX)


def checkpoints_newest_first(directory: Path) -> list[Path]:
    """The checkpoint files of `directory` (links such as an old `last.ckpt` aside), the highest step first."""
    found = [p for p in directory.glob("*.ckpt") if p.is_file() and not p.is_symlink() and _STEP.search(p.name)]
    return sorted(found, key=lambda p: (int(_STEP.search(p.name).group(1)), p.stat().st_mtime), reverse=True)


def remove_checkpoint(checkpoint: Path) -> None:
    checkpoint.unlink(missing_ok=True)
    checksum_file(checkpoint).unlink(missing_ok=True)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be trusted, or None when its sha256 matches the one written after it."""
    checksum = checksum_file(checkpoint)
    if not checksum.is_file():
        return "has no checksum (its save was cut off)"
    if checksum.read_text().split()[:1] != [sha256_of(checkpoint)]:
        return "is corrupt: its sha256 differs from the one recorded when it was saved"
    return None


def newest_good_checkpoint(directory: Path) -> Path | None:
    """The checkpoint a stage resumes from (None: start the stage over); says which, and why others were dropped."""
    if not directory.is_dir():
        return None
    last = directory / "last.ckpt"
    if last.is_symlink() and not last.exists():
        log.warning("%s is a dangling link to %s (a checkpoint removed or never completed); ignoring it",
                    last, os.readlink(last))
        last.unlink()
    for checkpoint in checkpoints_newest_first(directory):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            log.info("resuming from %s", checkpoint)
            return checkpoint
        log.error("checkpoint %s %s; removed it, falling back to the one before", checkpoint, problem)
        remove_checkpoint(checkpoint)
    if any(directory.iterdir()):
        log.warning("no usable checkpoint in %s: the stage starts over", directory)
    return None
