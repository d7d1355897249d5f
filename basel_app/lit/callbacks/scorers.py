"""The pruning criterion, pluggable: a scorer gives every basis of every layer a priority (higher is
kept first) right before a pruning event. Basel and BSI share the `PruneScheduler` and differ only here.
"""

from __future__ import annotations

from typing import Protocol

import lightning as L
import torch

from basel_app.lowrank import basel_layers


class Scorer(Protocol):
    name: str

    def priorities(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> dict[str, torch.Tensor]:
        """{layer name: (r,) priority of each basis}; entries of pruned bases are ignored."""
        ...


class MagnitudeScorer:
    """Basel: a basis matters as much as its relearned |s̃_i|."""

    name = "magnitude"

    def priorities(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> dict[str, torch.Tensor]:
        return {name: layer.singular_values.detach().abs() for name, layer in basel_layers(pl_module.model).items()}
