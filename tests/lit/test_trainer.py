"""`trainer.precision`: `auto` resolves by the hardware, in one place, and every Trainer gets the resolved value."""

from __future__ import annotations

import pytest

from basel_app.config.schema import TrainerConfig
from basel_app.lit import trainer as trainer_module
from basel_app.lit.trainer import build_eval_trainer, build_trainer, resolve_precision


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
