"""Prune phase: every `every` optimizer steps, each layer drops its smallest-|s̃| bases so that the
kept mass is `keep_ratio^(1/pruning_times)` of the mass before (Algorithm 1, lines 7-15).

The number of events due is a pure function of the step (`pruning_events_due`), and the events done
are callback state, so a run resumed from any checkpoint prunes exactly where the original would.
Lightning runs ModelCheckpoint after this callback, so a checkpoint never splits a step from its event.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback

from basel_app.lowrank import lowrank_layers, mass_keep_mask, per_step_keep_ratio, pruning_events_due

log = logging.getLogger(__name__)


class PruneScheduler(Callback):
    def __init__(self, keep_ratio: float, pruning_times: int, start_step: int, phase_steps: int, every: int) -> None:
        self.ratio_per_event = per_step_keep_ratio(keep_ratio, pruning_times)
        self.pruning_times, self.start_step, self.phase_steps, self.every = pruning_times, start_step, phase_steps, every
        self.events_done = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step_in_phase = trainer.global_step - self.start_step
        if step_in_phase <= 0:
            return
        due = pruning_events_due(step_in_phase, self.phase_steps, self.every, self.pruning_times)
        while self.events_done < due:
            self._prune_once(pl_module.model)
            self.events_done += 1
            ranks = [layer.kept_rank for layer in lowrank_layers(pl_module.model).values()]
            pl_module.log_dict(
                {"prune/events": float(self.events_done), "prune/mean_kept_rank": sum(ranks) / len(ranks)},
                on_step=True,
            )
            log.info("pruning event %d/%d at step %d: mean kept rank %.1f",
                     self.events_done, self.pruning_times, trainer.global_step, sum(ranks) / len(ranks))

    @torch.no_grad()
    def _prune_once(self, model: torch.nn.Module) -> None:
        for layer in lowrank_layers(model).values():
            layer.prune(mass_keep_mask(layer.singular_values.abs(), layer.keep_mask, self.ratio_per_event))

    def state_dict(self) -> dict[str, Any]:
        return {"events_done": self.events_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events_done = state_dict["events_done"]
