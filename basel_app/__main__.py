"""`python -m basel_app [overrides]`: compose the Hydra config, validate it, compress (basel_app.pipeline)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from basel_app.cli import run_validated
from basel_app.config.schema import register_schema

register_schema()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from basel_app.pipeline import run  # heavy imports only once Hydra has composed the config

    run_validated(cfg, run)


if __name__ == "__main__":
    main()
