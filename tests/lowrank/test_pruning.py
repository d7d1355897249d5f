"""The pruning rule (|s~| mass) and schedule (events per step) of Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch

from basel_app.lowrank import iterations_per_pruning, mass_keep_mask, per_step_keep_ratio, pruning_events_due


def _mass(values: torch.Tensor, mask: torch.Tensor) -> float:
    return float(values.abs()[mask].double().sum())


@pytest.mark.parametrize("ratio", [0.3, 0.7, 0.9, 0.99])
def test_mass_rule_keeps_fewest_largest(ratio, gen):
    s = torch.randn(40, generator=gen)  # retrained values: some negative
    keep = torch.rand(40, generator=gen) < 0.8
    new = mass_keep_mask(s, keep, ratio)
    assert not torch.any(new & ~keep), "only currently kept bases may stay"
    before, after = _mass(s, keep), _mass(s, new)
    assert after >= ratio * before
    smallest = int(torch.where(new, s.abs(), torch.inf).argmin())
    without = new.clone()
    without[smallest] = False
    assert _mass(s, without) < ratio * before, "dropping the smallest kept one must fall below the target"
    # the kept ones are the largest: every dropped magnitude is <= every kept one
    dropped = keep & ~new
    if dropped.any():
        assert s.abs()[dropped].max() <= s.abs()[new].min()


def test_negative_values_count_by_magnitude():
    s = torch.tensor([-5.0, 1.0, 0.5, -0.2, 3.0])
    keep = torch.ones(5, dtype=torch.bool)
    new = mass_keep_mask(s, keep, 0.8)  # total 9.7, target 7.76: -5 and 3 give 8.0
    assert new.tolist() == [True, False, False, False, True]


def test_ratio_one_keeps_all_and_never_empty(gen):
    s = torch.randn(16, generator=gen)
    keep = torch.rand(16, generator=gen) < 0.5
    assert torch.equal(mass_keep_mask(s, keep, 1.0), keep)
    tiny = mass_keep_mask(s, keep, 1e-9)
    assert int(tiny.sum()) == 1 and bool((tiny & keep).any())
    single = torch.zeros(16, dtype=torch.bool)
    single[3] = True
    assert torch.equal(mass_keep_mask(s, single, 0.1), single)
    assert int(mass_keep_mask(torch.zeros(16), keep, 0.5).sum()) == 1


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.1])
def test_bad_ratio_is_an_error(ratio):
    with pytest.raises(ValueError, match=str(ratio)):
        mass_keep_mask(torch.ones(4), torch.ones(4, dtype=torch.bool), ratio)


@pytest.mark.parametrize(("keep_ratio", "times"), [(0.3, 1), (0.3, 100), (0.05, 7), (1.0, 4)])
def test_per_step_ratio_compounds_to_keep_ratio(keep_ratio, times):
    assert math.isclose(per_step_keep_ratio(keep_ratio, times) ** times, keep_ratio, rel_tol=1e-12)


def test_iterations_per_pruning_is_the_paper_formula():
    assert iterations_per_pruning(7, 2, 4) == round(7 * 2 / 4)  # 3.5 -> 4 (then 4*4 = 16 > 14 steps)
    assert iterations_per_pruning(100, 2, 100) == 2
    assert iterations_per_pruning(10, 2, 3) == 7


def test_each_event_is_due_at_the_start_of_its_interval_so_the_last_is_followed_by_training():
    phase_steps, times, every = 16, 4, 4
    due = [pruning_events_due(step, phase_steps, every, times) for step in range(-1, phase_steps + 1)]
    assert due == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4]
    last_event_step = due.index(times) - 1  # steps of the phase run before the last event
    assert phase_steps - last_event_step == every  # `every` steps retrain after it, as after every other


def test_events_due_reaches_all_at_phase_end_when_rounding_overshoots():
    phase_steps, times = 6, 4
    every = iterations_per_pruning(3, 2, times)  # 1.5 -> 2: starts 0, 2, 4 and 6, the last at the phase's end
    assert every * (times - 1) >= phase_steps  # the rounding case
    due = [pruning_events_due(step, phase_steps, every, times) for step in range(phase_steps + 1)]
    assert due == [1, 1, 2, 2, 3, 3, times]
    assert pruning_events_due(20, phase_steps, every, times) == times


def test_events_due_never_exceeds_times():
    assert [pruning_events_due(s, 100, 2, 3) for s in (0, 1, 2, 4, 50, 99, 100)] == [1, 1, 2, 3, 3, 3, 3]
