"""The LightningModule: hosts the causal LM and owns the one training step every phase shares.

It knows nothing about phases. Which parameters train is injected (`select_trainable`), and the
phase callbacks change the low-rank layers' state between steps.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import SumMetric

from basel_app.evaluation.answer_loss import answer_nll, loss_summary

TrainableSelector = Callable[[nn.Module], list[nn.Parameter]]


class CompressionModule(L.LightningModule):
    """A causal LM trained on a task's answer loss, evaluated by teacher-forced answer perplexity."""

    def __init__(self, model: nn.Module, select_trainable: TrainableSelector, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.model = model
        self.select_trainable = select_trainable
        self.lr, self.weight_decay = lr, weight_decay
        self.eval_nll, self.eval_tokens = SumMetric(), SumMetric()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss  # mean NLL over the answer tokens of the batch
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, tokens = answer_nll(self.model, batch)
        self.eval_nll.update(nll)
        self.eval_tokens.update(tokens)

    def on_validation_epoch_end(self) -> None:
        summary = loss_summary(self.eval_nll.compute().item(), int(self.eval_tokens.compute().item()))
        self.log_dict({f"eval/{key}": value for key, value in summary.items()})
        self.log("eval/answer_tokens", self.eval_tokens.compute().float())
        self.eval_nll.reset()
        self.eval_tokens.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.select_trainable(self.model)
        if not params:
            raise RuntimeError("nothing to train: the trainable-parameter selector returned no parameters")
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
