"""Distillation in the training step (a tiny Llama, a real Trainer) and through the pipeline for every kind of method."""

from __future__ import annotations

import copy
import csv
import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import LlamaForCausalLM

from basel_app.lit.module import CompressionModule
from basel_app.lit.trainable import all_parameters
from basel_app.methods.distillation import IGNORE_INDEX, Distillation
from basel_app.pipeline import run
from tests.tiny_llama import tiny_llama_config

from .test_pipeline import tiny_config

VOCAB = 64


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(VOCAB))


def batches(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches whose first half (the 'prompt') and padding are unlabelled."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(0, VOCAB, (2, 12), generator=g)
        attention = torch.ones_like(ids)
        attention[1, 9:] = 0
        labels = ids.clone()
        labels[:, :6] = IGNORE_INDEX
        labels[attention == 0] = IGNORE_INDEX
        out.append({"input_ids": ids, "attention_mask": attention, "labels": labels})
    return out


def fit(module: CompressionModule, data: list[dict[str, torch.Tensor]]) -> L.Trainer:
    trainer = L.Trainer(max_steps=len(data), accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(data, batch_size=None))
    return trainer


def step_loss_and_grads(module: CompressionModule, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    module.model.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.model.parameters()]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_alpha_zero_is_exactly_the_plain_ce_step():
    batch = batches(1)[0]
    student = tiny_llama(0)
    plain = step_loss_and_grads(CompressionModule(student, all_parameters, 1e-3, 0.0), batch)
    mixed = step_loss_and_grads(CompressionModule(student, all_parameters, 1e-3, 0.0,
                                                  Distillation(tiny_llama(1), alpha=0.0)), batch)
    assert torch.equal(plain[0], mixed[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], mixed[1]))
    assert torch.equal(plain[0], student(**batch).loss.detach())


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_alpha_one_with_the_student_as_teacher_gives_zero_loss_and_zero_gradient():
    student = tiny_llama(0)
    module = CompressionModule(student, all_parameters, 1e-3, 0.0, Distillation(copy.deepcopy(student), alpha=1.0))
    loss, grads = step_loss_and_grads(module, batches(1)[0])
    assert abs(loss.item()) < 1e-6
    assert max(g.abs().max().item() for g in grads) < 1e-6


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
def test_a_trained_step_changes_the_student_only_and_checkpoints_leave_the_teacher_out(tmp_path):
    student, teacher = tiny_llama(0), tiny_llama(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = CompressionModule(student, all_parameters, 1e-2, 0.0, Distillation(teacher, alpha=0.5, temperature=2.0))
    start = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = fit(module, batches(3))

    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())
    # The optimizer holds the student's parameters only, and the checkpoint only the student's state.
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in student.parameters()}
    assert set(module.state_dict()) == {f"model.{k}" for k in student.state_dict()}
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert set(saved) == set(module.state_dict())


@pytest.fixture
def built_modules(monkeypatch) -> list[CompressionModule]:
    """Every CompressionModule the pipeline builds during the test, in order."""
    modules = []
    original_init = CompressionModule.__init__

    def record(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        modules.append(self)

    monkeypatch.setattr(CompressionModule, "__init__", record)
    return modules


@pytest.mark.parametrize("method", ["basel", "svd"])
def test_the_pipeline_distils_in_every_training_stage_and_records_it(compose_config, tmp_path, built_modules, method):
    """Stage 1 (basel) and stage 2 (both) train with a teacher that is the input model, unchanged by the run."""
    modules = built_modules
    metrics = run(tiny_config(compose_config, tmp_path, f"method={method}", "method.compression_ratio=1.5",
                              "method.distill.alpha=0.5", "method.distill.temperature=2.0", "eval.enabled=false"))
    assert metrics["config"]["method"]["distill"] == {"alpha": 0.5, "temperature": 2.0}
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["method"]["distill"]["alpha"] == 0.5
    assert len(modules) == {"basel": 2, "svd": 1}[method]  # stage 1 of basel; stage 2 of both
    teachers = {id(m.distill.teacher) for m in modules}
    assert len(teachers) == 1  # one teacher shared by the stages
    teacher = modules[0].distill.teacher
    assert modules[0].distill.alpha == 0.5 and modules[0].distill.temperature == 2.0
    assert type(teacher).__name__ == "LlamaForCausalLM"  # dense and uncompressed: the input model
    assert all(not p.requires_grad for p in teacher.parameters())
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    kl = [float(r["train/distill_kl"]) for r in rows if r.get("train/distill_kl")]
    assert kl and all(k > -1e-6 for k in kl)  # KL >= 0 up to rounding (stage 1 starts at the teacher)


def test_alpha_zero_keeps_no_teacher(compose_config, tmp_path, built_modules):
    modules = built_modules
    run(tiny_config(compose_config, tmp_path, "method=svd", "method.compression_ratio=1.5", "eval.enabled=false",
                           "method.distill.alpha=0"))
    assert modules and all(m.distill is None for m in modules)
