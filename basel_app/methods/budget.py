"""The size budget of a run, resolved against the input model before any decomposition.

Every method takes one of:
- `keep_ratio`: the paper's budget, the fraction of each layer's singular-value mass kept;
- `compression_ratio`: original parameters / compressed parameters (all of the model, embeddings,
  norms and head included, tied tensors once), hit from below within one basis per layer;
- `target_params`: the compressed model's parameter count, the same way.

A parameter budget is checked here against what the method can reach (one basis, plus r̃ new ones, in
every targeted layer), so an impossible target fails before the expensive work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from basel_app.config.errors import ConfigError
from basel_app.config.schema import MethodConfig
from basel_app.lowrank import (
    LayerBases,
    keep_within,
    layer_weight_params,
    mass_keep_mask,
    per_step_keep_ratio,
    scheduled_weight_budget,
)


@dataclass(frozen=True)
class SizeBudget:
    """A resolved budget. Parameter budgets count the whole model; `fixed_params` is what no method
    changes (everything but the targeted weights), so the targeted layers get the rest."""

    keep_ratio: float | None
    target_params: int | None
    fixed_params: int
    original_params: int
    allocation: str = "per_layer"
    rank_multiple: int = 1  # final ranks rounded to multiples of it (allocation.py); intermediate events are not

    @property
    def kind(self) -> str:
        return "keep_ratio" if self.target_params is None else "params"

    @property
    def weight_budget(self) -> int:
        assert self.target_params is not None
        return self.target_params - self.fixed_params

    def final_masks(self, layers: list[LayerBases]) -> list[torch.Tensor]:
        """One-shot: the masks that meet the budget in one step."""
        return self._last_masks(layers, self.keep_ratio)

    def _last_masks(self, layers: list[LayerBases], mass_ratio: float | None) -> list[torch.Tensor]:
        """The masks the run ends with: the budget met, ranks rounded to `rank_multiple`."""
        if self.target_params is None:
            return [mass_keep_mask(b.mass, b.keep_mask, mass_ratio, b.priority, self.rank_multiple, b.extra)
                    for b in layers]
        return keep_within(layers, self.weight_budget, self.allocation, dense_cap=True,
                           rank_multiple=self.rank_multiple)

    def event_masks(self, layers: list[LayerBases], event: int, times: int, start_weights: int) -> list[torch.Tensor]:
        """Pruning event `event` of `times`: each removes the same fraction, the last meets the budget.

        Mass: every layer keeps keep_ratio^(1/times) of its kept mass. Parameters: the uncapped weight
        count k(n+m) follows start·(target/start)^(event/times) from `start_weights` (the count at full
        rank), so ranks shrink gradually even while a layer is above break-even; the last event counts
        dense layers as nm, which is what the recomposed model stores.
        """
        ratio = per_step_keep_ratio(self.keep_ratio, times) if self.target_params is None else None
        if event == times:
            return self._last_masks(layers, ratio)
        if self.target_params is None:
            return [mass_keep_mask(b.mass, b.keep_mask, ratio, b.priority) for b in layers]
        aim = scheduled_weight_budget(start_weights, self.weight_budget, event, times)
        return keep_within(layers, aim, self.allocation, dense_cap=False)

    def describe(self, achieved_params: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "keep_ratio": self.keep_ratio,
            "target_params": self.target_params,
            "target_compression_ratio": None if self.target_params is None else self.original_params / self.target_params,
            "allocation": self.allocation,
            "rank_multiple": self.rank_multiple,
        }
        if achieved_params is not None:
            out["achieved_params"] = achieved_params
            if self.target_params is not None:
                out["relative_error"] = achieved_params / self.target_params - 1
        return out


def fixed_parameters(model: nn.Module, targets: dict[str, nn.Linear]) -> int:
    """Parameters outside the targeted weights (tied tensors once). Call it after `untie_from_embedding`: a
    targeted tied head then has its own weight, and the embedding stays and counts here."""
    target_ids = {id(layer.weight) for layer in targets.values()}
    unique = {id(p): p.numel() for p in model.parameters() if id(p) not in target_ids}
    return sum(unique.values())


def resolve_budget(method: MethodConfig, original_params: int, fixed_params: int, targets: dict[str, nn.Linear],
                   extra: int) -> SizeBudget:
    """The run's budget from `method` (keep_ratio / compression_ratio / target_params, allocation), checked
    against the model: raises ConfigError naming the value when no allocation can reach it. `extra` is the
    number of new bases every layer keeps (r̃; 0 for the one-shot methods)."""
    original, fixed = original_params, fixed_params
    if method.compression_ratio is not None:
        target = int(original / method.compression_ratio)
        name, value = "method.compression_ratio", method.compression_ratio
    elif method.target_params is not None:
        target = int(method.target_params)
        name, value = "method.target_params", method.target_params
    else:
        return SizeBudget(method.keep_ratio, None, fixed, original, method.allocation, method.rank_multiple)
    if target >= original:
        raise ConfigError(
            f"{name}={value} asks for {target:,} parameters, not fewer than the model's {original:,}; "
            "give a target below the model's size (compression_ratio > 1)"
        )
    smallest = fixed + sum(
        int(layer_weight_params(layer.out_features, layer.in_features, 1 + extra)) for layer in targets.values()
    )
    if target < smallest:
        raise ConfigError(
            f"{name}={value} asks for {target:,} parameters, but the smallest model this method can make has "
            f"{smallest:,} (one basis plus additional_dim={extra} per targeted layer, and {fixed:,} parameters "
            f"outside the targeted layers): at most compression_ratio={original / smallest:.3f}; target more "
            "layers, lower method.additional_dim, or ask for less"
        )
    return SizeBudget(None, target, fixed, original, method.allocation, method.rank_multiple)
