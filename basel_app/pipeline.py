"""`run(cfg)`: compress a model with one method end to end, each step in dependency order.

1. Check everything that can be checked without the model (config, model source, data files) so a
   mistake costs seconds.
2. Load the input model; fix the pruning schedule on the tokenized data, choose the target layers (once:
   every later step gets them) and resolve the size budget against them (an impossible one fails here);
   evaluate.
3. Stage 0 (optional, `method.pre_finetune_epochs`) — fine-tune the whole input model on the task.
4. Stage 1 — Basel/BSI: reparameterize (Eq. 3; with `method.init` != svd, on a one-shot baseline's
   factorisation from calibration batches), one `Trainer.fit` of the keep and prune phases, then
   recompose. One-shot baselines: calibrate on training batches, factor, truncate. Then save the result
   (and, for Basel/BSI, `kept_bases.json`: which of the input's bases each layer kept).
   The dense reference (`method=finetune`) skips it.
5. Stage 2 — another `Trainer.fit`: post-fine-tune the compressed model (the same for every method).
6. Evaluate, then write `compressed_model/`, the pictures (`spectra.png`, `ranks.png`) and, last, `metrics.json`
   (each complete or absent).

Stages 0 and 1 each end in a saved model (a stage boundary), so a resumed run that finds one skips
what produced it; within a stage, a run dir that holds checkpoints is resumed from the newest that passes
its sha256, and only under the settings they were made with (`run_settings.py`). A boundary that fails its
checksums is removed with every later one, and the stage that wrote it runs again. Unfinished writes of a
killed attempt are removed first. SIGTERM saves a checkpoint when it comes during training and ends the run
with `Preempted` (exit status 75); a NaN or inf in training stops it with `NonFiniteError` (exit status 3)
unless `trainer.on_nonfinite=skip`.

Under `trainer.strategy=ddp` or `fsdp` every process runs this same function (started by `processes`, first);
they train together, each on its part of every batch, and agree on every mask (`PruneScheduler`). Only
rank 0 evaluates and writes files; the others wait for it and take its results (`on_rank_zero`). Under fsdp
a training stage hands back a new, unsharded model (`fit_stage`), so the stages pass the model on by value;
and between stages rank 0 alone holds it: the others hold its module tree on the meta device, and every step
that reads or changes its values (loading, decomposition, recomposition) runs on rank 0 (`on_host`)."""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, replace
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from torch import nn

from basel_app.allocator import allocator_in_use, describe_allocator
from basel_app.cli import sweep_job_as_a_run
from basel_app.clock import PhaseClock
from basel_app.config.errors import ConfigError, CorruptArtifact
from basel_app.config.names import PRUNING_SCORERS
from basel_app.config.schema import MethodConfig, ModelConfig, RunConfig
from basel_app.data import TaskDataModule
from basel_app.distributed import on_rank_zero
from basel_app.decomposition_cache import DecompositionCache
from basel_app.evaluate import evaluate_on_task, headline_numbers
from basel_app.files import atomic_write_json, remove_unfinished_writes
from basel_app.lit.callbacks import (
    BSIImportance,
    KeepPhase,
    MagnitudeScorer,
    PruneScheduler,
    Scorer,
    SpectraRecord,
    full_rank_weights,
)
from basel_app.lit.callbacks.keep_phase import kept_bases, kept_singular_values
from basel_app.lit.callbacks.nonfinite_guard import NonFiniteGuard
from basel_app.lit.checkpoints import checkpoints_dir, newest_good_checkpoint
from basel_app.lit.module import CompressionModule
from basel_app.lit.schedule import LRSchedule
from basel_app.lit.sharding import consolidate, has_storage, meta_replica, on_host
from basel_app.lit.trainable import POST_FINETUNE_SELECTORS, all_parameters, reparameterized_parameters
from basel_app.lit.trainer import build_logger, build_trainer, processes, resolve_precision, single_process
from basel_app.lowrank import (
    compression_ratio,
    count_parameters,
    find_target_linears,
    iterations_per_pruning,
    layer_ranks,
    recompose_layer,
    recompose_model,
    recomposed_singular_values,
    reparameterize,
    state_bytes,
    untie_from_embedding,
)
from basel_app.methods.budget import SizeBudget, fixed_parameters, resolve_budget
from basel_app.lowrank.factorizations import Factorization
from basel_app.methods.distillation import Distillation
from basel_app.methods.one_shot import INIT_FACTORIZATIONS, LazyMapping, factorize_layers, svd_bases_of, truncate_layers
from basel_app.models import (
    check_model_source,
    load_compressed,
    load_model,
    read_metadata,
    save_compressed,
    verify_checksums,
)
from basel_app.models.compressed_io import weight_bytes_on_disk
from basel_app.models.quantization import quantize_linears
from basel_app.plots import save_run_pictures
from basel_app.preemption import Preemption
from basel_app.run_settings import check_and_record_settings
from basel_app.spread import Prefetched

log = logging.getLogger(__name__)

# Basel/BSI runs: which of the input's bases each layer kept, with their relearned weights (`kept_bases`).
KEPT_BASES_FILE = "kept_bases.json"


@dataclass(frozen=True)
class PhasePlan:
    """Optimizer-step positions of the phases (stage 1 counts steps from 0), in steps of one process: under
    DDP every process steps once per global batch, so the steps are those of its own part of the data."""

    steps_per_epoch: int
    prune_start_step: int
    prune_steps: int
    every: int  # IterationsPerPruning

    @classmethod
    def from_config(cls, method: MethodConfig, steps_per_epoch: int) -> PhasePlan:
        prune_steps = steps_per_epoch * method.pruning_epochs
        every = iterations_per_pruning(steps_per_epoch, method.pruning_epochs, method.pruning_times)
        if every < 1:
            raise ConfigError(
                f"method.pruning_times={method.pruning_times} is more than the {prune_steps} optimizer steps of the "
                f"pruning phase ({method.pruning_epochs} epochs x {steps_per_epoch} steps); use at most {prune_steps}, "
                "or more data (task.max_train_samples) or method.pruning_epochs"
            )
        return cls(steps_per_epoch, steps_per_epoch * method.keeping_epochs, prune_steps, every)

    def phase_at(self, step: int) -> str:
        return "keep" if step < self.prune_start_step else "prune"


@dataclass
class RunContext:
    """What every stage of one run shares: its config, data, tokenizer, logger, spectra record, clock, dir."""

    cfg: RunConfig
    tokenizer: Any
    datamodule: TaskDataModule
    logger: Logger
    spectra: SpectraRecord
    clock: PhaseClock
    out: Path
    preemption: Preemption
    cache: DecompositionCache  # decompositions and calibration statistics on disk (cache.enabled)
    distill: Distillation | None = None  # the teacher of stages 1 and 2 (method.distill.alpha > 0)


def hosted(cfg: RunConfig) -> bool:
    """Whether rank 0 alone holds the model between stages (under FSDP: `lit/sharding.py`)."""
    return cfg.trainer.strategy == "fsdp"


def load_input_model(cfg: ModelConfig, cache: DecompositionCache) -> tuple[nn.Module, tuple[Any, dict[str, Any]]]:
    """(model, (tokenizer, provenance)): `load_model`, split as `on_host` takes it."""
    loaded = load_model(cfg, cache)
    return loaded.model, (loaded.tokenizer, loaded.provenance)


def run(cfg: RunConfig) -> dict[str, Any]:
    with sweep_job_as_a_run(), processes(cfg.trainer), Preemption().installed() as preemption:
        return _run(cfg, preemption)


def _run(cfg: RunConfig, preemption: Preemption) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    on_rank_zero(lambda: remove_unfinished_writes(out))  # one rank deletes; the others wait, never racing it
    L.seed_everything(cfg.seed, workers=True)
    clock = PhaseClock()

    # 1. Cheap checks first: a bad model source or data file, or a resume under other settings, fails (a
    # ConfigError) before any loading.
    on_rank_zero(lambda: check_and_record_settings(out, checkpoints_dir(out), asdict(cfg)))
    check_model_source(cfg.model)
    datamodule = TaskDataModule.from_config(cfg.task, seed=cfg.seed, world_size=cfg.trainer.world_size)
    datamodule.load_records()
    logger = build_logger(cfg.logger, out, run_name=out.name)
    log.info("precision: %s (trainer.precision=%s)", resolve_precision(cfg.trainer), cfg.trainer.precision)
    log.info("memory allocator: %s", describe_allocator())
    clock.split("checks")

    # 2. The input model; the exact plan once tokenization has dropped any over-long examples; the targets.
    cache = DecompositionCache.from_config(cfg.cache)
    model, (tokenizer, base_model) = on_host(lambda: load_input_model(cfg.model, cache), hosted(cfg))
    datamodule.attach_tokenizer(tokenizer)
    datamodule.setup("fit")
    plan = PhasePlan.from_config(cfg.method, steps_per_epoch(datamodule, cfg)) if cfg.method.is_pruning else None
    log.info("phase plan: %s", plan)
    original = {"params": count_parameters(model), "bytes": state_bytes(model)}
    target_names, budget = targets_and_budget(cfg, model, original["params"])
    log.info("size budget: %s", budget.describe())
    clock.split("load_model")
    evaluation = {"before": evaluate_once(model, tokenizer, datamodule, cfg, logger, out)}
    clock.split("eval_before")

    ctx = RunContext(cfg, tokenizer, datamodule, logger, SpectraRecord(), clock, out, preemption, cache)

    # 3. Stage 0 (optional, any method): fine-tune the input model on the task; its result is a boundary too.
    checkpoints = checkpoints_dir(out)
    boundary = checkpoints / "recomposed"
    pretuned = checkpoints / "pre_finetuned"
    on_rank_zero(lambda: drop_corrupt_boundaries([pretuned, boundary]))
    if cfg.method.pre_finetune_epochs > 0 and not boundary.is_dir():
        if pretuned.is_dir():
            log.info("stage 0 already done: resuming from %s", pretuned)
            if has_storage(model):
                model.load_state_dict(load_compressed(pretuned)[0].state_dict())
        else:
            model = finetune(ctx, model, all_parameters, cfg.method.pre_finetune_lr, cfg.method.pre_finetune_epochs,
                             checkpoints / "pre_finetune", "pre_finetune")

            def save_stage_0() -> None:
                save_compressed(model, tokenizer, pretuned, metadata={"stage": "pre_finetune"}, overwrite=True)
                shutil.rmtree(checkpoints / "pre_finetune", ignore_errors=True)

            on_rank_zero(save_stage_0)
        clock.split("pre_finetune")
    if cfg.method.distill.alpha > 0:
        # The teacher is the model stage 1 starts from; a resumed run rebuilds it from the same source.
        resumed_past_stage_0 = cfg.method.pre_finetune_epochs > 0 and boundary.is_dir()
        teacher, _ = on_host(lambda: (load_compressed(pretuned)[0] if resumed_past_stage_0 else copy.deepcopy(model),
                                      None), hosted(ctx.cfg))
        ctx.distill = Distillation(teacher, cfg.method.distill.alpha, cfg.method.distill.temperature)

    # 4. Stage 1: keep + prune + recompose (or a one-shot truncation), then its result is saved as the stage
    # boundary, unless an earlier attempt got that far.
    if not cfg.method.compresses:  # the dense reference (method=finetune): straight to post-fine-tuning
        stage1 = {"recomposed_ranks": {}}
    elif boundary.is_dir():
        log.info("stage 1 already done: resuming from %s", boundary)
        model, _ = on_host(lambda: (load_compressed(boundary)[0], None), hosted(ctx.cfg))
        ctx.spectra.stages = json.loads((out / "spectra.json").read_text())
        stage1 = read_metadata(boundary)
    else:
        if cfg.method.is_pruning:
            model, stage1 = compress(ctx, model, target_names, plan, budget)
        else:
            model, stage1 = on_host(lambda: (model, compress_one_shot(ctx, model, target_names, budget)),
                                    hosted(ctx.cfg))
        kept = stage1.pop("kept_bases", None)

        def save_stage_1() -> None:
            atomic_write_json(out / "spectra.json", ctx.spectra.stages)
            if kept is not None:
                atomic_write_json(out / KEPT_BASES_FILE, kept)
            save_compressed(model, tokenizer, boundary, metadata=stage1, overwrite=True)
            shutil.rmtree(checkpoints / "compress", ignore_errors=True)  # the boundary supersedes stage-1 checkpoints

        on_rank_zero(save_stage_1)
    recomposed_ranks = stage1["recomposed_ranks"]

    # 5. Stage 2: post-fine-tune the compressed model.
    if cfg.method.post_finetune_epochs > 0:
        model = finetune(ctx, model, POST_FINETUNE_SELECTORS[cfg.method.post_finetune_params],
                         cfg.method.post_finetune_lr, cfg.method.post_finetune_epochs, checkpoints / "post_finetune",
                         "post_finetune", ctx.distill)
        clock.split("post_finetune")

    # 6. Evaluate and write the results.
    evaluation["after"] = evaluate_once(model, tokenizer, datamodule, cfg, logger, out)
    clock.split("eval_after")
    compressed = {"params": count_parameters(model), "bytes": state_bytes(model)}
    provenance = {"base_model": base_model, "method": cfg.method.name, "task": cfg.task.name,
                  "config": asdict(cfg)}
    model_dir = out / "compressed_model"
    on_rank_zero(lambda: save_compressed(model, tokenizer, model_dir, metadata=provenance, overwrite=True))
    disk_bytes = weight_bytes_on_disk(model_dir)
    clock.split("save")
    quantized = quantize_and_save(ctx, model, provenance, evaluation) if cfg.quantize != "none" else None
    metrics = {
        "method": cfg.method.name,
        "scorer": PRUNING_SCORERS.get(cfg.method.name),
        "init": cfg.method.init if cfg.method.is_pruning else None,
        "score": cfg.method.score if cfg.method.name == "bsi" else None,
        "budget": budget.describe(achieved_params=compressed["params"]),
        "ablation": cfg.ablations,
        "importance": stage1.get("importance"),
        "conditioning": stage1.get("conditioning"),  # SVD-LLM: the layers whose Gram matrix needed damping
        "task": cfg.task.name,
        "model": cfg.model.name,
        "base_model": base_model,
        "params_original": original["params"],
        "params_compressed": compressed["params"],
        "compression_ratio": compression_ratio(original["params"], compressed["params"]),
        "size_bytes_original": original["bytes"],
        "size_bytes_compressed": compressed["bytes"],
        "size_bytes_on_disk": disk_bytes,
        "quantized": quantized,  # quantize=int8|int4: its dir and size on disk (its evaluation: eval.quantized)
        "ranks": layer_ranks(model, recomposed_ranks),
        "eval": evaluation,
        "phase_plan": asdict(plan) if plan else None,
        "wall_time_s": clock.seconds,
        "precision": resolve_precision(cfg.trainer),
        "allocator": allocator_in_use(),  # the wall times depend on it (basel_app.allocator)
        "config": asdict(cfg),
    }

    def write_results() -> None:
        pictures = save_run_pictures(out, ctx.spectra.stages, metrics["ranks"],
                                     run_name=f"{cfg.method.name}, {out.name}")
        atomic_write_json(out / "metrics.json", metrics)  # last: a run dir with metrics.json is a finished run
        log_summary(logger, metrics, pictures)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: nothing left to resume

    on_rank_zero(write_results)
    log.info(
        "compression %.3fx: %d -> %d parameters, %.1f -> %.1f MB; answer loss %s -> %s",
        metrics["compression_ratio"], original["params"], compressed["params"], original["bytes"] / 1e6,
        compressed["bytes"] / 1e6, evaluation["before"].get("answer_loss"), evaluation["after"].get("answer_loss"),
    )
    log.info("compressed model: %s", model_dir)
    log.info("metrics: %s", out / "metrics.json")
    return metrics


def quantize_and_save(
    ctx: RunContext, model: nn.Module, provenance: dict[str, Any], evaluation: dict[str, Any]
) -> dict[str, Any]:
    """Quantize the finished model in place (`quantize`), evaluate it as the float one was (into
    `evaluation["quantized"]`) and save it beside it; returns its dir and size on disk."""
    scheme = ctx.cfg.quantize
    if has_storage(model):
        quantize_linears(model, scheme)
    evaluation["quantized"] = evaluate_once(model, ctx.tokenizer, ctx.datamodule, ctx.cfg, ctx.logger, ctx.out)
    model_dir = ctx.out / f"compressed_model_{scheme}"
    on_rank_zero(lambda: save_compressed(model, ctx.tokenizer, model_dir, metadata={**provenance, "quantize": scheme},
                                         overwrite=True))
    ctx.clock.split("quantize")
    return {"scheme": scheme, "dir": str(model_dir), "size_bytes_on_disk": weight_bytes_on_disk(model_dir)}


def evaluate_once(
    model: nn.Module, tokenizer: Any, datamodule: TaskDataModule, cfg: RunConfig, logger: Logger, out: Path
) -> dict[str, Any]:
    """`evaluate_on_task` on rank 0 alone (one device); every rank gets its result."""
    return on_rank_zero(lambda: evaluate_on_task(model, tokenizer, datamodule, cfg.eval, single_process(cfg.trainer),
                                                 logger, out))


def finetune(
    ctx: RunContext, model: nn.Module, select: Callable[[nn.Module], list[nn.Parameter]], lr: float, epochs: int,
    stage_dir: Path, phase: str, distill: Distillation | None = None,
) -> nn.Module:
    """Task fine-tuning of the `select`ed parameters, resumable from `stage_dir` (stages 0 and 2; stage 2
    distils from `distill`'s teacher when given). Returns the trained model (see `fit_stage`)."""
    method = ctx.cfg.method
    schedule = LRSchedule(method.finetune_warmup, method.finetune_decay)
    module = CompressionModule(model, select, lr, method.weight_decay, distill, schedule)
    return fit_stage(ctx, module, [], epochs, stage_dir, lambda step: phase)


def fit_stage(
    ctx: RunContext, module: CompressionModule, callbacks: list[L.Callback], epochs: int, stage_dir: Path,
    phase_at: Callable[[int], str],
) -> nn.Module:
    """One `Trainer.fit` of a training stage: guarded against NaN/inf, checkpointed into `stage_dir` and resumed
    from its newest good checkpoint, with SIGTERM deferred to the end of the optimizer step.

    Returns the trained model: `module.model`, trained in place; under `trainer.strategy=fsdp` a new plain
    model with its full state on every rank, since FSDP converts the one it trains (`lit/sharding.py`)."""
    guard = NonFiniteGuard(ctx.cfg.trainer.on_nonfinite, phase_at)
    trainer = build_trainer(ctx.cfg.trainer, max_epochs=epochs, logger=ctx.logger, callbacks=[*callbacks, guard],
                            checkpoint_dir=stage_dir, root_dir=ctx.out, preemption=ctx.preemption)
    module.model.train()
    blueprint = meta_replica(module.model) if ctx.cfg.trainer.strategy == "fsdp" else None
    resume_from = on_rank_zero(lambda: newest_good_checkpoint(stage_dir))  # it removes bad ones: one rank only
    with ctx.preemption.deferred():
        trainer.fit(module, datamodule=ctx.datamodule, ckpt_path=resume_from, weights_only=True)
    return module.model if blueprint is None else consolidate(module.model, blueprint)


def drop_corrupt_boundaries(boundaries: list[Path]) -> None:
    """A stage boundary that fails its checksums is never used: it and every later one (built on it) are
    removed, so the run redoes the stage that wrote it."""
    for i, boundary in enumerate(boundaries):
        if not boundary.is_dir():
            continue
        try:
            verify_checksums(boundary)
        except CorruptArtifact as err:
            log.error("%s; removed the stage boundary %s and redoing the stage that wrote it", err, boundary)
            for later in boundaries[i:]:
                shutil.rmtree(later, ignore_errors=True)
            return


def targets_and_budget(cfg: RunConfig, model: nn.Module, original_params: int) -> tuple[list[str], SizeBudget]:
    """The names of the layers the model config targets, and the run's size budget over them (an impossible
    one fails here). A targeted tied head gets its own weight here; the embedding stays.

    Names, not modules: every step looks the layers up in the model it is given (FSDP hands back another
    model), and a dict of the original layers would keep their dense weights alive once they are replaced."""
    targets = find_target_linears(model, cfg.model.target_modules, cfg.model.exclude_modules,
                                  cfg.model.include_tied_head)
    untie_from_embedding(model, targets)
    extra = cfg.method.additional_dim if cfg.method.is_pruning else 0
    sized = cfg.method if cfg.method.compresses else replace(cfg.method, keep_ratio=1.0)  # the dense reference
    budget = resolve_budget(sized, original_params, fixed_parameters(model, targets), targets, extra)
    return list(targets), budget


def linears(model: nn.Module, names: list[str]) -> dict[str, nn.Linear]:
    return {name: model.get_submodule(name) for name in names}


def factorize_targets(
    ctx: RunContext, model: nn.Module, targets: dict[str, nn.Linear], method_name: str
) -> dict[str, Factorization]:
    """Each target's factorisation by a one-shot method, with its statistics measured on
    `method.calibration_batches` seeded training batches (the one-shot stage and Basel's `method.init`)."""
    cfg, method = ctx.cfg, ctx.cfg.method
    device = next(model.parameters()).device

    def calibration() -> list[dict[str, Any]]:
        batches = ctx.datamodule.calibration_batches(method.calibration_batches, seed=cfg.seed)
        return [{key: value.to(device) for key, value in batch.items()} for batch in batches]

    return factorize_layers(method_name, model, targets, calibration, lambda m, b: m(**b).loss, method.asvd_alpha,
                            ctx.cache, calibration_device(cfg))


def calibration_device(cfg: RunConfig) -> torch.device | None:
    """The accelerator the activation statistics run on, one decoder layer at a time, while the model stays
    where it is (the CPU, between stages); None on a CPU run."""
    if cfg.trainer.accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return None


def conditioning(factorizations: dict[str, Factorization]) -> dict[str, str]:
    """SVD-LLM's whitening: the layers whose Gram matrix needed damping or eigh, and how."""
    return {name: f.note for name, f in factorizations.items() if f.note not in ("", "cholesky")}


def compress_one_shot(ctx: RunContext, model: nn.Module, names: list[str], budget: SizeBudget) -> dict[str, Any]:
    """Stage 1 of a one-shot baseline, in place: statistics on training batches, the method's factorisation
    of every targeted layer, truncation to the budget. Returns what stage 1 found (ranks, conditioning)."""
    targets = linears(model, names)
    factorizations = factorize_targets(ctx, model, targets, ctx.cfg.method.name)
    ctx.spectra.add("decomposition", {name: f.values for name, f in factorizations.items()})
    ctx.clock.split("decompose")
    ranks = truncate_layers(model, targets, factorizations, budget)
    ctx.clock.split("truncate")
    return {"recomposed_ranks": ranks, "conditioning": conditioning(factorizations)}


def build_scorer(method: MethodConfig, seed: int) -> Scorer:
    """The pruning criterion the method implies: BSI's Taylor estimate, or Basel's magnitude."""
    if method.name == "bsi":
        importance = method.importance
        return BSIImportance(importance.batches, importance.probes, importance.eps_scale, importance.hvp, method.score,
                             seed=seed, hessian=importance.hessian, curvature_floor=importance.curvature_floor,
                             ema=importance.ema)
    return MagnitudeScorer()


def compress(
    ctx: RunContext, model: nn.Module, names: list[str], plan: PhasePlan, budget: SizeBudget
) -> tuple[nn.Module, dict[str, Any]]:
    """Stage 1 of Basel / BSI (Algorithm 1, lines 1-22): reparameterize the targets, fit the keep and prune
    phases (resumable from stage-1 checkpoints), recompose. Returns the compressed model (see `fit_stage`)
    and what stage 1 found (each layer's rank, BSI's importance records, the bases each layer kept)."""
    cfg, method, spectra = ctx.cfg, ctx.cfg.method, ctx.spectra

    def reparameterized() -> tuple[nn.Module, dict[str, Any]]:
        found: dict[str, Any] = {}
        targets = linears(model, names)
        if method.init == "svd":  # the paper's plain SVD
            factorizations = svd_bases_of(targets, ctx.cache)
        else:
            computed = factorize_targets(ctx, model, targets, INIT_FACTORIZATIONS[method.init])
            found["conditioning"] = conditioning(computed)
            factorizations = LazyMapping(list(computed), computed.pop)  # each handed over once, then freed
        reparameterize(model, targets, additional_dim=method.additional_dim, free_bases=method.free_bases,
                       seed=cfg.seed, factorizations=factorizations)
        return model, found

    model, stage1 = on_host(reparameterized, hosted(ctx.cfg))
    ctx.clock.split("decompose")
    stage_dir = checkpoints_dir(ctx.out) / "compress"
    scorer = build_scorer(method, cfg.seed)
    module = CompressionModule(model, reparameterized_parameters, method.lr, method.weight_decay, ctx.distill)
    callbacks = [
        spectra,
        KeepPhase(method.keeping_epochs, spectra, ctx.clock),
        PruneScheduler(budget, scorer, method.pruning_times, plan.prune_start_step, plan.prune_steps, plan.every,
                       start_weights=full_rank_weights(model)),
    ]
    model = fit_stage(ctx, module, callbacks, method.keeping_epochs + method.pruning_epochs, stage_dir, plan.phase_at)
    ctx.clock.split("prune")

    # Recompose (lines 16-22): each BaselLinear becomes two thin linears by the QR trick, or stays dense.
    def recomposed() -> tuple[nn.Module, dict[str, Any]]:
        spectra.add("pruned", kept_singular_values(model))
        kept = kept_bases(model)
        ranks = recompose_model(model, recompose_spread)
        spectra.add("recomposed", recomposed_singular_values(model, list(ranks)))
        return model, {"recomposed_ranks": ranks, "kept_bases": kept}

    model, found = on_host(recomposed, hosted(ctx.cfg))  # the spectra are rank 0's to write
    ctx.clock.split("recompose")
    return model, {**stage1, **found, "importance": scorer.records}


def recompose_spread(layers: dict[str, nn.Module]) -> Prefetched:
    """Each reparameterised layer's QR recomposition, one layer per serving rank a round (`spread`)."""
    return Prefetched(list(layers), lambda name: (recompose_layer, (layers[name],)))


def log_summary(logger: Logger, metrics: dict[str, Any], pictures: dict[str, Path]) -> None:
    """The headline numbers as metrics, and the run's pictures (spectra, ranks) where the logger takes images."""
    summary = {key: float(metrics[key]) for key in ("compression_ratio", "params_compressed", "size_bytes_compressed")}
    for when in ("before", "after"):
        summary.update(headline_numbers(metrics["eval"][when], f"eval_{when}"))
    logger.log_metrics(summary)
    if isinstance(logger, WandbLogger):
        for key, path in pictures.items():
            logger.log_image(key, [str(path)])
    logger.save()


def steps_per_epoch(datamodule: TaskDataModule, cfg: RunConfig) -> int:
    """Optimizer steps per epoch (Lightning steps on a partial accumulation at the epoch's end)."""
    return math.ceil(datamodule.num_train_batches / cfg.trainer.accumulate_grad_batches)

