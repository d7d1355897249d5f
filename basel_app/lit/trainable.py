"""Which parameters train in each stage, chosen by module type, never by parameter names.

A selector only names the parameters; `CompressionModule` applies the one rule (`set_trainable`: those
train, everything else is frozen) when it builds the optimizer."""

from __future__ import annotations

from torch import nn

from basel_app.lowrank import LowRankLinear, basel_layers


def reparameterized_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Keep and prune phases: s̃, Ũ, Ṽ of every BaselLinear (plus U, V with free bases)."""
    return [p for layer in basel_layers(model).values() for p in layer.trainable_parameters()]


def all_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Post-fine-tuning of the whole compressed model (the paper's choice)."""
    return list(model.parameters())


def thin_factor_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Post-fine-tuning of the recomposed thin factors only."""
    return [p for m in model.modules() if isinstance(m, LowRankLinear) for p in m.parameters()]


POST_FINETUNE_SELECTORS = {"all": all_parameters, "lowrank": thin_factor_parameters}
