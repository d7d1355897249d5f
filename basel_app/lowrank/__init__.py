"""The low-rank math in pure torch: the Eq. 3 layer, the thin recomposed layer, injection by name
patterns, the pruning schedule, the budget allocation rule, recomposition, the baselines' factorisations,
and parameter/byte accounting."""

from basel_app.lowrank.accounting import (
    compression_ratio,
    count_parameters,
    layer_ranks,
    linear_parameter_count,
    lowrank_parameter_count,
    is_wrapper_tensor,
    state_bytes,
)
from basel_app.lowrank.inject import (
    basel_layers,
    find_target_linears,
    matches_target,
    parent_module,
    reparameterize,
    set_submodule,
    set_trainable,
    store_frozen_bases,
    untie_from_embedding,
)
from basel_app.lowrank.allocation import (
    BudgetError,
    LayerBases,
    keep_within,
    layer_weight_params,
    mass_keep_mask,
    scheduled_weight_budget,
    smallest_weight_params,
)
from basel_app.lowrank.pruning import iterations_per_pruning, per_step_keep_ratio, pruning_events_due
from basel_app.lowrank.recompose import (
    break_even_rank,
    recompose_layer,
    recompose_model,
    recomposed_singular_values,
    thin_svd_of_product,
)
from basel_app.lowrank.reparam import BaselLinear, cheaper_path, decomposition_dtype, svd_bases
from basel_app.lowrank.thin import LowRankLinear

__all__ = [
    "BaselLinear",
    "basel_layers",
    "BudgetError",
    "LayerBases",
    "keep_within",
    "layer_weight_params",
    "scheduled_weight_budget",
    "smallest_weight_params",
    "LowRankLinear",
    "break_even_rank",
    "cheaper_path",
    "compression_ratio",
    "count_parameters",
    "decomposition_dtype",
    "find_target_linears",
    "iterations_per_pruning",
    "layer_ranks",
    "linear_parameter_count",
    "lowrank_parameter_count",
    "mass_keep_mask",
    "matches_target",
    "per_step_keep_ratio",
    "pruning_events_due",
    "recompose_layer",
    "recompose_model",
    "recomposed_singular_values",
    "reparameterize",
    "parent_module",
    "set_submodule",
    "set_trainable",
    "store_frozen_bases",
    "untie_from_embedding",
    "is_wrapper_tensor",
    "state_bytes",
    "svd_bases",
    "thin_svd_of_product",
]
