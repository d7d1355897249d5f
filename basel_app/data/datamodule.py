"""The LightningDataModule of a task: records → token ids → padded batches, resumable mid-epoch.

The pipeline drives it in three steps, so that bad data fails before the model is loaded:

1. :meth:`TaskDataModule.load_records` — read and validate the raw records (seconds), pick the subsets;
2. :meth:`TaskDataModule.attach_tokenizer` — once the model and its tokenizer are loaded;
3. :meth:`TaskDataModule.setup` — tokenize both splits, once (Lightning calls it again on every
   ``fit``/``validate``; later calls do nothing).

Subsets: ``validation_samples`` training records are held out first (the first N of a seeded shuffle of the
training split, kept in file order; disjoint from training by construction) for choosing settings without
looking at the evaluation split; the training records are then the first ``max_train_samples`` of a seeded
shuffle of the rest (kept in file order), the evaluation records the first ``max_eval_samples`` of the
evaluation split in file order (so every method is scored on the same items).

Batches: right padding with the tokenizer's pad id (its eos when it has none) under an
``attention_mask``; labels padded with -100. Training batches follow
:class:`~basel_app.data.sampler.ResumableBatchSampler`, evaluation batches the file order.

Mid-epoch resume: ``state_dict()`` stores ``(epoch, batches done in it)`` in every checkpoint and
``load_state_dict()`` makes the sampler start the restored epoch at the next batch. Lightning warns on
such a resume that the dataloader "is not resumable" (a DataLoader has no ``state_dict``); the warning
does not apply here, because this datamodule restores the position itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from basel_app.config.errors import ConfigError
from basel_app.config.schema import TaskConfig
from basel_app.data.sampler import ResumableBatchSampler
from basel_app.tasks.encoding import IGNORE_INDEX, MIN_RESPONSE_TOKENS
from basel_app.tasks.records import Record
from basel_app.tasks.registry import build_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from basel_app.tasks.base import Task

Encoded = dict[str, list[int]]


class EncodedDataset(Dataset):
    """A list of encoded examples (``{"input_ids", "labels"}``) with the record index each came from."""

    def __init__(self, items: list[Encoded], record_indices: list[int]) -> None:
        self.items = items
        self.record_indices = record_indices  # position in the records list, for tracing skips

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Encoded:
        return self.items[index]


class PadCollator:
    """Right-pads a list of encoded examples into ``input_ids``, ``attention_mask``, ``labels`` (B, T)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
            labels[row, :n] = torch.tensor(item["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pad_token_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id, else its eos id (padding is masked, so the id only has to exist)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a pad token nor an eos token; cannot pad batches")


class TaskDataModule(L.LightningDataModule):
    """Batches of one task's training split (shuffled, resumable) and evaluation split (in order)."""

    def __init__(
        self,
        task: Task,
        train_batch_size: int,
        eval_batch_size: int,
        max_length: int,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        seed: int = 0,
        validation_samples: int = 0,
        num_workers: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        for key, value in (("train_batch_size", train_batch_size), ("eval_batch_size", eval_batch_size)):
            if value < 1:
                raise ValueError(f"{key}={value} is not allowed; it must be >= 1")
        if max_length <= MIN_RESPONSE_TOKENS:
            raise ConfigError(f"task.max_length={max_length} is not allowed; it must be > {MIN_RESPONSE_TOKENS}")
        self.task = task
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.seed = seed
        self.validation_samples = validation_samples
        self.num_workers = num_workers
        self.world_size = world_size  # processes sharing each global batch (DDP); train_batch_size is per process

        self.train_records: list[Record] | None = None
        self.eval_records: list[Record] | None = None
        self.validation_records: list[Record] = []
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.train_dataset: EncodedDataset | None = None
        self.eval_dataset: EncodedDataset | None = None
        self.validation_dataset: EncodedDataset | None = None  # None: no validation split
        self.num_skipped: dict[str, int] = {}
        self.collate: PadCollator | None = None
        self.train_sampler: ResumableBatchSampler | None = None
        self._pending_resume: dict[str, int] | None = None

    @classmethod
    def from_config(cls, task_cfg: TaskConfig, seed: int, num_workers: int = 0, world_size: int = 1) -> TaskDataModule:
        """Build the task named by ``task_cfg.name`` and its datamodule."""

        return cls(
            build_task(task_cfg),
            train_batch_size=task_cfg.train_batch_size,
            eval_batch_size=task_cfg.eval_batch_size,
            max_length=task_cfg.max_length,
            max_train_samples=task_cfg.max_train_samples,
            max_eval_samples=task_cfg.max_eval_samples,
            seed=seed,
            validation_samples=task_cfg.validation_samples,
            num_workers=num_workers,
            world_size=world_size,
        )

    # 1. records -------------------------------------------------------------------------------------

    def load_records(self) -> None:
        """Read and validate both splits and pick the subsets (idempotent; no tokenizer needed)."""
        if self.train_records is not None:
            return
        train = self.task.load_train_records()
        if self.validation_samples:
            if self.validation_samples >= len(train):
                raise ConfigError(f"task.validation_samples={self.validation_samples} is not allowed; it must be "
                                 f"below the {len(train)} records of the training split")
            held = set(self._seeded_choice(len(train), self.validation_samples))
            self.validation_records = [r for i, r in enumerate(train) if i in held]
            train = [r for i, r in enumerate(train) if i not in held]
        if self.max_train_samples is not None and self.max_train_samples < len(train):
            train = [train[i] for i in sorted(self._seeded_choice(len(train), self.max_train_samples))]
        evaluation = self.task.load_eval_records()
        if self.max_eval_samples is not None:
            evaluation = evaluation[: self.max_eval_samples]
        self.train_records, self.eval_records = train, evaluation
        rank_zero_info(
            f"task {self.task.name!r} ({self.task.describe_source()}): {len(train)} training records "
            f"({self.task.train_split!r}), {len(self.validation_records)} validation records held out of it, "
            f"{len(evaluation)} evaluation records ({self.task.eval_split!r})"
        )

    def _seeded_choice(self, population: int, count: int) -> list[int]:
        """`count` distinct indices below `population`: the first of a permutation seeded by the run's seed."""
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        return torch.randperm(population, generator=generator)[:count].tolist()

    @property
    def num_train_batches(self) -> int:
        """Training batches per epoch of each process (the last one may be short).

        Known right after :meth:`load_records` (``ceil(records / batch size)``); after :meth:`setup` it is
        recomputed from the examples that survived tokenization, so it is always the exact number of
        batches the next epoch will have. Read it after ``setup`` to size anything by it (a warning is
        logged when skipped examples change it).
        """
        if self.train_dataset is not None:
            n = len(self.train_dataset)
        elif self.train_records is not None:
            n = len(self.train_records)
        else:
            raise RuntimeError("num_train_batches is unknown before load_records()")
        return len(ResumableBatchSampler(n, self.train_batch_size, self.seed, world_size=self.world_size))

    # 2. tokenizer and 3. tokenization ------------------------------------------------------------------

    def attach_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        if self.eval_dataset is not None and tokenizer is not self.tokenizer:
            raise RuntimeError("the datasets were already tokenized with another tokenizer")
        self.tokenizer = tokenizer
        self.collate = PadCollator(pad_token_id_of(tokenizer))

    def setup(self, stage: str | None = None) -> None:
        """Tokenize the evaluation split, and the training split too unless only evaluating (once each)."""
        if self.tokenizer is None:
            raise RuntimeError("TaskDataModule.setup() needs a tokenizer; call attach_tokenizer(tokenizer) first")
        self.load_records()
        assert self.train_records is not None and self.eval_records is not None
        if self.eval_dataset is None:
            self.eval_dataset = self._encode(self.eval_records, "eval")
            if self.validation_records:
                self.validation_dataset = self._encode(self.validation_records, "validation")
        if self.train_dataset is not None or stage in ("validate", "test", "predict"):
            return
        batches_before = self.num_train_batches
        self.train_dataset = self._encode(self.train_records, "train")
        if not len(self.train_dataset):
            raise ConfigError(f"every training example is too long for task.max_length={self.max_length}; raise it")
        if self.num_train_batches != batches_before:
            rank_zero_warn(
                f"skipped training examples changed the batches per epoch from {batches_before} to "
                f"{self.num_train_batches}; size schedules from num_train_batches after setup()"
            )

    def _encode(self, records: list[Record], split: str) -> EncodedDataset:
        assert self.tokenizer is not None
        items: list[Encoded] = []
        kept: list[int] = []
        for index, record in enumerate(records):
            encoded = self.task.encode(self.tokenizer, record, self.max_length)
            if encoded is not None:
                items.append(encoded)
                kept.append(index)
        skipped = len(records) - len(items)
        self.num_skipped[split] = skipped
        if skipped:
            rank_zero_warn(
                f"{skipped} of {len(records)} {split} examples skipped: their prompt leaves fewer than "
                f"{MIN_RESPONSE_TOKENS} answer tokens within task.max_length={self.max_length}"
            )
        return EncodedDataset(items, kept)

    # dataloaders ----------------------------------------------------------------------------------------

    def _require_setup(self, dataset: EncodedDataset | None) -> None:
        if dataset is None or self.collate is None:
            raise RuntimeError("call attach_tokenizer(tokenizer) and setup() before asking for dataloaders")

    def train_dataloader(self) -> DataLoader:
        self._require_setup(self.train_dataset)
        rank, world_size = (self._trainer.global_rank, self._trainer.world_size) if self._trainer else (0, 1)
        if world_size != self.world_size:
            raise RuntimeError(f"the trainer has {world_size} processes but the data module was sized for "
                               f"{self.world_size}: the phase plan would count the wrong number of steps")
        self.train_sampler = ResumableBatchSampler(len(self.train_dataset), self.train_batch_size, self.seed,
                                                   rank=rank, world_size=world_size)
        if self._pending_resume is not None:
            self._restore_position(self._pending_resume)
            self._pending_resume = None
        return DataLoader(
            self.train_dataset,
            batch_sampler=self.train_sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        self._require_setup(self.eval_dataset)
        return DataLoader(
            self.eval_dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def calibration_batches(self, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
        """Up to `count` padded batches of training examples, drawn by a `seed`ed shuffle.

        Importance estimates (BSI) and calibration statistics (the one-shot baselines) come from here,
        so they only ever see the training split, tokenized exactly as for training. The draw does not
        touch the training sampler, so training order and resume are unaffected. A batch is a global one
        (``train_batch_size × world_size`` examples, the same on every rank): the estimators split the batches
        across ranks, so DDP scores what one process with the same global batch would.
        """
        self._require_setup(self.train_dataset)
        if count < 1:
            raise ValueError(f"count={count} is not allowed; ask for at least 1 calibration batch")
        order = torch.randperm(len(self.train_dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        size = self.train_batch_size * self.world_size
        chunks = [order[i : i + size] for i in range(0, len(order), size)][:count]
        return [self.collate([self.train_dataset[j] for j in chunk]) for chunk in chunks]

    # mid-epoch resume -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """Where training stands: the epoch and how many of its batches are done.

        Called while a checkpoint is written. From ``on_train_batch_end`` (where ``StageCheckpoints`` saves
        every N steps and on SIGTERM) Lightning 2.6 has already counted the batch just finished as
        ``processed`` (``training_epoch_loop.advance`` increments it before the batch-end hooks).
        """
        trainer = self._trainer
        if trainer is None:
            return {}
        return {
            "epoch": int(trainer.current_epoch),
            "batches_done": int(trainer.fit_loop.epoch_loop.batch_progress.current.processed),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Make the next training epoch start right after the last batch the checkpoint had finished."""
        if not state_dict:
            return
        position = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}
        if self.train_sampler is not None:
            self._restore_position(position)
        else:  # usual order: Lightning restores the datamodule before it asks for the train dataloader
            self._pending_resume = position

    def _restore_position(self, position: dict[str, int]) -> None:
        assert self.train_sampler is not None
        epoch, done = position["epoch"], position["batches_done"]
        per_epoch = len(self.train_sampler)
        # Set the epoch now, not only via Lightning's set_epoch: worker processes start fetching indices
        # when the first iterator is created, which Lightning does before it calls set_epoch.
        if done >= per_epoch:  # saved at the end of an epoch: the next one starts from its beginning
            self.train_sampler.set_epoch(epoch + 1)
            return
        self.train_sampler.set_epoch(epoch)
        if done > 0:
            self.train_sampler.skip_next(done)
            rank_zero_info(f"resuming epoch {epoch} at batch {done} of {per_epoch}")

    @property
    def _trainer(self) -> Any:
        return getattr(self, "trainer", None)
