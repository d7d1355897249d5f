"""`python -m basel_app.evaluate [overrides]`: any model on a task's benchmarks, without compressing it.

The model is the `model` group's (a hub id, `model.path=<local dir>`, or `model.path=<a compressed_model
dir>`); the task's evaluation is the teacher-forced answer loss on its held-out items plus its benchmarks
(`basel_app.evaluation.benchmarks`). The compression pipeline calls the same `evaluate_on_task` before and
after compressing, so both report the same numbers the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig
from torch import nn

from basel_app.allocator import allocator_in_use
from basel_app.cli import run_validated
from basel_app.config.schema import EvalConfig, EvaluateConfig, ModelConfig, TrainerConfig, register_schema
from basel_app.data import TaskDataModule
from basel_app.decomposition_cache import DecompositionCache
from basel_app.evaluation.answer_loss import answer_loss
from basel_app.evaluation.benchmarks import TASK_BENCHMARKS, BenchmarkSettings, run_benchmarks
from basel_app.files import atomic_write_json
from basel_app.lit.module import AnswerLossModule
from basel_app.lit.trainer import build_eval_trainer, build_logger, inference_forward_context
from basel_app.models import check_model_source, is_compressed_dir, load_compressed, load_model, read_metadata
from basel_app.models.quantization import quantize_linears

register_schema()


def benchmark_names(eval_cfg: EvalConfig, task_name: str) -> list[str]:
    return list(eval_cfg.benchmarks) if eval_cfg.benchmarks is not None else list(TASK_BENCHMARKS[task_name])


def evaluate_on_task(
    model: nn.Module,
    tokenizer: Any,
    datamodule: TaskDataModule,
    eval_cfg: EvalConfig,
    trainer_cfg: TrainerConfig,
    logger: Logger | None,
    out: Path,
) -> dict[str, Any]:
    """Teacher-forced answer loss/perplexity on the task's held-out items and on its validation split (if
    any), and the task's benchmarks.

    All of it runs under the trainer's precision (bf16 autocast with bf16-mixed); losses and log-probabilities
    are computed from the logits in float32 or wider.
    """
    if not eval_cfg.enabled:
        return {}
    start = time.perf_counter()
    trainer = build_eval_trainer(trainer_cfg, logger, out)
    (result,) = trainer.validate(AnswerLossModule(model), datamodule=datamodule, verbose=False)
    settings = BenchmarkSettings(
        limit=eval_cfg.limit, batch_size=eval_cfg.batch_size, max_new_tokens=eval_cfg.max_new_tokens,
        context_length=eval_cfg.context_length, stride=eval_cfg.stride, code_timeout_s=eval_cfg.code_timeout_s,
        system_prompt=datamodule.task.system_prompt, max_length=datamodule.max_length,
    )
    # The rest runs outside Lightning, on the trainer's device: validate's teardown has moved the model back to
    # the CPU, where a GPU run's generation would take hours.
    home = next(model.parameters()).device
    model.to(trainer.strategy.root_device)
    try:
        # The loss on training records held out for choosing settings (task.validation_samples).
        held_out = datamodule.validation_dataset
        with inference_forward_context(trainer):
            validation = None if held_out is None else answer_loss(model, tokenizer, held_out.items,
                                                                   datamodule.eval_batch_size)
        benchmarks = run_benchmarks(model, tokenizer, benchmark_names(eval_cfg, datamodule.task.name), settings,
                                    lambda: inference_forward_context(trainer))
    finally:
        model.to(home)
    return {
        "answer_loss": result["eval/answer_loss"],
        "answer_ppl": result["eval/answer_ppl"],
        "answer_tokens": int(result["eval/answer_tokens"]),
        "items": len(datamodule.eval_dataset),
        "precision": trainer.precision,
        "device": str(trainer.strategy.root_device),
        "validation": validation,
        "benchmarks": benchmarks,
        "seconds": round(time.perf_counter() - start, 2),
    }


def headline_numbers(evaluation: dict[str, Any], prefix: str) -> dict[str, float]:
    """The scalar results (loss, accuracies, pass@1, perplexity) flattened for a logger."""
    numbers = {f"{prefix}/{k}": float(v) for k, v in evaluation.items() if k.startswith("answer_")}
    if evaluation.get("validation"):
        numbers[f"{prefix}/validation_loss"] = float(evaluation["validation"]["answer_loss"])
    for name, result in evaluation.get("benchmarks", {}).items():
        numbers.update({f"{prefix}/{name}/{k}": float(v) for k, v in result.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
    return numbers


def load_any_model(cfg: ModelConfig, cache: DecompositionCache) -> tuple[nn.Module, Any, dict[str, Any]]:
    """The `model` group's model (a GGUF file dequantised once per `cache`), or a compressed_model/ directory
    given as `model.path`."""
    if cfg.path and is_compressed_dir(cfg.path):
        model, tokenizer = load_compressed(cfg.path)
        return model, tokenizer, {"source": "compressed", "path": str(Path(cfg.path).absolute()),
                                  **read_metadata(cfg.path)}
    loaded = load_model(cfg, cache)
    return loaded.model, loaded.tokenizer, loaded.provenance


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Cheap checks first: a bad model source or data file fails (a ConfigError) before any loading.
    if not (cfg.model.path and is_compressed_dir(cfg.model.path)):
        check_model_source(cfg.model)
    # eval.limit bounds the teacher-forced items too, so a quick look stays quick.
    limit = cfg.eval.limit
    task = replace(cfg.task, max_eval_samples=min(filter(None, (cfg.task.max_eval_samples, limit)), default=None))
    datamodule = TaskDataModule.from_config(task, seed=cfg.seed)
    datamodule.load_records()
    logger = build_logger(cfg.logger, out, run_name=out.name)
    model, tokenizer, provenance = load_any_model(cfg.model, DecompositionCache.from_config(cfg.cache))
    if cfg.quantize != "none":
        quantize_linears(model, cfg.quantize)
    datamodule.attach_tokenizer(tokenizer)
    datamodule.setup("validate")
    results = {
        "model": provenance,
        "quantize": cfg.quantize,
        "task": cfg.task.name,
        "allocator": allocator_in_use(),
        "eval": evaluate_on_task(model, tokenizer, datamodule, cfg.eval, cfg.trainer, logger, out),
    }
    atomic_write_json(out / "metrics.json", results)
    logger.log_metrics(headline_numbers(results["eval"], "eval"))
    logger.save()
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_validated(cfg, evaluate)


if __name__ == "__main__":
    main()
