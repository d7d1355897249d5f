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

    Event i (from 0) is due once i·`every` steps of the phase have run: the first as the phase starts, each
    later one `every` steps after the one before, so that every event, the last included, is followed by
    `every` steps that retrain what it removed ("after each pruning step, the learnable parameters are
    fine-tuned to compensate", Basel §3). Counting events at the ends of the intervals instead would put
    the last, most damaging one after the phase's last step, with no compensation before recomposition.
    At the end of the phase all `times` events are due: rounding `every` up can leave fewer than `times`
    interval starts in the phase, and the final keep ratio must still be reached. A pure function of the
    step, so resumed runs agree.
    """
    if every < 1:
        raise ValueError(f"every={every} must be >= 1 optimizer step")
    if step_in_phase < 0:
        return 0
    if step_in_phase >= phase_steps:
        return times
    return min(times, step_in_phase // every + 1)
