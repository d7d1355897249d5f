"""`trainer.precision`: `auto` resolves by the hardware, in one place, and every Trainer gets the resolved value."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from basel_app.config.schema import TrainerConfig
from basel_app.lit import trainer as trainer_module
from basel_app.lit.module import CompressionModule
from basel_app.lit.trainable import reparameterized_parameters
from basel_app.lit.trainer import build_eval_trainer, build_trainer, inference_forward_context, resolve_precision
from basel_app.lowrank import find_target_linears, reparameterize

from ..weight_casts import CountWeightCasts
from .test_distill import batches, tiny_llama


@pytest.mark.parametrize(("has_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_follows_the_hardware(monkeypatch, tmp_path, has_bf16, expected):
    monkeypatch.setattr(trainer_module, "hardware_has_bf16", lambda accelerator: has_bf16)
    cfg = TrainerConfig(precision="auto", enable_progress_bar=False)
    assert resolve_precision(cfg) == expected
    fit = build_trainer(cfg, max_epochs=1, logger=None, callbacks=[], checkpoint_dir=None, root_dir=tmp_path)
    assert fit.precision == expected
    assert build_eval_trainer(cfg, None, tmp_path).precision == expected


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_an_explicit_precision_is_kept_whatever_the_hardware(monkeypatch, precision):
    monkeypatch.setattr(trainer_module, "hardware_has_bf16", lambda accelerator: precision == "32-true")
    assert resolve_precision(TrainerConfig(precision=precision)) == precision


def test_the_cpu_probe_answers_for_this_machine():
    assert isinstance(trainer_module.hardware_has_bf16("cpu"), bool)
    assert trainer_module.hardware_has_bf16("mps") is False


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_the_inference_context_casts_a_weight_once_where_lightning_casts_it_every_forward(tmp_path, precision):
    """Lightning's AMP context turns autocast's cache off; the inference context keeps its precision and turns
    the cache on, so repeated forwards (decoding steps) reuse one bf16 copy of each weight."""
    trainer = build_eval_trainer(TrainerConfig(precision=precision, enable_progress_bar=False), None, tmp_path)
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)

    def forwards(context) -> tuple[int, torch.dtype]:
        with context(), CountWeightCasts([layer.weight]) as counter:
            outputs = [layer(x) for _ in range(5)]
        return counter.casts, outputs[-1].dtype

    lightning_casts, lightning_dtype = forwards(trainer.precision_plugin.forward_context)
    casts, dtype = forwards(lambda: inference_forward_context(trainer))
    assert dtype == lightning_dtype == (torch.bfloat16 if precision == "bf16-mixed" else torch.float32)
    if precision == "bf16-mixed":
        assert (lightning_casts, casts) == (5, 1)
    else:
        assert (lightning_casts, casts) == (0, 0)


@pytest.mark.parametrize(("precision", "bases_dtype"), [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_a_mixed_precision_fit_holds_the_frozen_bases_in_its_autocast_dtype(tmp_path, precision, bases_dtype):
    """What trains (s̃, Ũ, Ṽ) stays float32 for AdamW; the frozen U, V are held as autocast would cast them."""
    model = tiny_llama(0)
    layers = reparameterize(model, find_target_linears(model, ["q_proj", "up_proj"]), additional_dim=4)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    module = CompressionModule(model, reparameterized_parameters, 1e-3, 0.0)
    trainer.fit(module, DataLoader(batches(1), batch_size=None))
    for layer in layers.values():
        assert layer.U.dtype == layer.V.dtype == bases_dtype
        assert all(p.dtype == torch.float32 for p in layer.trainable_parameters())
        assert layer.singular_values.grad is not None
