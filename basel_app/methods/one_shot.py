"""The one-shot baselines (SVD, FWSVD, SVD-LLM, ASVD): factor every targeted layer by the method's
weighted SVD, keep the triplets the budget allows, and replace the layer, in one step.

A layer whose kept rank is at or above break-even keeps its original dense weight: the factored form
would store more, and truncating it would only lose accuracy. The post-fine-tuning that follows is the
same as Basel's (the pipeline's stage 2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from basel_app.config.names import ONE_SHOT_METHODS
from basel_app.lowrank import LayerBases, LowRankLinear, break_even_rank, set_submodule
from basel_app.lowrank.factorizations import (
    Factorization,
    asvd_factorization,
    fwsvd_factorization,
    svd_factorization,
    svd_llm_factorization,
)
from basel_app.methods.budget import SizeBudget
from basel_app.methods.calibration import activation_statistics, row_fisher

log = logging.getLogger(__name__)

# Basel/BSI's data-aware bases (`method.init`, besides the paper's plain "svd"): the one-shot factorisation
# each starts from, so that smallest-|s̃| pruning at step 0 is that baseline's truncation.
INIT_FACTORIZATIONS = {"whitened": "svd_llm", "asvd": "asvd"}

Batches = Callable[[], Iterable[dict[str, torch.Tensor]]]


def factorize_layers(
    method: str,
    model: nn.Module,
    targets: dict[str, nn.Linear],
    calibration: Batches,
    loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    asvd_alpha: float = 0.5,
) -> dict[str, Factorization]:
    """Each targeted layer's factorisation; `calibration()` yields the task's training batches afresh."""
    if method == "svd":
        return {name: svd_factorization(layer.weight) for name, layer in targets.items()}
    if method == "fwsvd":
        fisher = row_fisher(model, targets, calibration(), loss_fn)
        return {name: fwsvd_factorization(layer.weight, fisher[name]) for name, layer in targets.items()}
    if method in ("svd_llm", "asvd"):
        stats = activation_statistics(model, targets, calibration(), gram=method == "svd_llm", abs_mean=method == "asvd")
        if method == "svd_llm":
            factors = {name: svd_llm_factorization(layer.weight, stats[name].gram_mean) for name, layer in targets.items()}
            conditioned = {name: f.note for name, f in factors.items() if f.note != "cholesky"}
            if conditioned:
                log.warning("SVD-LLM: %d of %d Gram matrices needed conditioning: %s", len(conditioned), len(factors),
                            "; ".join(f"{name}: {note}" for name, note in conditioned.items()))
            return factors
        return {
            name: asvd_factorization(layer.weight, stats[name].abs_mean, asvd_alpha) for name, layer in targets.items()
        }
    raise ValueError(f"method={method!r} is not a one-shot method; choose one of: {', '.join(ONE_SHOT_METHODS)}")


@torch.no_grad()
def truncate_layers(
    model: nn.Module, targets: dict[str, nn.Linear], factorizations: dict[str, Factorization], budget: SizeBudget
) -> dict[str, int]:
    """Replace each targeted layer by its truncation under `budget`; returns {name: kept rank}."""
    names = list(targets)
    layers = [
        LayerBases(
            targets[name].out_features, targets[name].in_features,
            torch.ones(factorizations[name].values.numel(), dtype=torch.bool),
            priority=factorizations[name].values.cpu(), mass=factorizations[name].values.cpu(),
        )
        for name in names
    ]
    ranks: dict[str, int] = {}
    for name, mask in zip(names, budget.final_masks(layers)):
        dense = targets[name]
        k = int(mask.sum())
        ranks[name] = k
        if k >= break_even_rank(dense.out_features, dense.in_features):
            continue  # storing it factored would not save anything: keep the original weight
        up, down = factorizations[name].truncated(mask.to(factorizations[name].values.device))
        set_submodule(model, name, LowRankLinear.from_factors(down, up, dense.bias, dense.weight.dtype, dense.weight.device))
    thin_count = sum(isinstance(model.get_submodule(name), LowRankLinear) for name in names)
    log.info("truncated %d layers: %d thin, %d kept dense (mean rank %.1f)", len(names), thin_count,
             len(names) - thin_count, sum(ranks.values()) / max(1, len(ranks)))
    return ranks
