"""The distillation loss against an explicit float64 softmax/log reference on fresh random logits and masks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from basel_app.methods.distillation import IGNORE_INDEX, Distillation, distillation_kl


def random_case(seed: int, batch: int = 3, length: int = 7, vocab: int = 11):
    """Logits of two different scales, and labels with prompt/padding positions set to IGNORE_INDEX
    (the last row entirely, so a sequence without answer tokens is covered)."""
    g = torch.Generator().manual_seed(seed)
    student = 3 * torch.randn(batch, length, vocab, generator=g)
    teacher = 5 * torch.randn(batch, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[torch.rand(batch, length, generator=g) < 0.4] = IGNORE_INDEX
    labels[-1] = IGNORE_INDEX
    labels[0, 1] = 0  # at least one labelled position
    return student, teacher, labels


def reference_kl(student, teacher, labels, temperature) -> float:
    """τ²·mean over labelled positions of Σ_v p_t (log p_t − log p_s), written out position by position in float64."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] == IGNORE_INDEX:
                continue
            zs, zt = student[b, t].double() / temperature, teacher[b, t].double() / temperature
            zs, zt = zs - zs.max(), zt - zt.max()  # softmax is shift-invariant; exp must not overflow
            log_ps, log_pt = zs - zs.exp().sum().log(), zt - zt.exp().sum().log()  # log p, finite where p underflows
            total += (log_pt.exp() * (log_pt - log_ps)).sum().item()
            count += 1
    return temperature**2 * total / count


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_matches_the_explicit_reference(seed, temperature):
    student, teacher, labels = random_case(seed)
    got = distillation_kl(student, teacher, labels, temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(reference_kl(student, teacher, labels, temperature), rel=1e-5)


def test_half_precision_logits_are_upcast_and_stay_finite():
    student, teacher, labels = random_case(3)
    got = distillation_kl(100 * student.bfloat16(), 100 * teacher.bfloat16(), labels, 1.0)
    assert got.dtype == torch.float32 and math.isfinite(got.item())
    assert got.item() == pytest.approx(
        reference_kl(100 * student.bfloat16().float(), 100 * teacher.bfloat16().float(), labels, 1.0), rel=1e-4
    )


@pytest.mark.parametrize("temperature", [0.5, 2.0, 8.0])
def test_the_temperature_squared_factor_keeps_the_gradient_scale(temperature):
    """d/dz_s [τ²·KL] = τ·(p_s,τ − p_t,τ) / N at every labelled position, 0 elsewhere (Hinton et al.)."""
    student, teacher, labels = random_case(4)
    student.requires_grad_(True)
    distillation_kl(student, teacher, labels, temperature).backward()
    mask = labels[:, 1:] != IGNORE_INDEX
    expected = torch.zeros_like(student)
    soft = lambda z: torch.softmax(z.double() / temperature, dim=-1)  # noqa: E731
    expected[:, :-1] = (temperature * (soft(student.detach()) - soft(teacher)) / mask.sum())[:, :-1].float()
    expected[:, :-1][~mask] = 0
    torch.testing.assert_close(student.grad, expected, rtol=1e-4, atol=1e-7)


def test_identical_distributions_give_zero_loss_and_zero_gradient():
    student, _, labels = random_case(5)
    student.requires_grad_(True)
    loss = distillation_kl(student, student.detach().clone(), labels, 2.0)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert student.grad.abs().max().item() < 1e-7


def test_no_labelled_positions_gives_zero_not_nan():
    student, teacher, labels = random_case(6)
    assert distillation_kl(student, teacher, torch.full_like(labels, IGNORE_INDEX), 1.0).item() == 0.0


class FixedLogits(nn.Module):
    """A 'model' whose logits are a parameter, so the loss mix can be checked without a Llama."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.logits})()


def test_the_mix_weights_ce_and_kl_and_alpha_zero_is_exactly_the_ce():
    student, teacher, labels = random_case(7)
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones_like(labels), "labels": labels}
    ce = torch.tensor(2.345)
    kl = distillation_kl(student, teacher, labels, 2.0)
    for alpha in (0.25, 1.0):
        loss, logged = Distillation(FixedLogits(teacher), alpha, 2.0).loss(ce, student, batch)
        assert logged.item() == kl.item()
        assert loss.item() == pytest.approx((1 - alpha) * ce.item() + alpha * kl.item(), rel=1e-6)
    loss, _ = Distillation(FixedLogits(teacher), 0.0, 2.0).loss(ce, student, batch)
    assert torch.equal(loss, ce)


def test_the_teacher_is_frozen_in_eval_mode_and_gets_no_gradient():
    student, teacher, labels = random_case(8)
    batch = {"input_ids": labels.clamp(min=0), "attention_mask": torch.ones_like(labels), "labels": labels}
    teacher_model = FixedLogits(teacher).train()
    distill = Distillation(teacher_model, 0.5)
    assert not teacher_model.training and not teacher_model.logits.requires_grad
    student.requires_grad_(True)
    loss, _ = distill.loss(torch.tensor(1.0), student, batch)
    loss.backward()
    assert teacher_model.logits.grad is None and student.grad.abs().sum() > 0
