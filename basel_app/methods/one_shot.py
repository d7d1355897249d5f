"""The one-shot baselines (SVD, FWSVD, SVD-LLM, ASVD): factor every targeted layer by the method's
weighted SVD, keep the triplets the budget allows, and replace the layer, in one step.

A layer whose kept rank is at or above break-even keeps its original dense weight: the factored form
would store more, and truncating it would only lose accuracy. The post-fine-tuning that follows is the
same as Basel's (the pipeline's stage 2).

Also here: the plain SVD bases Basel/BSI start from (`svd_bases_of`). Factorisations and the statistics
they weigh by come from a `DecompositionCache` when one is given, so a sweep computes each once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache, partial
from typing import Any

import torch
from torch import nn

from basel_app.config.names import ONE_SHOT_METHODS
from basel_app.decomposition_cache import DecompositionCache, batches_digest, state_digest, tensor_digest
from basel_app.lowrank import LayerBases, LowRankLinear, break_even_rank, set_submodule, svd_bases
from basel_app.lowrank.factorizations import (
    SCALE_FLOOR,
    WHITENING_DAMPING,
    WHITENING_MAX_DAMPING,
    Factorization,
    asvd_factorization,
    fwsvd_factorization,
    svd_factorization,
    svd_llm_factorization,
)
from basel_app.lowrank.reparam import FLOAT64_MAX_NUMEL
from basel_app.methods.budget import SizeBudget
from basel_app.methods.calibration import activation_statistics, row_fisher
from basel_app.spread import Prefetched, Task, serving_device_type

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
    cache: DecompositionCache | None = None,
    device: torch.device | None = None,
) -> dict[str, Factorization]:
    """Each targeted layer's factorisation; `calibration()` yields the task's training batches afresh.
    The activation statistics run one decoder layer at a time on `device` (default: where the model is).

    With a `cache`, each layer's factorisation is loaded when its weight, the method's settings and (for
    the data-aware methods) the statistics' inputs match a stored one; the statistics themselves are
    measured, or loaded, only when some layer misses.
    """
    if method not in ONE_SHOT_METHODS:
        raise ValueError(f"method={method!r} is not a one-shot method; choose one of: {', '.join(ONE_SHOT_METHODS)}")
    cache = cache or DecompositionCache(None)
    statistics = CalibrationStatistics(STATISTIC.get(method), model, targets, calibration, loss_fn, cache, device)
    settings = factorization_settings(method, asvd_alpha)

    def task(name: str) -> Task:
        weight = targets[name].weight.detach()
        if method == "svd":
            return svd_factorization, (weight,)
        if method == "fwsvd":
            return fwsvd_factorization, (weight, statistics.values()[name])
        if method == "svd_llm":
            return svd_llm_factorization, (weight, statistics.values()[name], WHITENING_DAMPING)
        return asvd_factorization, (weight, statistics.values()[name], asvd_alpha)

    @lru_cache(maxsize=None)  # digested once: the prefetch asks whether the cache holds it, then the fetch
    def key(name: str) -> dict[str, Any]:
        weight = targets[name].weight
        inputs = {"layer": name, "statistics": statistics.fingerprint()} if method != "svd" else {}
        return {"weight": tensor_digest(weight), "device": serving_device_type(weight.device), **settings, **inputs}

    # The SVDs of the layers that miss, one per serving rank at a time.
    factorize = Prefetched(list(targets), task, lambda name: not cache.holds(method, partial(key, name)))
    factors = {
        name: cache.fetch_factorization(method, partial(key, name), partial(factorize, name), layer.weight.device)
        for name, layer in targets.items()
    }
    conditioned = {name: f.note for name, f in factors.items() if f.note not in ("", "cholesky")}
    if conditioned:
        log.warning("SVD-LLM: %d of %d Gram matrices needed conditioning: %s", len(conditioned), len(factors),
                    "; ".join(f"{name}: {note}" for name, note in conditioned.items()))
    return factors


def factorization_settings(method: str, asvd_alpha: float) -> dict[str, Any]:
    """What besides the weight (and statistics) decides a factorisation's bits: part of its cache key."""
    settings: dict[str, Any] = {"float64_max_numel": FLOAT64_MAX_NUMEL, "torch": torch.__version__}
    if method in ("fwsvd", "asvd"):
        settings["scale_floor"] = SCALE_FLOOR
    if method == "asvd":
        settings["asvd_alpha"] = asvd_alpha
    if method == "svd_llm":
        settings["damping"] = (WHITENING_DAMPING, WHITENING_MAX_DAMPING)
    return settings


def plain_bases(weight: torch.Tensor) -> Factorization:
    """`svd_bases` as a factorisation (a module-level function: a task `spread` can send to another rank)."""
    return Factorization(*svd_bases(weight))


def svd_bases_of(targets: dict[str, nn.Linear], cache: DecompositionCache | None = None) -> Mapping[str, Factorization]:
    """Basel/BSI's plain bases (`method.init=svd`): each target's `svd_bases`, as `BaselLinear.from_linear`
    takes them, computed (or loaded from `cache`) one layer at a time as `reparameterize` asks for it, or one
    layer per rank at a time while the other ranks serve (`spread`)."""
    cache = cache or DecompositionCache(None)
    settings = factorization_settings("svd", 0.0)

    @lru_cache(maxsize=None)  # digested once: the prefetch asks whether the cache holds it, then the fetch
    def key(name: str) -> dict[str, Any]:
        weight = targets[name].weight
        return {"weight": tensor_digest(weight), "device": serving_device_type(weight.device), **settings}

    compute = Prefetched(list(targets), lambda name: (plain_bases, (targets[name].weight.detach(),)),
                         lambda name: not cache.holds("svd_bases", partial(key, name)))

    def bases(name: str) -> Factorization:
        return cache.fetch_factorization("svd_bases", partial(key, name), partial(compute, name),
                                         targets[name].weight.device)

    return LazyMapping(list(targets), bases)


class LazyMapping(Mapping):
    """{key: value} whose values are produced only when looked up, so only one is held at a time."""

    def __init__(self, keys: list[str], produce: Callable[[str], Any]) -> None:
        self._keys, self._produce = keys, produce

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys:
            raise KeyError(key)
        return self._produce(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys  # without producing the value

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


# The statistic each data-aware method weighs its SVD by (calibration.py).
STATISTIC = {"fwsvd": "row_fisher", "svd_llm": "gram", "asvd": "abs_mean"}


class CalibrationStatistics:
    """One statistic of every target on the calibration batches, measured (or loaded from the cache) on
    first use; its fingerprint (the whole model's state, the targets, the batches) on first use too."""

    def __init__(self, statistic: str | None, model: nn.Module, targets: dict[str, nn.Linear], calibration: Batches,
                 loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor], cache: DecompositionCache,
                 device: torch.device | None = None):
        self.statistic, self.model, self.targets, self.calibration, self.loss_fn = statistic, model, targets, calibration, loss_fn
        self.cache, self.device = cache, device
        self._values: dict[str, torch.Tensor] | None = None
        self._fingerprint: dict[str, Any] | None = None

    def fingerprint(self) -> dict[str, Any]:
        if self._fingerprint is None:
            where = (self.device or next(self.model.parameters()).device).type  # a GPU's sums round differently
            self._fingerprint = {"statistic": self.statistic, "model": state_digest(self.model),
                                 "targets": list(self.targets), "data": batches_digest(self.calibration()),
                                 "device": where}
        return self._fingerprint

    def values(self) -> dict[str, torch.Tensor]:
        """{layer: statistic}: Fisher per output row on the weights' device; |x| mean or X Xᵀ/tokens on the CPU."""
        if self._values is None:
            where = next(iter(self.targets.values())).weight.device if self.statistic == "row_fisher" else "cpu"
            self._values, _ = self.cache.fetch("statistics", self.fingerprint, lambda: (self.measure(), {}), where)
        return self._values

    def measure(self) -> dict[str, torch.Tensor]:
        if self.statistic == "row_fisher":
            return row_fisher(self.model, self.targets, self.calibration(), self.loss_fn)
        stats = activation_statistics(self.model, self.targets, self.calibration(), gram=self.statistic == "gram",
                                      abs_mean=self.statistic == "abs_mean", device=self.device)
        means: dict[int, torch.Tensor] = {}  # per shared record: layers fed one input get one tensor
        for record in stats.values():
            if id(record) not in means:
                means[id(record)] = record.gram_mean if self.statistic == "gram" else record.abs_mean
                record.gram = record.abs_sum = None  # its sum is spent: one extra matrix held at a time
        return {name: means[id(record)] for name, record in stats.items()}


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
