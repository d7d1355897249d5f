"""Stage checkpoints: taken at every epoch end as well as every N steps, each with a sha256; the resume rule
takes the newest whose sha256 matches, and names (and removes) every one it cannot trust."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from basel_app.config.schema import TrainerConfig
from basel_app.lit.checkpoints import (
    StageCheckpoints,
    checksum_file,
    checkpoints_newest_first,
    newest_good_checkpoint,
)
from basel_app.lit.trainer import build_trainer


class LinearRegression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(torch.randn(6, 2, generator=torch.Generator().manual_seed(0)), batch_size=2)  # 3 steps


def fit(directory, epochs: int, every_n_steps: int, ckpt_path=None) -> L.Trainer:
    cfg = TrainerConfig(precision="32-true", enable_progress_bar=False, checkpoint_every_n_steps=every_n_steps)
    trainer = build_trainer(cfg, max_epochs=epochs, logger=None, callbacks=[], checkpoint_dir=directory,
                            root_dir=directory.parent)
    trainer.fit(LinearRegression(), ckpt_path=ckpt_path, weights_only=True)
    return trainer


def test_epoch_ends_are_checkpointed_even_when_the_step_interval_is_longer_than_an_epoch(tmp_path):
    fit(tmp_path / "ckpt", epochs=2, every_n_steps=50)
    assert [p.name for p in checkpoints_newest_first(tmp_path / "ckpt")] == ["epoch=1-step=6.ckpt", "epoch=0-step=3.ckpt"]
    assert all(checksum_file(p).is_file() for p in checkpoints_newest_first(tmp_path / "ckpt"))


@pytest.mark.parametrize("damage", ["flipped_byte", "truncated", "no_checksum"])
def test_a_damaged_newest_checkpoint_is_named_removed_and_the_one_before_used(tmp_path, caplog, damage):
    directory = tmp_path / "ckpt"
    fit(directory, epochs=2, every_n_steps=50)
    newest, previous = checkpoints_newest_first(directory)
    data = bytearray(newest.read_bytes())
    if damage == "flipped_byte":
        data[len(data) // 2] ^= 0x01
        newest.write_bytes(bytes(data))
    elif damage == "truncated":
        newest.write_bytes(bytes(data[: len(data) // 2]))
    else:
        checksum_file(newest).unlink()
    with caplog.at_level(logging.INFO):
        assert newest_good_checkpoint(directory) == previous
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(newest) in errors[0] and "\n" not in errors[0]
    assert any(f"resuming from {previous}" in r.getMessage() for r in caplog.records)
    assert not newest.exists()
    assert fit(directory, epochs=3, every_n_steps=50, ckpt_path=previous).global_step == 9  # epochs 2 and 3 ran


def test_a_dangling_last_link_is_logged_and_ignored(tmp_path, caplog):
    directory = tmp_path / "ckpt"
    fit(directory, epochs=1, every_n_steps=50)
    (directory / "last.ckpt").symlink_to(directory / "epoch=9-step=99.ckpt")
    with caplog.at_level(logging.WARNING):
        assert newest_good_checkpoint(directory) == directory / "epoch=0-step=3.ckpt"
    assert any("dangling" in r.getMessage() and "last.ckpt" in r.getMessage() for r in caplog.records)
    assert not (directory / "last.ckpt").is_symlink()


def test_under_ddp_only_rank_zero_writes_checksums_and_removes_old_checkpoints(tmp_path):
    """Every rank calls `save`; Lightning writes the file on rank 0 alone, and so must the rest be, or one
    rank's unlink lands between another's glob and stat (a DDP run lost its rank 1 so)."""
    directory = tmp_path / "ckpt"
    fit(directory, epochs=3, every_n_steps=50)  # 2 kept, with checksums, as rank 0 left them
    before = sorted(p.name for p in directory.iterdir())
    barriers: list[str] = []
    rank_one = SimpleNamespace(is_global_zero=False, global_step=12, current_epoch=3,
                               save_checkpoint=lambda path, weights_only: None,  # Lightning: rank 0 writes
                               strategy=SimpleNamespace(barrier=barriers.append))
    path = StageCheckpoints(directory, every_n_steps=1, keep=1).save(rank_one)
    assert path == directory / "epoch=3-step=12.ckpt"
    assert sorted(p.name for p in directory.iterdir()) == before  # nothing written, nothing removed
    assert barriers == ["StageCheckpoints.save"]  # and it waits for rank 0 to have done both
