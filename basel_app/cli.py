"""What both command lines share: one log stream, config errors as one line before any work, and a run that
ends in an error marked as failed in its output dir."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from basel_app.config.errors import ConfigError, NonFiniteError, Preempted
from basel_app.distributed import world_rank
from basel_app.files import atomic_write_json

log = logging.getLogger("basel_app")

# Left in a run dir by a run that ended in an error: {"error": "<type>: <message>"}. A run killed outright
# (SIGKILL, a lost node) leaves neither it nor metrics.json.
FAILED_MARKER = "failed.json"


@contextlib.contextmanager
def sweep_job_as_a_run() -> Iterator[None]:
    """Within a Hydra sweep (`-m`), the command line and run dir are this job's: its own overrides, no `-m`,
    its output dir. Lightning's DDP launcher passes `sys.argv` and Hydra's `run.dir` on to the processes it
    starts, which would otherwise start the whole sweep again in every one, in a sweep dir of its own
    wherever the dir names `${now:...}`. Outside a sweep it changes nothing."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        yield
        return
    hydra_cfg, argv = HydraConfig.get(), sys.argv
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv


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
    (SIGTERM; a checkpoint was saved, re-run to continue: 75). Any error leaves `FAILED_MARKER` in the output
    dir (what `python -m basel_app.report` lists a failed run by); a new attempt on that dir removes it first.
    """
    route_lightning_logs_through_hydra()
    marker = Path(cfg.output_dir) / FAILED_MARKER
    marker.unlink(missing_ok=True)
    try:
        job(OmegaConf.to_object(cfg))
    except Exception as err:
        if world_rank() == 0:  # under DDP rank 0's own error, not the others' "rank 0 failed"
            atomic_write_json(marker, {"error": f"{type(err).__name__}: {err}"})
        if not isinstance(err, (ConfigError, NonFiniteError, Preempted)):
            raise
        log.error("%s", err)
        sys.exit(err.exit_code)
