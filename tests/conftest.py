"""Shared fixtures: the repo's config directory, a composer for it, and the session's private cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from basel_app.config.schema import register_schema
from basel_app.decomposition_cache import DecompositionCache

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def private_cache_home(tmp_path_factory):
    """Runs a test starts as subprocesses (the command lines) cache their decompositions under a temporary
    XDG_CACHE_HOME, never in the user's ~/.cache (SmolLM2's entries take gigabytes)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def model_cache(private_cache_home):
    """The cache the command lines default to (under the private XDG_CACHE_HOME), for in-process loads: SmolLM2
    is dequantised from its GGUF file once per session, and every later load, in-process or not, reads that."""
    return DecompositionCache(Path(os.environ["XDG_CACHE_HOME"]) / "basel_app")


@pytest.fixture
def compose_config(tmp_path_factory):
    """compose_config(*overrides) -> the composed DictConfig, as `python -m basel_app` would see it, with a
    decomposition cache of its own (never the user's)."""
    register_schema()
    cache_dir = tmp_path_factory.mktemp("decomposition_cache")

    def _compose(*overrides: str, output_dir: str = "unused") -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=[f"output_dir={output_dir}", f"cache.dir={cache_dir}",
                                                            *overrides])

    return _compose
