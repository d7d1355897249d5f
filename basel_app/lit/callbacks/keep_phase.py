"""Keep phase: the first `keeping_epochs` epochs relearn s̃, Ũ, Ṽ and prune nothing.

The callback records the spectra on both sides of it: the input model's singular values (s̃ at
initialisation) and the relearned s̃ that the prune phase will judge.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch import Callback

from basel_app.clock import PhaseClock
from basel_app.distributed import full_tensor
from basel_app.lit.callbacks.spectra import SpectraRecord
from basel_app.lowrank import basel_layers


def kept_singular_values(model) -> dict:
    """s̃ of the bases each layer still keeps (gathered whole when FSDP shards it)."""
    return {name: full_tensor(layer.singular_values)[layer.keep_mask] for name, layer in basel_layers(model).items()}


def kept_bases(model) -> dict:
    """{layer: {"index": original rank index of each basis it still keeps, "weight": its s̃}}, ascending index:
    which of the input's bases the task kept, and with what relearned weight."""
    return {
        name: {"index": layer.keep_mask.nonzero().squeeze(1).tolist(),
               "weight": layer.singular_values[layer.keep_mask].detach().float().tolist()}
        for name, layer in basel_layers(model).items()
    }


class KeepPhase(Callback):
    def __init__(self, keeping_epochs: int, spectra: SpectraRecord, clock: PhaseClock) -> None:
        self.keeping_epochs = keeping_epochs
        self.spectra, self.clock = spectra, clock

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "decomposition" not in self.spectra.stages:
            self.spectra.add("decomposition", kept_singular_values(pl_module.model))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.keeping_epochs:
            self.clock.split("keep")
            self.spectra.add("relearned", kept_singular_values(pl_module.model))
