"""Basel's pruning rule and schedule (Algorithm 1), as pure functions of the step and the spectra.

Schedule: the prune phase has `pruning_times` events, one every `IterationsPerPruning` optimizer steps;
each keeps `KeepRatio^(1/PruningTimes)` of the current |s̃| mass, so after all of them a layer keeps
about `KeepRatio` of the mass it entered the phase with.
"""

from __future__ import annotations

import torch


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


def mass_keep_mask(magnitudes: torch.Tensor, keep_mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """The new keep mask (r,) after one pruning event.

    Among the currently kept bases keep the fewest, largest-|s̃| ones whose summed |s̃| is at least
    `ratio` × the kept sum before: the remaining mass is ≥ ratio·before, and dropping the smallest of them
    would fall below it. Magnitudes count (retrained s̃ can be negative). At least one basis always stays;
    ratio 1 changes nothing. Ties are broken by index (stable sort), so the rule is deterministic.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio} must be in (0, 1]")
    if magnitudes.shape != keep_mask.shape:
        raise ValueError(f"magnitudes {tuple(magnitudes.shape)} and keep_mask {tuple(keep_mask.shape)} differ in shape")
    kept = keep_mask.nonzero().squeeze(1)
    if ratio == 1.0 or kept.numel() <= 1:
        return keep_mask.clone()
    values = magnitudes.detach()[kept].abs().to(torch.float64)
    order = torch.sort(values, descending=True, stable=True).indices
    cumulative = torch.cumsum(values[order], dim=0)
    target = ratio * cumulative[-1]  # the cumulative sum's last entry, so target <= it exactly
    count = int(torch.searchsorted(cumulative, target.unsqueeze(0)).item()) + 1  # first prefix reaching target
    count = min(max(count, 1), kept.numel())
    new_mask = torch.zeros_like(keep_mask)
    new_mask[kept[order[:count]]] = True
    return new_mask
