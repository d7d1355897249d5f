"""Basel's pruning schedule (Algorithm 1), as pure functions of the step.

The prune phase has `pruning_times` events, one every `IterationsPerPruning` optimizer steps; each keeps
`KeepRatio^(1/PruningTimes)` of the current |s̃| mass (the rule itself is in `allocation`), so after all
of them a layer keeps about `KeepRatio` of the mass it entered the phase with.
"""

from __future__ import annotations


def per_step_keep_ratio(keep_ratio: float, pruning_times: int) -> float:
    """KeepRatioPerPruning = KeepRatio^(1/PruningTimes): `pruning_times` events compound to `keep_ratio`."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio={keep_ratio} must be in (0, 1]")
    if pruning_times < 1:
        raise ValueError(f"pruning_times={pruning_times} must be >= 1")
    return keep_ratio ** (1.0 / pruning_times)


def iterations_per_pruning(iterations_per_epoch: int, pruning_epochs: int, pruning_times: int) -> int:
    """IterationsPerPruning = round(NumIterationsPerEpoch · PruningEpoch / PruningTimes) (the paper's formula).

    Python's `round` (halves to even, e.g. 2.5 → 2, 3.5 → 4). It can be 0 when there are fewer steps than events; callers check that (see `pruning_events_due`
    for how the last events are caught up when rounding overshoots the phase).
    """
    if pruning_times < 1:
        raise ValueError(f"pruning_times={pruning_times} must be >= 1")
    return round(iterations_per_epoch * pruning_epochs / pruning_times)


def pruning_events_due(step_in_phase: int, phase_steps: int, every: int, times: int) -> int:
    """How many pruning events should have happened after `step_in_phase` optimizer steps of the phase.

    `min(times, step_in_phase // every)`, except that at the end of the phase (`step_in_phase >=
    phase_steps`) all `times` events are due: rounding `every` up can make `every · times > phase_steps`,
    and the final keep ratio must still be reached. A pure function of the step, so resumed runs agree.
    """
    if every < 1:
        raise ValueError(f"every={every} must be >= 1 optimizer step")
    if step_in_phase <= 0:
        return 0
    if step_in_phase >= phase_steps:
        return times
    return min(times, step_in_phase // every)
