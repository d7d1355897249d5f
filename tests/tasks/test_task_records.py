"""Reading and validating records: the packaged copy, local files, the hub; every error is one line."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest

from basel_app.tasks import TASKS, MathTask, TaskDataError, build_task
from basel_app.tasks.records import read_jsonl
from tests.tasks.helpers import task_cfg

FIELDS = {"question": str, "answer": str}
GOOD = {"question": "What is 1+1?", "answer": "1+1 = <<1+1=2>>2\n#### 2"}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def test_packaged_gsm8k_is_the_published_copy():
    # sha256 of openai/grade-school-math @ 3101c7d5 (see basel_app/resources/gsm8k/README.md)
    expected = {
        "train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
        "test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    }
    folder = resources.files("basel_app").joinpath("resources", "gsm8k")
    for name, digest in expected.items():
        assert hashlib.sha256(folder.joinpath(name).read_bytes()).hexdigest() == digest
    assert "Copyright (c) 2021 OpenAI" in folder.joinpath("LICENSE").read_text()


def test_packaged_splits_load_and_validate():
    task = build_task(task_cfg())
    assert isinstance(task, MathTask) and task.source == "packaged"
    train, test = task.load_train_records(), task.load_eval_records()
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0]["question"].startswith("Natalia sold clips")
    # train and eval are different data: no question appears in both
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_missing_field_names_file_line_field_and_required(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD), json.dumps({"question": "q"})])
    with pytest.raises(TaskDataError) as excinfo:
        read_jsonl(path, FIELDS)
    message = one_line_error(excinfo)
    assert f"{path}:2" in message and "'answer'" in message and "question, answer" in message


def test_bad_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD), "", '{"question": "q", "answer": '])
    with pytest.raises(TaskDataError) as excinfo:
        read_jsonl(path, FIELDS)
    message = one_line_error(excinfo)
    assert f"{path}:3" in message and "not valid JSON" in message and "question, answer" in message


@pytest.mark.parametrize(
    ("line", "needle"),
    [('["a", "b"]', "expected a JSON object, got list"), ('{"question": "q", "answer": 4}', "'answer' must be str")],
)
def test_wrong_shapes_are_refused(tmp_path, line, needle):
    path = write_lines(tmp_path / "train.jsonl", [line])
    with pytest.raises(TaskDataError) as excinfo:
        read_jsonl(path, FIELDS)
    message = one_line_error(excinfo)
    assert f"{path}:1" in message and needle in message


def test_empty_file_is_refused(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [""])
    with pytest.raises(TaskDataError, match="holds no records"):
        read_jsonl(path, FIELDS)


def test_local_data_dir_reads_both_splits(tmp_path):
    write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD)] * 3)
    write_lines(tmp_path / "test.jsonl", [json.dumps(GOOD)])
    task = build_task(task_cfg(data_dir=str(tmp_path), source="local"))
    assert task.source == "local"
    assert len(task.load_train_records()) == 3 and len(task.load_eval_records()) == 1


def test_data_dir_missing_split_file_names_dir_and_file(tmp_path):
    write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD)])
    task = build_task(task_cfg(data_dir=str(tmp_path)))
    with pytest.raises(TaskDataError) as excinfo:
        task.load_eval_records()
    message = one_line_error(excinfo)
    assert str(tmp_path) in message and "test.jsonl" in message and "train.jsonl" in message


def test_data_dir_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    missing.mkdir()
    task = build_task(task_cfg(data_dir=str(missing)))  # the config checks the dir exists; it can vanish later
    missing.rmdir()
    with pytest.raises(TaskDataError) as excinfo:
        task.load_train_records()
    assert str(missing) in one_line_error(excinfo)


def test_hub_loads_with_given_id_config_split_revision(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return [dict(GOOD)] * 2

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = task_cfg(source="hub", hub_id="openai/gsm8k", hub_config="main", revision="abc123")
    task = build_task(cfg)
    assert task.source == "hub" and len(task.load_train_records()) == 2
    assert calls == [("openai/gsm8k", "main", "train", "abc123")]


def test_hub_rows_are_validated(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [dict(GOOD), {"question": "q"}])
    task = build_task(task_cfg(source="hub", hub_id="openai/gsm8k", hub_config="main"))
    with pytest.raises(TaskDataError, match=r"openai/gsm8k\[train\] row 1: record is missing field 'answer'"):
        task.load_train_records()


def test_hub_offline_error_names_id_and_override(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    task = build_task(task_cfg(source="hub", hub_id="openai/gsm8k", hub_config="main"))
    with pytest.raises(TaskDataError) as excinfo:
        task.load_eval_records()
    message = one_line_error(excinfo)
    assert "'openai/gsm8k'" in message and "ConnectionError" in message
    assert "task.data_dir=/dir/with/train.jsonl,test.jsonl" in message


def test_data_dir_overrides_hub(tmp_path):
    # the documented offline fix: keep source=hub in the config, add task.data_dir
    write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD)])
    task = build_task(task_cfg(source="hub", hub_id="openai/gsm8k", data_dir=str(tmp_path)))
    assert task.source == "local" and len(task.load_train_records()) == 1


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"source": "local"}, "task.source=local needs task.data_dir"),
        ({"source": "hub"}, "task.source=hub needs task.hub_id"),
        ({"source": "ftp"}, "task.source='ftp' is not allowed"),
        ({"eval_split": "train"}, "both 'train'"),
    ],
)
def test_inconsistent_configs_are_refused(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        build_task(task_cfg(**overrides))


def test_unknown_task_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"task.name='poetry' is not allowed; choose one of: .*math"):
        build_task(task_cfg(name="poetry"))
    assert TASKS["math"] is MathTask


def test_the_real_task_config_builds_the_task():
    from basel_app.config.schema import TaskConfig

    task = build_task(TaskConfig())
    assert task.name == "math" and task.source == "packaged" and task.strip_annotations


def test_real_load_dataset_offline_gives_the_one_line_error(tmp_path):
    # the real datasets.load_dataset call, forced offline with an empty cache (a fresh process, because
    # huggingface_hub reads HF_HUB_OFFLINE at import)
    import os
    import subprocess
    import sys

    code = (
        "from basel_app.tasks import build_task\n"
        "from tests.tasks.helpers import task_cfg\n"
        "build_task(task_cfg(source='hub', hub_id='openai/gsm8k', hub_config='main')).load_train_records()\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("basel_app.tasks.records.TaskDataError:")
    assert "'openai/gsm8k'" in last and "task.data_dir=/dir/with/train.jsonl,test.jsonl" in last
