"""What both command lines share: one log stream, and config errors as one line before any work."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from basel_app.config.errors import ConfigError, NonFiniteError, Preempted

log = logging.getLogger("basel_app")


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


# Libraries that install their own console handler when imported (lightning's "INFO: ..." on the
# `lightning` logger itself), on top of the root handler Hydra configures: each line would print twice.
OWN_HANDLER_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics")


def route_lightning_logs_through_hydra() -> None:
    """Drop the libraries' own console handlers so each line is printed once, by Hydra's root handler."""
    for name in OWN_HANDLER_LOGGERS:
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropLightningTips())


def run_validated(cfg: DictConfig, job: Callable[[Any], Any]) -> None:
    """Validate `cfg` into its dataclasses (types, ranges, cross-field rules), then run `job` on them.

    The errors a user must act on end the process with one line and their own exit status: a ConfigError
    (a bad value or input file, or a corrupt artifact: 2), a NonFiniteError (training diverged: 3), Preempted
    (SIGTERM; a checkpoint was saved, re-run to continue: 75).
    """
    route_lightning_logs_through_hydra()
    try:
        job(OmegaConf.to_object(cfg))
    except (ConfigError, NonFiniteError, Preempted) as err:
        log.error("%s", err)
        sys.exit(err.exit_code)
