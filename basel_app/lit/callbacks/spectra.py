"""Per-layer spectra, kept for the run's record: spectra.json, and the pipeline draws them into spectra.png.

Stages: `decomposition` (the input model's singular values), `relearned` (s̃ after the keep phase),
`pruned` (the kept s̃ before recomposition) and `recomposed` (the singular values of W̃). The record
is callback state, so a resumed run still reports the stages its first attempt saw.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback

log = logging.getLogger(__name__)


class SpectraRecord(Callback):
    """Collects {stage: {layer: values}}; the pipeline writes it to spectra.json at the end."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, list[float]]] = {}

    def add(self, stage: str, spectra: dict[str, torch.Tensor]) -> None:
        self.stages[stage] = {name: values.detach().float().cpu().tolist() for name, values in spectra.items()}
        log.info("recorded the %s spectra of %d layers", stage, len(spectra))

    def state_dict(self) -> dict[str, Any]:
        return {"stages": self.stages}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stages = state_dict["stages"]
