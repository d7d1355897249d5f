"""`python -m basel_app [overrides]`: compose the Hydra config, validate it, run the pipeline."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from basel_app.config.schema import ConfigError, RunConfig, register_schema

log = logging.getLogger("basel_app")
register_schema()


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


def _route_lightning_logs_through_hydra() -> None:
    """Lightning installs its own console handlers; drop them so each line is printed once, by Hydra."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropLightningTips())


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    _route_lightning_logs_through_hydra()
    try:
        run_cfg: RunConfig = OmegaConf.to_object(cfg)  # types, ranges and cross-field rules checked here
        from basel_app.pipeline import run  # heavy imports only once the config is known to be good

        run(run_cfg)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
