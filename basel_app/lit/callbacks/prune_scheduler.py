"""Prune phase: every `every` optimizer steps a pruning event asks the scorer for each basis's priority
and drops, in every layer, the lowest-priority bases the size budget says must go (Algorithm 1, lines
7-15, with the budget and the criterion pluggable; see `SizeBudget.event_masks`).

The number of events due is a pure function of the step (`pruning_events_due`), and the events done
(and the scorer's own state) are callback state, so a run resumed from any checkpoint prunes exactly where the original would.
Lightning runs checkpoint callbacks (`StageCheckpoints`) after this one, so a checkpoint never splits a step from its event.

Under DDP the masks of an event are decided once, on rank 0, and broadcast; a checksum of every layer's mask
is then compared across ranks, so processes that would train different models stop at the event that split
them. Before the first step the plan is checked against the steps Lightning will actually run (per process),
so a schedule that could not complete its events is refused instead of silently compressing less.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback

from basel_app.config.errors import ConfigError
from basel_app.distributed import broadcast_from_zero, full_tensor, require_same_everywhere
from basel_app.lit.callbacks.scorers import Scorer
from basel_app.lowrank import LayerBases, layer_weight_params, basel_layers, pruning_events_due
from basel_app.methods.budget import SizeBudget

log = logging.getLogger(__name__)


def layer_bases(model: torch.nn.Module, priorities: dict[str, torch.Tensor]) -> list[LayerBases]:
    """The allocation view of every reparameterized layer, with the mass |s̃|."""
    return [
        LayerBases(layer.out_features, layer.in_features, layer.keep_mask.cpu(), priorities[name].detach().cpu(),
                   full_tensor(layer.singular_values).detach().abs().cpu(), layer.additional_dim)
        for name, layer in basel_layers(model).items()
    ]


def full_rank_weights(model: torch.nn.Module) -> int:
    """Σ (r + r̃)(n + m) over the reparameterized layers: the uncapped weight count before any pruning."""
    return sum(
        int(layer_weight_params(layer.out_features, layer.in_features, layer.keep_mask.numel() + layer.additional_dim,
                                dense_cap=False))
        for layer in basel_layers(model).values()
    )


class PruneScheduler(Callback):
    def __init__(
        self, budget: SizeBudget, scorer: Scorer, pruning_times: int, start_step: int, phase_steps: int, every: int,
        start_weights: int,
    ) -> None:
        self.budget, self.scorer = budget, scorer
        self.pruning_times, self.start_step, self.phase_steps, self.every = pruning_times, start_step, phase_steps, every
        self.start_weights = start_weights
        self.events_done = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        steps = trainer.estimated_stepping_batches  # optimizer steps of this fit, per process
        happening = pruning_events_due(int(steps) - self.start_step, self.phase_steps, self.every, self.pruning_times)
        if happening < self.pruning_times:
            raise ConfigError(
                f"method.pruning_times={self.pruning_times} cannot happen: this fit runs {steps} optimizer steps per "
                f"process and the prune phase starts at step {self.start_step}, which leaves {happening} events; the "
                "phase plan was sized for another number of steps (devices, batch size or data changed)"
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step_in_phase = trainer.global_step - self.start_step  # 0: the keep phase's last step has just run
        if step_in_phase < 0:
            return
        due = pruning_events_due(step_in_phase, self.phase_steps, self.every, self.pruning_times)
        while self.events_done < due:
            mask_checksum = self._prune_once(trainer, pl_module, self.events_done + 1)
            self.events_done += 1
            layers = basel_layers(pl_module.model).values()
            ranks = [layer.kept_rank for layer in layers]
            weights = sum(int(layer_weight_params(layer.out_features, layer.in_features, layer.rank)) for layer in layers)
            pl_module.log_dict(
                {"prune/events": float(self.events_done), "prune/mean_kept_rank": sum(ranks) / len(ranks),
                 "prune/layer_weights": float(weights)},
                on_step=True,
            )
            log.info("pruning event %d/%d at step %d (%s): mean kept rank %.1f, %d layer weights; rank %d keep-mask "
                     "checksum %r", self.events_done, self.pruning_times, trainer.global_step, self.scorer.name,
                     sum(ranks) / len(ranks), weights, trainer.global_rank, mask_checksum)

    @torch.no_grad()
    def _prune_once(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> float:
        """One event; returns the checksum of the keep masks, the same on every rank."""
        with torch.enable_grad():  # a Taylor scorer differentiates the loss
            priorities = self.scorer.priorities(trainer, pl_module, event)
        bases = layer_bases(pl_module.model, priorities)
        masks = broadcast_from_zero(self.budget.event_masks(bases, event, self.pruning_times, self.start_weights))
        layers = basel_layers(pl_module.model).values()
        for layer, mask in zip(layers, masks):
            layer.prune(mask.to(layer.keep_mask.device))
        return require_same_everywhere([layer.keep_mask for layer in layers], f"pruning event {event}: the keep masks")

    def state_dict(self) -> dict[str, Any]:
        return {"events_done": self.events_done, "scorer": self.scorer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.events_done = state_dict["events_done"]
        self.scorer.load_state_dict(state_dict["scorer"])
