"""Builds the Lightning pieces from config: the logger and one Trainer per stage."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy

from basel_app.config.schema import LoggerConfig, TrainerConfig
from basel_app.lit.checkpoints import StageCheckpoints
from basel_app.preemption import Preemption

log = logging.getLogger(__name__)

# The data module restores the sampler's position itself (TaskDataModule.load_state_dict), so
# Lightning's warning about resuming mid-epoch with a non-stateful loader does not apply.
warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")


def hardware_has_bf16(accelerator: str) -> bool:
    """Whether `accelerator` computes bf16 matmuls natively: AVX512-bf16 or AMX on CPUs, bf16 support on GPUs.

    Other accelerators (mps, tpu, ...) are not probed and answer False.
    """
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator in ("cpu", "auto"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(cfg: TrainerConfig) -> str:
    """`trainer.precision` as Lightning takes it: `auto` becomes bf16-mixed where the hardware has bf16, else 32-true.

    bf16-mixed autocasts the matmuls to bf16 and keeps the parameters that train (s̃ included) and their optimizer
    state in float32, the frozen bases in bf16 (`CompressionModule.configure_model`); on SmolLM2 a CPU training
    step is ~1.7x faster (docs/BENCHMARKS.md, "Throughput").
    """
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16-mixed" if hardware_has_bf16(cfg.accelerator) else "32-true"


def mixed_precision_dtype(precision: str) -> torch.dtype | None:
    """The dtype a mixed `precision` autocasts products to (None: it does not autocast)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def wandb_mode(configured: str) -> str:
    """`auto`: online only when the user has set W&B up (an API key or a netrc login), else offline."""
    if configured != "auto":
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    logged_in = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if logged_in else "offline"


def build_logger(cfg: LoggerConfig, output_dir: Path, run_name: str) -> Logger:
    if cfg.name == "csv":
        # One dir per attempt: a resumed run would otherwise overwrite the first attempt's metric history.
        attempt = len(list((output_dir / "csv").glob("attempt_*")))
        return CSVLogger(save_dir=output_dir, name="csv", version=f"attempt_{attempt}")
    mode = wandb_mode(cfg.mode)
    log.info("W&B logging %s into %s", mode, output_dir / "wandb")
    return WandbLogger(project=cfg.project, name=run_name, save_dir=str(output_dir), mode=mode)


# What Lightning's launcher puts in the environment of the process that starts the others.
LAUNCH_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def processes(cfg: TrainerConfig) -> Iterator[None]:
    """Under ddp, start the other processes at the top of the run and join them in one process group; at its
    end leave the group and wait for them, so that the next job of a Hydra sweep starts its own.

    Lightning's launcher runs this same command line again once per extra local process (Hydra's run dir
    passed on, so every rank works in one output dir; within a sweep, `cli.sweep_job_as_a_run` makes that
    command line this job's); each runs the whole pipeline, and the Trainers of
    every stage find the group already there. Starting them here rather than at the first `fit` means every
    step before training (loading, evaluation, the saves) can already wait for rank 0 or share its result.
    """
    if cfg.world_size == 1:
        yield
        return
    environment = {key: os.environ.get(key) for key in LAUNCH_ENVIRONMENT}
    fabric = L.Fabric(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy="ddp")
    fabric.launch()
    log.info("rank %d of %d started", fabric.global_rank, fabric.world_size)
    yield  # on an error, leave as Lightning does: its observer ends the processes that fail in turn
    if dist.is_initialized():
        dist.destroy_process_group()
    for child in getattr(fabric.strategy.launcher, "procs", []):  # the processes this one started, if any
        child.wait()
    for key, value in environment.items():  # else the next job would take itself for a started child
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def single_process(cfg: TrainerConfig) -> TrainerConfig:
    """`cfg` for work that rank 0 does alone (evaluation): one device, no strategy."""
    return replace(cfg, strategy="auto", devices=1, num_nodes=1)


def build_trainer(
    cfg: TrainerConfig,
    *,
    max_epochs: int,
    logger: Logger | None,
    callbacks: list[Callback],
    checkpoint_dir: Path | None,
    root_dir: Path,
    preemption: Preemption | None = None,
) -> L.Trainer:
    """A Trainer for one stage; with `checkpoint_dir`, it checkpoints every N steps, every epoch and on SIGTERM."""
    if checkpoint_dir is not None:
        callbacks = [*callbacks, StageCheckpoints(checkpoint_dir, cfg.checkpoint_every_n_steps, preemption)]
    return L.Trainer(
        **_shared_trainer_args(cfg, logger, root_dir),
        max_epochs=max_epochs,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val,
        log_every_n_steps=cfg.log_every_n_steps,
        enable_checkpointing=checkpoint_dir is not None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the data module's sampler gives each rank its own part of a batch
        limit_val_batches=0,  # evaluation runs before and after compression, not during it
        callbacks=callbacks,
    )


def build_eval_trainer(cfg: TrainerConfig, logger: Logger | None, root_dir: Path) -> L.Trainer:
    return L.Trainer(**_shared_trainer_args(cfg, logger, root_dir), enable_checkpointing=False)


@contextlib.contextmanager
def inference_forward_context(trainer: L.Trainer) -> Iterator[None]:
    """The trainer's forward context (bf16 autocast under bf16-mixed) with autocast's weight-cast cache on.

    Lightning's AMP plugin turns the cache off, so every forward casts every weight again; a decoding step
    is one forward of a few tokens, for which those casts cost more than the step itself (docs/BENCHMARKS.md,
    "Greedy generation in the pipeline's evaluation"). The cache lives until the context ends.
    """
    with trainer.precision_plugin.forward_context():
        device = trainer.strategy.root_device.type
        if not torch.is_autocast_enabled(device):
            yield
            return
        with torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=True):
            yield


def strategy(cfg: TrainerConfig) -> str | Strategy:
    """Lightning's strategy for `trainer.strategy`. Under ddp every parameter that trains takes part in every
    step (CompressionModule freezes the rest before the strategy wraps the model), so DDP needs no search for
    unused parameters. fsdp is FSDP2 data parallelism over every process (`lit/sharding.py`); checkpoints are
    consolidated into one file on rank 0, the same format as every other strategy's."""
    if cfg.strategy != "fsdp":
        return cfg.strategy
    return ModelParallelStrategy(data_parallel_size=cfg.world_size, tensor_parallel_size=1,
                                 save_distributed_checkpoint=False)


def _shared_trainer_args(cfg: TrainerConfig, logger: Logger | None, root_dir: Path) -> dict[str, Any]:
    """Where and in what precision every Trainer of a run runs, and where it logs."""
    return {
        "accelerator": cfg.accelerator,
        "devices": cfg.devices,
        "strategy": strategy(cfg),
        "num_nodes": cfg.num_nodes,
        "precision": resolve_precision(cfg),
        "enable_progress_bar": cfg.enable_progress_bar,
        "enable_model_summary": False,
        "logger": logger if logger is not None else False,
        "default_root_dir": root_dir,
    }
