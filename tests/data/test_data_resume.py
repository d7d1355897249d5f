"""Exact mid-epoch resume: a run interrupted after a mid-epoch checkpoint and resumed with
``trainer.fit(..., ckpt_path=...)`` trains on exactly the batches an uninterrupted run trains on.

10 examples, batch size 3 → 4 batches per epoch (the last one short), 3 epochs = 12 steps; a checkpoint
every 2 steps, a simulated crash at step 11. Resuming from step 2 and 6 restarts mid-epoch; step 4 is the
last batch of epoch 0 (saved at on_train_batch_end, so the next epoch must start from its beginning).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from basel_app.data import TaskDataModule
from basel_app.tasks import build_task
from tests.tasks.helpers import make_byte_tokenizer, task_cfg

pytestmark = pytest.mark.filterwarnings(
    # Lightning cannot see that the datamodule restores the position itself (see datamodule.py).
    "ignore:You're resuming from a checkpoint that ended before the epoch ended",
    "ignore:.*does not have many workers",
    "ignore:.*is not resumable",
    "ignore:You passed in a `val_dataloader` but have no `validation_step`",
    "ignore:Be aware that when using `ckpt_path`",
    "ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated",
)

EPOCHS, CRASH_AT = 3, 11


class Crash(RuntimeError):
    pass


class Recorder(L.LightningModule):
    """A linear model over mean token embeddings that records which examples each step trained on."""

    def __init__(self, index_of: dict[tuple[int, ...], int], crash_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(512, 4)
        self.head = torch.nn.Linear(4, 1)
        self.index_of = index_of
        self.crash_at = crash_at
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise Crash("simulated crash")
        mask = batch["attention_mask"]
        self.seen.append(
            [self.index_of[tuple(row[: int(n)].tolist())] for row, n in zip(batch["input_ids"], mask.sum(1))]
        )
        pooled = (self.embed(batch["input_ids"]) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_dm(num_workers: int = 0) -> TaskDataModule:
    dm = TaskDataModule(
        build_task(task_cfg()),
        train_batch_size=3,
        eval_batch_size=2,
        max_length=1024,
        max_train_samples=10,
        max_eval_samples=2,
        seed=5,
        num_workers=num_workers,
    )
    dm.load_records()
    dm.attach_tokenizer(make_byte_tokenizer())
    dm.setup("fit")
    return dm


def make_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=EPOCHS,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def index_map(dm: TaskDataModule) -> dict[tuple[int, ...], int]:
    return {tuple(item["input_ids"]): i for i, item in enumerate(dm.train_dataset)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    dm = make_dm()
    model = Recorder(index_map(dm))
    root = tmp_path_factory.mktemp("uninterrupted")
    make_trainer(enable_checkpointing=False, default_root_dir=root).fit(model, datamodule=dm)
    return model.seen, [p.detach().clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory):
    ckpt_dir = tmp_path_factory.mktemp("ckpt")
    dm = make_dm()
    model = Recorder(index_map(dm), crash_at=CRASH_AT)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=2, save_top_k=-1, save_last=False)
    with pytest.raises(Crash):
        make_trainer(callbacks=[checkpoint], default_root_dir=ckpt_dir).fit(model, datamodule=dm)
    return ckpt_dir, model.seen


def test_uninterrupted_run_sees_every_example_each_epoch(uninterrupted):
    seen, _ = uninterrupted
    assert len(seen) == EPOCHS * 4
    for epoch in range(EPOCHS):
        assert sorted(i for batch in seen[4 * epoch : 4 * epoch + 4] for i in batch) == list(range(10))
    assert seen[:4] != seen[4:8]  # epochs are reshuffled


@pytest.mark.parametrize(
    ("step", "epoch", "num_workers"),
    # with a worker process, indices are fetched as soon as Lightning creates the iterator, before it
    # calls set_epoch: the restored epoch must already be in the sampler
    [(2, 0, 0), (4, 0, 0), (6, 1, 0), (6, 1, 1)],
)
def test_resume_sees_exactly_the_remaining_batches(uninterrupted, crashed_run, tmp_path, step, epoch, num_workers):
    expected, expected_params = uninterrupted
    ckpt_dir, crashed_seen = crashed_run
    assert crashed_seen == expected[:CRASH_AT]  # same run up to the crash
    ckpt_path = ckpt_dir / f"epoch={epoch}-step={step}.ckpt"
    state = torch.load(ckpt_path, weights_only=True)["TaskDataModule"]
    assert state == {"epoch": epoch, "batches_done": step - 4 * epoch}

    dm = make_dm(num_workers)
    model = Recorder(index_map(dm))
    make_trainer(enable_checkpointing=False, default_root_dir=tmp_path).fit(model, datamodule=dm, ckpt_path=ckpt_path)
    assert expected[:step] + model.seen == expected
    for resumed, reference in zip(model.parameters(), expected_params, strict=True):
        torch.testing.assert_close(resumed, reference)
