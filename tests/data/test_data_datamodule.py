"""TaskDataModule on the packaged GSM8K: subsets, batch counts, tokenization, padding."""

from __future__ import annotations

import math

import pytest
import torch

from basel_app.data import TaskDataModule
from basel_app.tasks import IGNORE_INDEX, build_task
from tests.tasks.helpers import CHATML, make_byte_tokenizer, task_cfg


def make_dm(**kwargs) -> TaskDataModule:
    args = dict(train_batch_size=3, eval_batch_size=2, max_length=1024, max_train_samples=20, max_eval_samples=5)
    args.update(kwargs)
    return TaskDataModule(build_task(task_cfg()), **args)


def test_load_records_picks_seeded_train_subset_and_first_eval_items():
    dm = make_dm(seed=3)
    dm.load_records()
    task = build_task(task_cfg())
    assert dm.eval_records == task.load_eval_records()[:5]
    assert len(dm.train_records) == 20
    again, other = make_dm(seed=3), make_dm(seed=4)
    again.load_records()
    other.load_records()
    assert again.train_records == dm.train_records and other.train_records != dm.train_records
    assert dm.num_train_batches == math.ceil(20 / 3)


def test_all_records_when_unbounded():
    dm = make_dm(max_train_samples=None, max_eval_samples=None, train_batch_size=8)
    dm.load_records()
    assert (len(dm.train_records), len(dm.eval_records)) == (7473, 1319)
    assert dm.num_train_batches == math.ceil(7473 / 8)


def test_setup_needs_a_tokenizer_and_tokenizes_once():
    dm = make_dm()
    with pytest.raises(RuntimeError, match="attach_tokenizer"):
        dm.setup("fit")
    with pytest.raises(RuntimeError, match="load_records"):
        _ = dm.num_train_batches
    dm.attach_tokenizer(make_byte_tokenizer(CHATML, eos="<|im_end|>"))
    dm.setup("fit")
    dataset = dm.train_dataset
    dm.setup("validate")
    assert dm.train_dataset is dataset and len(dataset) == 20 and len(dm.eval_dataset) == 5
    assert dm.num_skipped == {"train": 0, "eval": 0}


def check_batch(batch, pad_id):
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape
    assert batch["input_ids"].dtype == torch.long
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.max() == batch["input_ids"].shape[1]
    for row, n in enumerate(lengths.tolist()):
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["input_ids"][row, n:] == pad_id).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert (batch["labels"][row, :n] != IGNORE_INDEX).any()


@pytest.mark.parametrize("pad", [None, "<pad>"])
def test_batches_are_right_padded(pad):
    tokenizer = make_byte_tokenizer(pad=pad)
    dm = make_dm()
    dm.attach_tokenizer(tokenizer)
    dm.setup("fit")
    pad_id = tokenizer.pad_token_id if pad else tokenizer.eos_token_id
    train = list(dm.train_dataloader())
    assert len(train) == dm.num_train_batches == 7 and [len(b["input_ids"]) for b in train][-1] == 2
    for batch in train:
        check_batch(batch, pad_id)
    # evaluation batches follow the file order
    val = list(dm.val_dataloader())
    assert [len(b["input_ids"]) for b in val] == [2, 2, 1]
    first = val[0]["input_ids"][0][: val[0]["attention_mask"][0].sum()].tolist()
    assert first == dm.eval_dataset[0]["input_ids"]
    for batch in val:
        check_batch(batch, pad_id)


def test_train_dataloader_follows_the_seeded_sampler():
    dm = make_dm(seed=11)
    dm.attach_tokenizer(make_byte_tokenizer())
    dm.setup("fit")
    loader = dm.train_dataloader()
    expected = dm.train_sampler.batches(0)
    for batch, indices in zip(loader, expected, strict=True):
        rows = [batch["input_ids"][r][: batch["attention_mask"][r].sum()].tolist() for r in range(len(indices))]
        assert rows == [dm.train_dataset[i]["input_ids"] for i in indices]


def test_skipped_examples_are_counted_and_batches_recounted():
    tokenizer = make_byte_tokenizer()
    task = build_task(task_cfg())
    dm = make_dm(max_train_samples=30, max_length=220)
    dm.load_records()
    prompt_lengths = [len(task.prompt_ids(tokenizer, r)) for r in dm.train_records]
    too_long = sum(n + 4 > 220 for n in prompt_lengths)
    assert 0 < too_long < 30  # the fixture must exercise skipping
    assert dm.num_train_batches == 10
    dm.attach_tokenizer(tokenizer)
    with pytest.warns(UserWarning, match="skipped"):
        dm.setup("fit")
    assert dm.num_skipped["train"] == too_long
    assert dm.num_train_batches == math.ceil((30 - too_long) / 3) == len(dm.train_dataloader())
    assert all(len(item["input_ids"]) <= 220 for item in dm.train_dataset)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="train_batch_size=0"):
        make_dm(train_batch_size=0)
    with pytest.raises(ValueError, match="max_length=2"):
        make_dm(max_length=2)


def test_from_config():
    from basel_app.config.schema import TaskConfig

    dm = TaskDataModule.from_config(TaskConfig(max_train_samples=8, train_batch_size=4), seed=0)
    dm.load_records()
    assert dm.task.name == "math" and dm.num_train_batches == 2


def test_calibration_batches_come_from_the_training_split_only_and_leave_training_untouched():
    dm = make_dm(max_train_samples=12, max_eval_samples=5)
    dm.attach_tokenizer(make_byte_tokenizer(CHATML, eos="<|im_end|>"))
    dm.setup("fit")
    train_rows = {tuple(item["input_ids"]) for item in dm.train_dataset.items}
    eval_rows = {tuple(item["input_ids"]) for item in dm.eval_dataset.items}
    order_before = [batch["input_ids"].tolist() for batch in dm.train_dataloader()]
    batches = dm.calibration_batches(3, seed=7)
    assert len(batches) == 3 and all(b["input_ids"].shape[0] == 3 for b in batches)
    for batch in batches:
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            row = tuple(ids[mask.bool()].tolist())
            assert row in train_rows and row not in eval_rows
    again = dm.calibration_batches(3, seed=7)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    assert not torch.equal(dm.calibration_batches(1, seed=8)[0]["input_ids"], batches[0]["input_ids"])
    assert len(dm.calibration_batches(100, seed=0)) == 4  # no more than the split holds
    assert [batch["input_ids"].tolist() for batch in dm.train_dataloader()] == order_before
    with pytest.raises(ValueError, match="count=0 is not allowed"):
        dm.calibration_batches(0, seed=0)
