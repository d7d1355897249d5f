"""Which layers get compressed, the in-place swap, and which parameters train.

Targets are chosen by module name, as PEFT's `target_modules` does: a list of suffixes (`"q_proj"` matches
`model.layers.0.self_attn.q_proj`) or one string that is a regular expression over the full name. Only
`nn.Linear` modules are ever replaced (never embeddings, never attention code), so nothing depends on a
transformers version's attention internals.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from basel_app.config.errors import ConfigError
from basel_app.lowrank.factorizations import Factorization
from basel_app.lowrank.reparam import BaselLinear
from basel_app.lowrank.thin import LowRankLinear

log = logging.getLogger(__name__)

Patterns = str | Sequence[str]


def _matches(name: str, patterns: Patterns | None) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def matches_target(name: str, target_modules: Patterns, exclude_modules: Patterns | None = ()) -> bool:
    """True when `name` matches a target pattern and no exclude pattern.

    A list means suffixes on module-name boundaries (`name == t` or `name.endswith("." + t)`); a single
    string is a regex that must match the whole name (`re.fullmatch`). Excludes work the same way.
    """
    return _matches(name, target_modules) and not _matches(name, exclude_modules)


def _tied_to_input_embedding(model: nn.Module, linear: nn.Linear) -> bool:
    """Whether the linear's weight is the input embedding's weight (same tensor, as in tied LMs)."""
    get = getattr(model, "get_input_embeddings", None)
    if get is None:
        return False
    try:
        embedding = get()
    except (AttributeError, NotImplementedError):
        return False
    weight = getattr(embedding, "weight", None)
    if weight is None:
        return False
    if linear.weight is weight:
        return True
    same_memory = linear.weight.device.type != "meta" and linear.weight.data_ptr() == weight.data_ptr()
    return same_memory and linear.weight.shape == weight.shape


def untie_from_embedding(model: nn.Module, targets: dict[str, nn.Linear]) -> None:
    """Give each target whose weight is the input embedding's (a tied head) its own copy, and tell the config
    so transformers does not re-tie it: factoring the head must leave the embedding as it is."""
    for name, linear in targets.items():
        if not _tied_to_input_embedding(model, linear):
            continue
        linear.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=linear.weight.requires_grad)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
        log.info("untied %s from the input embedding (the embedding stays, so both are counted)", name)


def find_target_linears(
    model: nn.Module,
    target_modules: Patterns,
    exclude_modules: Patterns = (),
    include_tied_head: bool = False,
) -> dict[str, nn.Linear]:
    """The `nn.Linear` modules to compress, by name, in module order; `model` is not changed.

    A head whose weight is the input embedding's is skipped by default: factoring it would add
    parameters, since the embedding stays. With `include_tied_head=True` it is a target, still tied:
    `untie_from_embedding` must run before it is changed. Linears inside an already thin `LowRankLinear`
    are never targeted.
    """
    inside_thin = {
        f"{name}.{child}" if name else child
        for name, module in model.named_modules()
        if isinstance(module, LowRankLinear)
        for child, _ in module.named_children()
    }
    all_linears: list[str] = []
    targets: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name in inside_thin:
            continue
        all_linears.append(name)
        if not matches_target(name, target_modules, exclude_modules):
            continue
        if not include_tied_head and _tied_to_input_embedding(model, module):
            log.info("skipping %s: its weight is tied to the input embedding (set include_tied_head to "
                     "untie and factor it)", name)
            continue
        targets[name] = module
    if not targets:
        examples = ", ".join(all_linears[:5]) or "none"
        raise ConfigError(
            f"no nn.Linear matches target_modules={target_modules!r} (exclude_modules={exclude_modules!r}); "
            f"{len(all_linears)} linear layers exist, e.g. {examples}. A list matches name suffixes, a single "
            "string is a regex over the full name."
        )
    return targets


def parent_module(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the attribute at dotted path `name`, and the attribute's own name."""
    parent_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), leaf


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path `name` (which must exist) by `module`."""
    if not name:
        raise ValueError("cannot replace the root module; give a dotted submodule name")
    parent, leaf = parent_module(model, name)
    if not hasattr(parent, leaf):
        raise AttributeError(f"{type(parent).__name__} at {name.rpartition('.')[0] or '<root>'!r} has no submodule {leaf!r}")
    setattr(parent, leaf, module)


def basel_layers(model: nn.Module) -> dict[str, BaselLinear]:
    """Every `BaselLinear` (the Eq. 3 layer of stage 1) in `model`, by name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, BaselLinear)}


def set_trainable(model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The one trainable-parameter rule: exactly `params` require grad, everything else in `model` is frozen."""
    chosen = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    return params


def store_frozen_bases(model: nn.Module, dtype: torch.dtype) -> int:
    """`BaselLinear.store_frozen_bases` for every layer of `model` (after `set_trainable`); the bytes freed."""
    return sum(layer.store_frozen_bases(dtype) for layer in basel_layers(model).values())


def reparameterize(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    additional_dim: int = 32,
    free_bases: bool = False,
    seed: int = 0,
    factorizations: Mapping[str, Factorization] | None = None,
) -> dict[str, BaselLinear]:
    """Replace each target `nn.Linear` by a `BaselLinear` (Eq. 3) in place.

    Each layer's bases are the SVD of its weight (the paper), or, when `factorizations` is given, its
    entry there (a data-aware factorisation of the same weight, e.g. SVD-LLM's whitened one; one per
    target, by name). Which parameters then train is not decided here but by `set_trainable` (the stage's
    selector): the layers' `trainable_parameters()` for the keep and prune phases. Ṽ is drawn from a
    generator seeded with `seed`, so the result does not depend on the global RNG state.
    """
    if factorizations is not None and (missing := [name for name in targets if name not in factorizations]):
        raise ValueError(f"no factorisation given for {len(missing)} target layer(s), e.g. {missing[0]!r}")
    generator = torch.Generator().manual_seed(seed)
    layers: dict[str, BaselLinear] = {}
    for name, linear in tqdm(targets.items(), desc="reparameterize", unit="layer", leave=False):
        factors = None
        if factorizations is not None:
            f = factorizations[name]
            factors = (f.left, f.values, f.right)
        layer = BaselLinear.from_linear(linear, additional_dim, free_bases, generator, factors)
        set_submodule(model, name, layer)
        layers[name] = layer
    n_train = sum(p.numel() for layer in layers.values() for p in layer.trainable_parameters())
    log.info("reparameterized %d linear layers (%s bases, additional_dim=%d, free_bases=%s); %d trainable parameters",
             len(layers), "given" if factorizations is not None else "SVD", additional_dim, free_bases, n_train)
    return layers
