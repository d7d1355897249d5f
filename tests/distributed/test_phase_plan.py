"""The phase plan counts one process's steps: a pruning schedule that fits one process but not each of two
is refused before any training, with the numbers that make it impossible."""

from __future__ import annotations

import pytest

from basel_app.config.errors import ConfigError
from basel_app.config.schema import MethodConfig
from basel_app.data.sampler import ResumableBatchSampler
from basel_app.pipeline import PhasePlan


def steps_of_one_process(records: int, batch_size: int, world_size: int) -> int:
    return len(ResumableBatchSampler(records, batch_size, seed=0, world_size=world_size))


def test_a_schedule_two_processes_cannot_complete_is_refused():
    method = MethodConfig(name="basel", pruning_times=4, pruning_epochs=1, keeping_epochs=1)
    alone = PhasePlan.from_config(method, steps_of_one_process(16, 4, world_size=1))
    assert (alone.steps_per_epoch, alone.prune_steps, alone.every) == (4, 4, 1)

    with pytest.raises(ConfigError, match=r"method.pruning_times=4 is more than the 2 optimizer steps of the "
                                          r"pruning phase \(1 epochs x 2 steps\); use at most 2"):
        PhasePlan.from_config(method, steps_of_one_process(16, 4, world_size=2))
