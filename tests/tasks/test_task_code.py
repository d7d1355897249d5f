"""The code (MBPP) task: splits by task_id range, the fixed prompt, loss only on the code, every data source."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest

from basel_app.tasks import TASKS, TaskDataError, build_task
from basel_app.tasks.code import PROMPT_TEMPLATE, SPLITS, CodeTask, normalize_code
from basel_app.tasks.encoding import IGNORE_INDEX
from tests.tasks.helpers import task_cfg

MBPP_SHA256 = "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f"  # google-research master
RECORD_11_PROMPT = (
    "You are an expert Python programmer, and here is your task: Write a python function to remove first and last "
    "occurrence of a given character from the string. Your code should pass these tests:\n\n"
    'assert remove_Occ("hello","l") == "heo"\n'
    'assert remove_Occ("abcda","a") == "bcd"\n'
    'assert remove_Occ("PHP","P") == "H"'
)


def code_cfg(**overrides):
    return task_cfg(name="code", **overrides)


@pytest.fixture(scope="module")
def task() -> CodeTask:
    return CodeTask.packaged()


def test_registered_and_built_from_the_real_config():
    from basel_app.config.schema import TaskConfig

    assert TASKS["code"] is CodeTask
    task = build_task(TaskConfig(name="code"))
    assert isinstance(task, CodeTask) and task.source == "packaged"
    assert (task.train_split, task.eval_split) == ("train", "test")


def test_packaged_mbpp_is_the_published_copy():
    folder = resources.files("basel_app").joinpath("resources", "mbpp")
    assert hashlib.sha256(folder.joinpath("mbpp.jsonl").read_bytes()).hexdigest() == MBPP_SHA256
    assert "CC BY 4.0" in folder.joinpath("LICENSE").read_text()
    assert "google-research" in folder.joinpath("README.md").read_text()


@pytest.mark.parametrize(
    ("split", "first", "last", "size"),
    [("train", 601, 974, 374), ("test", 11, 510, 500), ("validation", 511, 600, 90), ("prompt", 1, 10, 10)],
)
def test_split_sizes_and_id_ranges(task, split, first, last, size):
    ids = [r["task_id"] for r in task.read_split(split)]
    assert len(ids) == size and ids == list(range(first, last + 1))


def test_splits_partition_mbpp(task):
    ids = [r["task_id"] for split in SPLITS for r in task.read_split(split)]
    assert sorted(ids) == list(range(1, 975))
    train, test = task.load_train_records(), task.load_eval_records()
    assert (len(train), len(test)) == (374, 500)
    # No training prompt is an evaluation prompt. MBPP itself repeats three problem statements across the two
    # splits, with different tests (and so different prompts): test 216, 217, 248 = train 872, 602, 704.
    assert not {task.to_example(r)[0] for r in train} & {task.to_example(r)[0] for r in test}
    test_ids = {r["text"]: r["task_id"] for r in test}
    shared = sorted((test_ids[r["text"]], r["task_id"]) for r in train if r["text"] in test_ids)
    assert shared == [(216, 872), (217, 602), (248, 704)]


def test_unknown_split_names_the_known_ones(task):
    with pytest.raises(TaskDataError) as excinfo:
        task.read_split("dev")
    message = str(excinfo.value)
    assert "\n" not in message and "'dev'" in message and "train, test, validation, prompt" in message


def test_damaged_copy_is_refused(task, monkeypatch):
    import basel_app.tasks.code as code_module

    real = code_module.read_jsonl
    def without_42(path, fields):
        return [r for r in real(path, fields) if r["task_id"] != 42]

    monkeypatch.setattr(code_module, "read_jsonl", without_42)
    with pytest.raises(TaskDataError, match=r"split 'test' needs each task_id 11\.\.510 once; missing \[42\]"):
        task.read_split("test")


def test_prompt_is_the_fixed_mbpp_prompt(task):
    record = task.read_split("test")[0]
    prompt, response = task.to_example(record)
    assert prompt == RECORD_11_PROMPT
    assert prompt == PROMPT_TEMPLATE.format(text=record["text"], tests="\n".join(record["test_list"]))
    assert response.startswith("def remove_Occ(s,ch):") and response.endswith("return s")
    assert response == record["code"].replace("\r\n", "\n").strip()


def test_responses_are_the_reference_code_without_carriage_returns(task):
    records = task.load_train_records()
    assert sum("\r" in r["code"] for r in records) > 300  # MBPP writes \r\n
    for record in records:
        _, response = task.to_example(record)
        assert "\r" not in response and response == normalize_code(record["code"])
        compile(response, f"mbpp-{record['task_id']}", "exec")


@pytest.mark.parametrize("fixture", ["plain_tokenizer", "chat_tokenizer"])
def test_labels_only_on_the_code(request, fixture, task):
    tokenizer = request.getfixturevalue(fixture)
    record = task.load_train_records()[0]
    prompt, code = task.to_example(record)
    example = task.encode(tokenizer, record, max_length=4096)
    labels, ids = example["labels"], example["input_ids"]
    n_prompt = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
    assert ids[:n_prompt] == task.prompt_ids(tokenizer, record)
    trained = tokenizer.decode(ids[n_prompt:])
    expected = f" {code}<|endoftext|>" if fixture == "plain_tokenizer" else f"{code}<|im_end|>\n"
    assert trained == expected
    # the asserts are in the (untrained) prompt, not the response
    assert record["test_list"][0] in tokenizer.decode(ids[:n_prompt]) and record["test_list"][0] not in trained
    assert prompt in tokenizer.decode(ids[:n_prompt])


def test_local_data_dir_reads_one_file_per_split(tmp_path, task):
    for split in ("train", "test"):
        rows = task.read_split(split)[:3]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    local = build_task(code_cfg(data_dir=str(tmp_path), source="local"))
    assert local.source == "local"
    assert [r["task_id"] for r in local.load_train_records()] == [601, 602, 603]
    assert [r["task_id"] for r in local.load_eval_records()] == [11, 12, 13]


def test_local_record_missing_a_field_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"task_id": 1, "text": "t", "code": "c"}) + "\n")
    with pytest.raises(TaskDataError, match=r"train.jsonl:1: record is missing field 'test_list'"):
        build_task(code_cfg(data_dir=str(tmp_path))).load_train_records()


def test_hub_split_names_are_passed_through(monkeypatch, task):
    import datasets

    calls = []
    rows = task.read_split("prompt")[:2]

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hub = build_task(code_cfg(source="hub", hub_id="google-research-datasets/mbpp", hub_config="full"))
    assert len(hub.load_eval_records()) == 2
    assert calls == [("google-research-datasets/mbpp", "full", "test")]
