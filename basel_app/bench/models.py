"""The models a benchmark runs on, named as the `model` config group names them (`smollm2_135m`,
`tiny_random`, ...), and the run config around them, composed through Hydra exactly as a run would."""

from __future__ import annotations

from typing import Any

from hydra import compose, initialize
from omegaconf import OmegaConf

from basel_app.config.schema import RunConfig, register_schema
from basel_app.decomposition_cache import DecompositionCache
from basel_app.models import load_model


def run_config(overrides: list[str] = ()) -> RunConfig:
    """The config `python -m basel_app <overrides>` would run with (its output dir unused)."""
    register_schema()
    with initialize(version_base="1.3", config_path="../../conf"):
        cfg = compose("config", overrides=["output_dir=unused", *overrides])
    return OmegaConf.to_object(cfg)


def load(name: str) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of `model=<name>`; a GGUF file is dequantised once per `cache.dir`."""
    cfg = run_config([f"model={name}"])
    loaded = load_model(cfg.model, DecompositionCache.from_config(cfg.cache))
    return loaded.model.eval(), loaded.tokenizer
