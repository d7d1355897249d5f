"""A NaN or inf in the training loss or a gradient, caught before the optimizer writes it into the weights.

`stop` (the default) ends the run at once with one line naming the phase, the optimizer step and the first
layer (in module order) whose gradient holds one; nothing diverged is saved. `skip` drops the batch instead
(its gradients are cleared, so the optimizer leaves every parameter and its state alone) and counts it; the
count is logged as `train/nonfinite_skips` and kept in checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from basel_app.config.errors import NonFiniteError
from basel_app.finite import first_nonfinite

log = logging.getLogger(__name__)


class NonFiniteGuard(Callback):
    """Checks the loss of every batch and the gradients of every optimizer step; `phase_at(step)` names the phase."""

    def __init__(self, policy: str, phase_at: Callable[[int], str]) -> None:
        self.policy, self.phase_at = policy, phase_at
        self.skipped = 0
        self._loss: float | None = None  # the first non-finite loss since the last optimizer step

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if self._loss is None and not bool(torch.isfinite(loss.detach()).all()):
            self._loss = float(loss.detach())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        # 16-mixed: the grad scaler skips steps with inf gradients by design; only the loss tells divergence.
        grads = () if trainer.precision == "16-mixed" else ((n, p.grad) for n, p in pl_module.model.named_parameters())
        parameter = first_nonfinite(grads)
        loss, self._loss = self._loss, None
        if loss is None and parameter is None:
            return
        what = f"loss {loss}" if loss is not None else "a non-finite gradient"
        layer, _, tensor = (parameter or "").rpartition(".")
        where = f"first layer with a non-finite gradient: {layer} ({tensor})" if parameter else "every gradient finite"
        step = trainer.global_step
        if self.policy == "stop":
            raise NonFiniteError(
                f"{what} in phase {self.phase_at(step)} at step {step}; {where}. Lower the phase's learning rate, "
                "or trainer.on_nonfinite=skip to drop such batches"
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # a parameter without a gradient is left alone by the optimizer
        self.skipped += 1
        log.warning("skipped the batch of step %d (phase %s): %s; %s", step, self.phase_at(step), what, where)
        pl_module.log("train/nonfinite_skips", float(self.skipped))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.skipped:
            log.warning("%d batches skipped for a non-finite loss or gradient (trainer.on_nonfinite=skip)", self.skipped)

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = state_dict["skipped"]
