"""`python -m basel_app [overrides]`: compose the Hydra config, validate it, compress (basel_app.pipeline)."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from basel_app.cli import run_validated
from basel_app.config.schema import RunConfig, refuse_shadowed_budget, register_schema

register_schema()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from basel_app.pipeline import run  # heavy imports only once Hydra has composed the config

    def checked_run(config: RunConfig) -> None:
        refuse_shadowed_budget(config.method, list(HydraConfig.get().overrides.task))
        run(config)

    run_validated(cfg, checked_run)


if __name__ == "__main__":
    main()
