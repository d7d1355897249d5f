"""The pruning criteria as plain objects, and the PruneScheduler checkpointing the scorer's state with its own."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from basel_app.lit.callbacks import MagnitudeScorer, PruneScheduler
from basel_app.lowrank import basel_layers, find_target_linears, reparameterize
from basel_app.methods.budget import SizeBudget
from tests.lowrank.helpers import LLAMA_TARGETS, tiny_llama


@pytest.fixture
def llama():
    return tiny_llama()


class CountingScorer:
    """A scorer with state: how many events it scored."""

    name = "counting"
    records = None

    def __init__(self) -> None:
        self.calls = 0

    def priorities(self, trainer: Any, pl_module: Any, event: int) -> dict[str, torch.Tensor]:
        self.calls += 1
        return MagnitudeScorer().priorities(trainer, pl_module, event)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.calls = state_dict["calls"]


def test_magnitude_priorities_are_the_relearned_magnitudes(llama):
    reparameterize(llama, find_target_linears(llama, LLAMA_TARGETS), additional_dim=2)
    layers = basel_layers(llama)
    next(iter(layers.values())).singular_values.data[0] *= -1  # a retrained value can turn negative
    priorities = MagnitudeScorer().priorities(None, SimpleNamespace(model=llama), event=1)
    assert set(priorities) == set(layers)
    for name, layer in layers.items():
        torch.testing.assert_close(priorities[name], layer.singular_values.detach().abs())
    assert MagnitudeScorer.records is None and MagnitudeScorer().state_dict() == {}


def test_the_scheduler_checkpoints_its_scorer(llama):
    reparameterize(llama, find_target_linears(llama, LLAMA_TARGETS), additional_dim=2)
    scorer = CountingScorer()
    scheduler = PruneScheduler(SizeBudget(0.5, None, 0, 0), scorer, pruning_times=2, start_step=0, phase_steps=4,
                               every=2, start_weights=1)
    scheduler._prune_once(None, SimpleNamespace(model=llama), event=1)
    scheduler.events_done = 1
    state = scheduler.state_dict()

    restored = PruneScheduler(SizeBudget(0.5, None, 0, 0), CountingScorer(), pruning_times=2, start_step=0,
                              phase_steps=4, every=2, start_weights=1)
    restored.load_state_dict(state)
    assert restored.events_done == 1 and restored.scorer.calls == 1
