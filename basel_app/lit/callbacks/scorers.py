"""The pruning criterion, pluggable: a scorer gives every basis of every layer a priority (higher is
kept first) right before a pruning event. Basel and BSI share the `PruneScheduler` and differ only here.

A scorer is a plain object, not a callback: the `PruneScheduler` calls it and checkpoints its state with
its own, and the pipeline reads its `records` after fitting.
"""

from __future__ import annotations

from typing import Any, Protocol

import lightning as L
import torch

from basel_app.distributed import full_tensor
from basel_app.lowrank import basel_layers


class Scorer(Protocol):
    name: str
    records: list[dict[str, Any]] | None  # what it measured per pruning event, for metrics.json (None: nothing)

    def priorities(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> dict[str, torch.Tensor]:
        """{layer name: (r,) priority of each basis}; entries of pruned bases are ignored."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class MagnitudeScorer:
    """Basel: a basis matters as much as its relearned |s̃_i|."""

    name = "magnitude"
    records = None

    def priorities(self, trainer: L.Trainer, pl_module: L.LightningModule, event: int) -> dict[str, torch.Tensor]:
        return {name: full_tensor(layer.singular_values).detach().abs()
                for name, layer in basel_layers(pl_module.model).items()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass
