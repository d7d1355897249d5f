"""Recompose: when the keep and prune phases are done, each reparameterized layer becomes two thin
linears (or stays dense above break-even) by the QR trick, and the result is handed on (saved as the
stage boundary, so a resumed run never redoes stage 1)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch import Callback
from torch import nn

from basel_app.clock import PhaseClock
from basel_app.lit.callbacks.keep_phase import kept_singular_values
from basel_app.lit.callbacks.spectra import SpectraRecord
from basel_app.lowrank import LowRankLinear, recompose_model

log = logging.getLogger(__name__)


def recomposed_singular_values(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Singular values of W̃ per layer: the row norms of `down` = diag(S')V'^T, or svdvals if dense."""
    out = {}
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, LowRankLinear):
            out[name] = module.down.weight.float().norm(dim=1)
        else:
            out[name] = torch.linalg.svdvals(module.weight.float())
    return out


class Recompose(Callback):
    def __init__(
        self,
        spectra: SpectraRecord,
        clock: PhaseClock,
        on_recomposed: Callable[[nn.Module, dict[str, int]], None],
    ) -> None:
        self.spectra, self.clock = spectra, clock
        self.on_recomposed = on_recomposed

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.split("prune")
        model = pl_module.model
        self.spectra.add("pruned", kept_singular_values(model), trainer.logger, trainer.global_step)
        ranks = recompose_model(model)
        self.spectra.add("recomposed", recomposed_singular_values(model, list(ranks)), trainer.logger,
                         trainer.global_step)
        self.clock.split("recompose")
        self.on_recomposed(model, ranks)
