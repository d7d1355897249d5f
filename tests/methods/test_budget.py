"""A run's size budget through one-shot truncation: `method.rank_multiple` gives hardware-friendly ranks."""

from __future__ import annotations

import pytest

from basel_app.config.errors import ConfigError
from basel_app.config.schema import MethodConfig
from basel_app.lowrank import count_parameters, find_target_linears
from basel_app.lowrank.factorizations import svd_factorization
from basel_app.lowrank.thin import LowRankLinear
from basel_app.methods.budget import fixed_parameters, resolve_budget
from basel_app.methods.one_shot import truncate_layers

from ..lowrank.helpers import tiny_llama

BLOCK = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RATIO = 1.6


def truncated(multiple: int):
    """(original parameters, budget, the model truncated by SVD to RATIO with `rank_multiple`)."""
    model = tiny_llama()
    original = count_parameters(model)
    targets = find_target_linears(model, BLOCK)
    method = MethodConfig(name="svd", compression_ratio=RATIO, rank_multiple=multiple)
    budget = resolve_budget(method, original, fixed_parameters(model, targets), targets, extra=0)
    truncate_layers(model, targets, {n: svd_factorization(t.weight) for n, t in targets.items()}, budget)
    return original, budget, model


def thin_ranks(model) -> dict[str, int]:
    return {name: m.rank for name, m in model.named_modules() if isinstance(m, LowRankLinear)}


def test_a_compression_ratio_is_met_from_below_with_ranks_in_multiples():
    original, budget, model = truncated(8)
    assert count_parameters(model) <= budget.target_params
    assert original / count_parameters(model) == pytest.approx(RATIO, rel=0.05)
    assert budget.describe()["rank_multiple"] == 8
    ranks = thin_ranks(model)
    assert ranks and all(rank % 8 == 0 or rank == 1 for rank in ranks.values()), ranks
    assert any(rank % 8 for rank in thin_ranks(truncated(1)[2]).values())  # without it, they are not


def test_rank_multiple_below_one_is_refused():
    with pytest.raises(ConfigError, match="method.rank_multiple=0 is not allowed; it must be >= 1"):
        MethodConfig(name="svd", rank_multiple=0)
