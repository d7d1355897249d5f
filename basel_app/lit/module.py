"""The LightningModule: hosts the causal LM and owns the one training step every phase shares.

It knows nothing about phases. Which parameters train is injected (`select_trainable`, applied by the
one rule `set_trainable`), and the phase callbacks change the low-rank layers' state between steps.
Evaluation needs no optimizer, so it uses the base `AnswerLossModule`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torchmetrics import SumMetric

from basel_app.config.errors import NonFiniteError
from basel_app.distributed import share_of_global_mean
from basel_app.evaluation.answer_loss import answer_nll, loss_summary
from basel_app.lit.schedule import LRSchedule
from basel_app.lit.sharding import is_sharded, shard_from_rank_zero
from basel_app.lit.trainer import mixed_precision_dtype
from basel_app.lowrank import set_trainable, store_frozen_bases
from basel_app.methods.distillation import IGNORE_INDEX, Distillation

log = logging.getLogger(__name__)

TrainableSelector = Callable[[nn.Module], list[nn.Parameter]]


class AnswerLossModule(L.LightningModule):
    """A causal LM evaluated by its teacher-forced answer loss and perplexity on the task's held-out items."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # One process evaluates (under DDP rank 0 alone, while the others wait), so the sums are never synced.
        self.eval_nll, self.eval_tokens = SumMetric(sync_on_compute=False), SumMetric(sync_on_compute=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        nll, tokens = answer_nll(self.model, batch)
        if not bool(torch.isfinite(nll)):  # a sum that dropped it would report a diverged model as perfect
            raise NonFiniteError(f"the answer loss of evaluation batch {batch_idx} is {float(nll)}: the model's "
                                 "weights or logits hold NaN or inf, so no loss or perplexity can be reported")
        self.eval_nll.update(nll)
        self.eval_tokens.update(tokens)

    def on_validation_epoch_end(self) -> None:
        summary = loss_summary(self.eval_nll.compute().item(), int(self.eval_tokens.compute().item()))
        self.log_dict({f"eval/{key}": value for key, value in summary.items()})
        self.log("eval/answer_tokens", self.eval_tokens.compute().float())
        self.eval_nll.reset()
        self.eval_tokens.reset()


class CompressionModule(AnswerLossModule):
    """The same LM trained on the task's answer loss; `select_trainable` names what trains.

    With `distill`, the training loss mixes in the KL to a frozen teacher's distribution; the teacher is
    held outside the module tree, so it is in no checkpoint and no optimizer, and stays in eval mode.
    `schedule` shapes the lr over the stage's optimizer steps (default: constant)."""

    def __init__(
        self, model: nn.Module, select_trainable: TrainableSelector, lr: float, weight_decay: float,
        distill: Distillation | None = None, schedule: LRSchedule = LRSchedule(),
    ) -> None:
        super().__init__(model)
        self.select_trainable = select_trainable
        self.lr, self.weight_decay = lr, weight_decay
        self.distill = distill
        self.schedule = schedule

    def on_fit_start(self) -> None:
        if self.distill is not None:  # Lightning moves only registered modules to the device
            self.distill.teacher.to(self.device)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(**batch)
        loss = out.loss  # mean NLL over the answer tokens of the batch (of this rank's part, under DDP)
        batch_size = batch["input_ids"].shape[0]
        if self.distill is not None:
            self.log("train/ce", loss, batch_size=batch_size)
            loss, kl = self.distill.loss(loss, out.logits, batch)
            self.log("train/distill_kl", kl, batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        return loss * share_of_global_mean((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def configure_model(self) -> None:
        """Freeze all but the selected parameters here, before the strategy wraps the model: DDP registers
        for gradient reduction exactly the parameters that require grad when it wraps, and one frozen later
        would be a parameter it waits for in every step. Under FSDP the model is sharded here (the strategy
        asks the module to), which replaces every parameter by its shard: the trainable ones are those. The
        shards are filled from rank 0, the one rank that holds the model between stages (`lit/sharding.py`);
        the teacher is sharded the same way. Under bf16-mixed the layers are all-gathered in bf16; on one process
        or under DDP the frozen bases are held in bf16 instead (`store_frozen_bases`)."""
        self.trainable = set_trainable(self.model, self.select_trainable(self.model))
        if not self.trainable:
            raise RuntimeError("nothing to train: the trainable-parameter selector returned no parameters")
        strategy = self.trainer.strategy
        narrow = mixed_precision_dtype(self.trainer.precision)
        if narrow is not None and not isinstance(strategy, ModelParallelStrategy):  # FSDP all-gathers in it anyway
            freed = store_frozen_bases(self.model, narrow)
            if freed:
                log.info("frozen bases held in %s: %.0f MB freed", str(narrow).removeprefix("torch."), freed / 2**20)
        if isinstance(strategy, ModelParallelStrategy) and not is_sharded(self.model):
            gathered = torch.bfloat16 if self.trainer.precision == "bf16-mixed" else None
            shard_from_rank_zero(self.model, strategy.root_device, gathered)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
            if self.distill is not None and not is_sharded(self.distill.teacher):
                shard_from_rank_zero(self.distill.teacher, strategy.root_device, gathered)  # no GPU holds it whole

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        optimizer = torch.optim.AdamW(self.trainable, lr=self.lr, weight_decay=self.weight_decay)
        if self.schedule.is_constant:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)  # of this process: every rank steps alike
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.schedule.factor(step, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
