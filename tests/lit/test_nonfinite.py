"""A NaN or inf in training stops the run naming the phase, the step and the layer, before anything diverged is
saved (or, with trainer.on_nonfinite=skip, drops the batch and counts it); evaluation refuses a NaN loss."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from basel_app.cli import run_validated
from basel_app.config.errors import NonFiniteError
from basel_app.lit.module import AnswerLossModule, CompressionModule
from basel_app.pipeline import run

from .test_pipeline import TINY, tiny_config

FAST = ("method.lr=1e-3", "method.post_finetune_lr=3e-4", "eval.enabled=false")  # each stage known by its lr


def poison_gradient(monkeypatch, parameter: str, at_step: int, lr: float) -> None:
    """NaN into `parameter`'s gradient once, at optimizer step `at_step` of the stage trained at `lr`."""
    original_step = CompressionModule.training_step

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == at_step and self.lr == lr:
            handle = dict(self.model.named_parameters())[parameter].register_hook(
                lambda grad: (handle.remove(), torch.full_like(grad, float("nan")))[1])
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(CompressionModule, "training_step", training_step)


# 16 samples / batch 4 = 4 steps per epoch: keep is steps 0-3, prune 4-11; post-fine-tuning restarts at 0.
@pytest.mark.parametrize(("phase", "step", "lr", "layer", "tensor"), [
    ("prune", 6, 1e-3, "model.layers.1.mlp.up_proj", "singular_values"),
    ("post_finetune", 2, 3e-4, "model.norm", "weight"),
])
def test_a_nan_gradient_stops_the_run_naming_phase_step_and_layer(compose_config, tmp_path, monkeypatch, phase, step,
                                                                   lr, layer, tensor):
    poison_gradient(monkeypatch, f"{layer}.{tensor}", step, lr)
    with pytest.raises(NonFiniteError) as caught:
        run(tiny_config(compose_config, tmp_path, *FAST))
    message = str(caught.value)
    assert f"in phase {phase} at step {step}" in message and f"first layer with a non-finite gradient: {layer} ({tensor})" in message
    assert "\n" not in message
    assert not (tmp_path / "compressed_model").exists() and not (tmp_path / "metrics.json").exists()
    assert (tmp_path / "checkpoints" / "recomposed").exists() == (phase == "post_finetune")


def test_skip_drops_the_poisoned_batch_counts_it_and_finishes_finite(compose_config, tmp_path, monkeypatch, caplog):
    poison_gradient(monkeypatch, "model.layers.1.mlp.up_proj.singular_values", 6, 1e-3)
    with caplog.at_level(logging.WARNING):
        run(tiny_config(compose_config, tmp_path, *FAST, "trainer.on_nonfinite=skip"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped the batch of step 6 (phase prune)" in m and "model.layers.1.mlp.up_proj" in m for m in messages)
    assert any(m.startswith("1 batches skipped") for m in messages)
    assert (tmp_path / "compressed_model").is_dir()  # finite weights: save_compressed would refuse others


def test_a_huge_learning_rate_exits_with_the_divergence_status(compose_config, tmp_path, caplog):
    # The run: tiny_random at the CPU scale of the time (q/k/o, keep 70%), in float32, where the weights
    # overflow in post-fine-tuning.
    diverging = ("model=tiny_random", "logger=csv", "trainer.enable_progress_bar=false", "eval.enabled=false",
                 "model.target_modules=[q_proj,k_proj,o_proj]", "task.max_train_samples=32", "method.init=svd",
                 "method.compression_ratio=null", "method.keep_ratio=0.7", "method.distill.alpha=0",
                 "method.lr=1e6", "trainer.precision=32-true")
    with pytest.raises(SystemExit) as caught:
        run_validated(compose_config(*diverging, output_dir=str(tmp_path)), run)
    assert caught.value.code == NonFiniteError.exit_code
    assert any("non-finite gradient in phase" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert not (tmp_path / "compressed_model").exists()


def test_evaluation_refuses_a_nan_answer_loss(compose_config, tmp_path):
    from basel_app.models import load_model

    model = load_model(tiny_config(compose_config, tmp_path).model).model
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    batch = {"input_ids": torch.tensor([[1, 2, 3, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, 2, 3, 4]])}
    with pytest.raises(NonFiniteError, match="answer loss of evaluation batch 0 is nan"):
        AnswerLossModule(model).validation_step(batch, 0)
