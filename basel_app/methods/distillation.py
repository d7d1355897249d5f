"""Distillation from the input model: the student matches the teacher's whole next-token distribution.

    loss = (1 − α)·CE(labels) + α·τ²·KL(p_teacher,τ ‖ p_student,τ),   p_·,τ = softmax(logits / τ)

Both terms are means over the same positions: the labelled (response) tokens, each predicted from the
prefix before it. With a few hundred training examples the teacher's distribution carries far more signal
per example than a one-hot label (Minitron, Sheared-LLaMA). τ² keeps the KL's gradient on the scale of the
CE's as τ grows (Hinton et al., 2015): the soft targets' gradients shrink as 1/τ².
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

IGNORE_INDEX = -100  # labels of prompt and padding tokens (the tasks' and transformers' convention)


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """τ²·KL(p_teacher,τ ‖ p_student,τ) averaged over the labelled next-token positions (0 when there are none).

    Logits are (B, T, V), labels (B, T); the logits at t predict the label at t + 1, as in the CE. Only the
    labelled positions are gathered before the float32 log-softmax, so memory scales with answer tokens."""
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    student = student_logits[:, :-1][mask].float() / temperature  # (N, V)
    teacher = teacher_logits[:, :-1][mask].float() / temperature  # (N, V)
    log_p_student = torch.log_softmax(student, dim=-1)
    log_p_teacher = torch.log_softmax(teacher, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum()
    return temperature**2 * kl / mask.sum().clamp(min=1)


@dataclass
class Distillation:
    """A frozen teacher and the loss mix. A plain object, not a module: whoever holds it (the
    LightningModule) neither checkpoints the teacher nor hands its parameters to an optimizer."""

    teacher: nn.Module
    alpha: float  # weight of the KL term, in (0, 1]
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.teacher.eval().requires_grad_(False)

    def loss(
        self, ce: torch.Tensor, student_logits: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed loss from the student's mean CE and logits on `batch`, and the KL term alone (for logging)."""
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        kl = distillation_kl(student_logits, teacher_logits, batch["labels"], self.temperature)
        return (1 - self.alpha) * ce + self.alpha * kl, kl
