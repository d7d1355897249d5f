"""Which parameters train in each stage, chosen by module type, never by parameter names."""

from __future__ import annotations

from torch import nn

from basel_app.lowrank import LowRankLinear, basel_layers


def _train_only(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return params


def reparameterized_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Keep and prune phases: s̃, Ũ, Ṽ of every BaselLinear (plus U, V with free bases)."""
    return _train_only(model, [p for layer in basel_layers(model).values() for p in layer.trainable_parameters()])


def all_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Post-fine-tuning of the whole compressed model (the paper's choice)."""
    return _train_only(model, list(model.parameters()))


def thin_factor_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Post-fine-tuning of the recomposed thin factors only."""
    modules = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    return _train_only(model, [p for m in modules for p in m.parameters()])


POST_FINETUNE_SELECTORS = {"all": all_parameters, "lowrank": thin_factor_parameters}
