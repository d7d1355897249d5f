"""The models a benchmark runs on, named as the `model` config group names them (`smollm2_135m`,
`tiny_random`, ...), composed through Hydra exactly as a run would load them."""

from __future__ import annotations

from typing import Any

from hydra import compose, initialize
from omegaconf import OmegaConf

from basel_app.config.schema import ModelConfig, register_schema
from basel_app.models import load_model


def model_config(name: str, overrides: list[str] = ()) -> ModelConfig:
    """The `model=<name>` group of the run config, with `model.*` overrides."""
    register_schema()
    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config", overrides=[f"model={name}", *overrides])
    return OmegaConf.to_object(cfg.model)


def load(name: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of `model=<name>`."""
    loaded = load_model(model_config(name))
    return loaded.model.eval(), loaded.tokenizer
