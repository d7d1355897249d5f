"""Which bases each layer keeps under a size budget: one admission rule for every method and allocation.

Each layer offers its kept bases in its own priority order, best first (|s̃| for Basel, the Taylor loss
increase for BSI, the singular values of the method's weighted matrix for the one-shot baselines), and
every budget admits a prefix of each layer's order:

- **mass** (the paper's keep ratio, per layer): a basis is admitted while the |s̃| mass of the bases
  before it is below `ratio` × the layer's kept mass. With priority |s̃| this is Basel's rule.
- **parameters, per layer**: the same mass fraction θ in every layer, the largest θ whose model fits.
- **parameters, global**: bases ranked across all layers by priority per parameter they cost (n + m),
  admitted until the budget is spent. Only meaningful when priorities are comparable across layers
  (loss changes, as BSI's are); magnitudes are not.

A parameter budget is met from below and missed by less than one basis: the admitted prefix is the
longest one that fits, and the next basis would not.

`rank_multiple` q > 1 (hardware-friendly shapes) admits bases in blocks that end where a layer's rank
(kept + r̃) is a multiple of q, or at its last basis; a block's key is its first basis's. The final ranks
are then multiples of q, except a layer left at one basis (+ r̃) or one that keeps every basis, and the
budget is missed by less than one block instead of one basis. The mass rule rounds each layer's count down.

Cost of a layer of rank k (kept bases + r̃ new ones): k(n + m) weights, or nm once k reaches the
break-even rank (`recompose` then stores it dense). Intermediate pruning events may schedule on the
uncapped k(n + m) so that ranks shrink gradually from full rank (see `PruneScheduler`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from basel_app.config.names import ALLOCATIONS


class BudgetError(ValueError):
    """A size budget no allocation can meet; the message says what is achievable."""


def priority_order(priority: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
    """Indices of the kept bases, highest priority first (ties by index, so every rule is deterministic)."""
    kept = keep_mask.nonzero().squeeze(1)
    ranking = torch.sort(priority.detach()[kept].double(), descending=True, stable=True).indices
    return kept[ranking]


def mass_fraction_before(mass: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """For each basis in `order`: the |mass| ahead of it / the total |mass| of `order`, in [0, 1)."""
    values = mass.detach()[order].abs().double()
    total = values.sum()
    if total <= 0:  # no mass to measure: only the first basis is ever needed
        return (torch.arange(order.numel()) > 0).double()
    return (torch.cumsum(values, 0) - values) / total


@dataclass
class LayerBases:
    """What allocation needs of one layer. `n` = out_features, `m` = in_features, r = len(keep_mask)."""

    n: int
    m: int
    keep_mask: torch.Tensor  # (r,) bool: the bases still alive
    priority: torch.Tensor  # (r,) higher = keep first
    mass: torch.Tensor  # (r,) what the keep ratio measures (|s̃|)
    extra: int = 0  # r̃: new bases, always kept


def layer_weight_params(n: int, m: int, rank: int | torch.Tensor, dense_cap: bool = True) -> int | torch.Tensor:
    """Weights of an n×m layer stored at `rank`: rank·(n+m), or at most nm when `dense_cap`."""
    cost = rank * (n + m)
    if not dense_cap:
        return cost
    return torch.clamp(cost, max=n * m) if isinstance(cost, torch.Tensor) else min(cost, n * m)


def _mask_of(keep_mask: torch.Tensor, order: torch.Tensor, count: int) -> torch.Tensor:
    mask = torch.zeros_like(keep_mask)
    mask[order[: max(1, count)]] = True
    return mask


def round_rank_down(count: int, extra: int, multiple: int) -> int:
    """The largest count <= `count` whose rank count + `extra` is a multiple of `multiple`; `count` itself when
    there is none (at least one basis stays)."""
    rounded = (count + extra) // multiple * multiple - extra
    return rounded if rounded >= 1 else count


def mass_keep_mask(
    magnitudes: torch.Tensor, keep_mask: torch.Tensor, ratio: float, priority: torch.Tensor | None = None,
    rank_multiple: int = 1, extra: int = 0,
) -> torch.Tensor:
    """The new keep mask (r,) after keeping `ratio` of the kept |magnitudes| mass.

    Bases are taken in `priority` order (default: |magnitudes|, which is Basel's rule: the fewest,
    largest-|s̃| bases whose summed |s̃| is at least `ratio` × the kept sum). At least one basis always
    stays; ratio 1 changes nothing. With `rank_multiple`, the count is rounded down (`round_rank_down`).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio} must be in (0, 1]")
    if magnitudes.shape != keep_mask.shape:
        raise ValueError(f"magnitudes {tuple(magnitudes.shape)} and keep_mask {tuple(keep_mask.shape)} differ in shape")
    if ratio == 1.0 and rank_multiple == 1:
        return keep_mask.clone()
    order = priority_order(magnitudes.abs() if priority is None else priority, keep_mask)
    count = int((mass_fraction_before(magnitudes, order) < ratio).sum())
    return _mask_of(keep_mask, order, round_rank_down(max(1, count), extra, rank_multiple))


def smallest_weight_params(layers: list[LayerBases], dense_cap: bool = True) -> int:
    """Weights of the smallest model an allocation can make: one basis (+ r̃) left in every layer."""
    return sum(int(layer_weight_params(b.n, b.m, 1 + b.extra, dense_cap)) for b in layers)


def keep_within(
    layers: list[LayerBases], weight_budget: int, allocation: str, dense_cap: bool = True, rank_multiple: int = 1
) -> list[torch.Tensor]:
    """New keep masks whose layers hold at most `weight_budget` weights, as close to it as one basis allows.

    The first basis of every layer is always kept; the others are admitted in one global order (see the
    module docstring for `allocation` and `rank_multiple`) until the next one would not fit.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation={allocation!r} is not allowed; choose one of: {', '.join(ALLOCATIONS)}")
    floor = smallest_weight_params(layers, dense_cap)
    if weight_budget < floor:
        raise BudgetError(
            f"a budget of {weight_budget} layer weights is below the {floor} that one basis per layer (plus the "
            "additional dimension) needs"
        )
    orders, keys, deltas, owners, sizes = [], [], [], [], []
    for index, layer in enumerate(layers):
        order = priority_order(layer.priority, layer.keep_mask)
        orders.append(order)
        positions = torch.arange(1, order.numel(), dtype=torch.float64)  # candidates after the first basis
        if allocation == "per_layer":
            key = mass_fraction_before(layer.mass, order)[1:]
        else:  # global: the lower the priority per parameter, the later it is admitted
            key = -layer.priority.detach()[order[1:]].double() / (layer.n + layer.m)
        ranks = positions + layer.extra  # rank before admitting each candidate
        deltas.append(
            layer_weight_params(layer.n, layer.m, ranks + 1, dense_cap) - layer_weight_params(layer.n, layer.m, ranks, dense_cap)
        )
        # Blocks: candidate j closes one when its admission makes the rank a multiple of q, or it is the last.
        closes = ((ranks + 1) % rank_multiple == 0) | (positions == order.numel() - 1)
        block = torch.cumsum(closes.long(), 0) - closes.long()  # block index of each candidate
        starts = torch.ones_like(closes)
        starts[1:] = block[1:] != block[:-1]
        keys.append(key[starts])
        deltas[-1] = torch.zeros(int(starts.sum()), dtype=torch.float64).index_add_(0, block, deltas[-1].double())
        sizes.append(torch.bincount(block, minlength=int(starts.sum())))
        owners.append(torch.full((int(starts.sum()),), index, dtype=torch.long))
    key, delta, owner, size = torch.cat(keys), torch.cat(deltas), torch.cat(owners), torch.cat(sizes)
    admitted_order = torch.sort(key, stable=True).indices  # stable: ties keep each layer's own order
    spent = floor + torch.cumsum(delta[admitted_order], 0)
    admitted = int((spent <= weight_budget).sum())  # spent never decreases, so this is the fitting prefix
    chosen = admitted_order[:admitted]
    counts = torch.zeros(len(layers), dtype=torch.long).index_add_(0, owner[chosen], size[chosen]) + 1
    return [_mask_of(layer.keep_mask, order, int(c)) for layer, order, c in zip(layers, orders, counts)]


def scheduled_weight_budget(start: int, final: int, event: int, times: int) -> int:
    """Event `event` of `times` aims at start·(final/start)^(event/times): the parameter counterpart of
    KeepRatioPerPruning = KeepRatio^(1/PruningTimes), so every event removes the same fraction."""
    if not 1 <= event <= times:
        raise ValueError(f"event={event} must be in 1..{times}")
    return int(start * (final / start) ** (event / times))
