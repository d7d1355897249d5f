"""The lm task (WikiText-2): packaged splits, word windows, token windows with a label on every token,
the data_dir override, the hub path, and one-line errors."""

from __future__ import annotations

import gzip
import hashlib
import re
import sys
from importlib import resources

import pytest

from basel_app.config.schema import TaskConfig
from basel_app.data import TaskDataModule
from basel_app.tasks import IGNORE_INDEX, TASKS, TaskDataError, build_task
from basel_app.tasks.lm import LMTask, read_wikitext, wikitext_test_text, word_windows
from tests.tasks.helpers import make_byte_tokenizer, task_cfg

SHA256 = {  # basel_app/resources/wikitext2/README.md
    "train.txt": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
    "valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}
SMALL = {  # a data_dir in the same layout
    "train.txt": " \n = Alpha = \n \n one two three four five six seven eight nine ten \n \n",
    "valid.txt": " \n = Beta = \n \n eleven twelve thirteen fourteen \n",
    "test.txt": " \n = Gamma = \n \n fifteen sixteen seventeen eighteen nineteen \n",
}


def lm_cfg(**overrides) -> TaskConfig:
    values = dict(name="lm", max_length=64)
    values.update(overrides)
    return task_cfg(**values)


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def small_dir(tmp_path):
    for name, text in SMALL.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_registered():
    assert TASKS["lm"] is LMTask


def test_packaged_copy_is_the_documented_one():
    folder = resources.files("basel_app").joinpath("resources", "wikitext2")
    for name, digest in SHA256.items():
        text = gzip.decompress(folder.joinpath(name + ".gz").read_bytes())  # shipped gzipped
        assert hashlib.sha256(text).hexdigest() == digest
    assert "CC BY-SA" in folder.joinpath("LICENSE").read_text()
    assert "wikitext-2-v1" in folder.joinpath("README.md").read_text()


def test_splits_load_from_the_packaged_copy():
    task = build_task(lm_cfg())
    assert task.source == "packaged" and task.describe_source() == "packaged:basel_app/resources/wikitext2"
    train, test = task.load_train_records(), task.load_eval_records()
    train_words = len(read_wikitext("train").split())
    assert len(train) == train_words // 64 and len(test) == len(wikitext_test_text().split()) // 64
    assert train[0]["text"].startswith(" \n = Valkyria Chronicles III = \n \n Senjō no Valkyria 3")
    assert test[0]["text"].startswith(" \n = Robert <unk> = \n")
    assert all(len(r["text"].split()) == 64 for r in train[:50] + test[:50])
    valid = build_task(lm_cfg(eval_split="valid")).load_eval_records()
    assert valid[0]["text"].startswith(" \n = Homarus gammarus = \n")


def test_word_windows_are_consecutive_runs_of_the_text():
    text = " \n = A = \n \n x y  z \n w \n"
    # words: " \n =", " A", " =", " \n \n x", " y", "  z", " \n w" (each with the whitespace before it)
    assert word_windows(text, 2) == [" \n = A", " = \n \n x", " y  z"]  # the partial last run is dropped
    assert "".join(word_windows(text, 7)) == text.rstrip()
    with pytest.raises(ValueError, match="words=0"):
        word_windows(text, 0)


@pytest.mark.parametrize("bos", [False, True])
def test_windows_have_max_length_tokens_each_of_them_a_label(bos):
    tokenizer = make_byte_tokenizer(bos=bos)
    task = build_task(lm_cfg(max_length=48))
    for record in task.load_train_records()[:200]:
        encoded = task.encode(tokenizer, record, 48)
        assert len(encoded["input_ids"]) == 48  # a word is at least one token: the window is always full
        assert encoded["labels"] == encoded["input_ids"] and IGNORE_INDEX not in encoded["labels"]
        assert encoded["input_ids"] == tokenizer(record["text"], add_special_tokens=False)["input_ids"][:48]
    assert task.to_example(record) == ("", record["text"])
    assert task.prompt_ids(tokenizer, record) == ([tokenizer.convert_tokens_to_ids("<s>")] if bos else [])


def test_fits_the_task_datamodule():
    dm = TaskDataModule(
        build_task(lm_cfg(max_length=32)), train_batch_size=4, eval_batch_size=4, max_length=32,
        max_train_samples=10, max_eval_samples=6,
    )
    dm.attach_tokenizer(make_byte_tokenizer())
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.eval_dataset)) == (10, 6) and dm.num_skipped == {"train": 0, "eval": 0}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 32)
    assert bool(batch["attention_mask"].all()) and bool((batch["labels"] == batch["input_ids"]).all())


def test_data_dir_overrides_the_packaged_copy(small_dir):
    task = build_task(lm_cfg(data_dir=str(small_dir), source="packaged", max_length=4))
    assert task.source == "local" and task.describe_source() == f"local:{small_dir}"
    assert [r["text"] for r in task.load_train_records()] == [
        " \n = Alpha = \n \n one", " two three four five", " six seven eight nine",
    ]
    assert task.load_eval_records()[0]["text"] == " \n = Gamma = \n \n fifteen"
    assert wikitext_test_text(data_dir=small_dir) == SMALL["test.txt"]
    assert build_task(lm_cfg(data_dir=str(small_dir), eval_split="validation")).read_text("validation") == SMALL[
        "valid.txt"
    ]


def test_missing_file_in_data_dir_is_a_one_line_error(small_dir):
    (small_dir / "test.txt").unlink()
    task = build_task(lm_cfg(data_dir=str(small_dir), max_length=4))
    task.load_train_records()  # the other split still loads
    with pytest.raises(TaskDataError) as excinfo:
        task.load_eval_records()
    message = one_line(excinfo)
    assert f"task.data_dir={str(small_dir)!r}" in message and "no test.txt" in message
    assert "train.txt, valid.txt" in message  # what the directory holds


def test_data_dir_that_is_not_a_directory(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    cfg = lm_cfg(data_dir=str(gone))  # the config checks the dir exists; it can vanish before the data is read
    gone.rmdir()
    with pytest.raises(TaskDataError, match="is not a directory"):
        build_task(cfg).load_train_records()


def test_unknown_split_and_source_are_refused():
    with pytest.raises(TaskDataError, match="no split 'dev'"):
        build_task(lm_cfg(eval_split="dev"))
    with pytest.raises(ValueError, match="task.source=local needs task.data_dir"):
        build_task(lm_cfg(source="local"))
    with pytest.raises(ValueError, match="task.source='web' is not allowed"):
        build_task(lm_cfg(source="web"))


def test_hub_rows_are_joined_back_into_the_file_layout(monkeypatch):
    calls = []

    def fake_load_dataset(hub_id, hub_config, split, revision=None):
        calls.append((hub_id, hub_config, split, revision))
        return {"text": ["", " = Gamma = \n", "", " fifteen sixteen \n"]}  # the hub's rows: "" for " \n"

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    task = build_task(lm_cfg(source="hub", eval_split="valid", max_length=2))
    assert task.describe_source() == "hub:wikitext/wikitext-2-v1@None"
    assert task.read_text("test") == " \n = Gamma = \n \n fifteen sixteen \n"
    assert [r["text"] for r in task.load_eval_records()] == [" \n = Gamma", " = \n \n fifteen"]
    assert calls == [("wikitext", "wikitext-2-v1", "test", None), ("wikitext", "wikitext-2-v1", "validation", None)]


def test_hub_failure_names_the_hub_id_and_the_offline_override(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr("datasets.load_dataset", offline)
    with pytest.raises(TaskDataError) as excinfo:
        build_task(lm_cfg(source="hub")).load_train_records()
    message = one_line(excinfo)
    assert re.search(r"hub dataset 'wikitext' \(config 'wikitext-2-v1'\)", message)
    assert "task.data_dir=" in message and "ConnectionError" in message
    assert "datasets" in sys.modules
