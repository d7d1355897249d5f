"""Property: any data file — empty, not JSON, wrong types, lone surrogates, invalid UTF-8, huge or deeply nested
records — either loads and tokenizes, or fails with one line naming the file (a ConfigError, which the
command lines print without a traceback). Nothing else may escape."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from basel_app.config.errors import ConfigError
from basel_app.config.schema import TaskConfig
from basel_app.data import TaskDataModule
from basel_app.tasks import TASKS

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def records(draw, task: str) -> bytes:
    """One line: a record whose every field is a random JSON value, often of the right type."""
    fields = TASKS[task].fields
    record = {name: draw(st.one_of(JSON_VALUES, st.just("x"), st.lists(st.text(max_size=8), max_size=3),
                                   st.integers(1, 5))) for name in fields}
    return json.dumps(record).encode()


@st.composite
def lines(draw, task: str) -> bytes:
    valid = {"math": {"question": "1+1?", "answer": "2\n#### 2"},
             "code": {"task_id": 1, "text": "add", "code": "def f(): pass", "test_list": ["assert True"],
                      "test_setup_code": ""}}[task]
    good = json.dumps(valid).encode()
    return draw(st.one_of(
        st.just(good),
        records(task),
        st.binary(max_size=40),  # invalid UTF-8, not JSON
        st.text(max_size=40).map(str.encode),  # not JSON
        st.sampled_from([b"", b"[]", b"null", b"1e400", b"\"\\ud800\"", b"9" * 5000, b"[" * 100_000]),
        st.just(good.replace(b'"2\\n', b'"\\udc00\\n')),  # a lone surrogate in a field
        st.just(good.replace(b'"1+1?"', json.dumps("?" * 200_000).encode())),  # a huge field
        st.just(good.replace(b'"1+1?"', b'"\xff\xfe"')),  # invalid UTF-8 inside a string
    ))


def files(task: str):
    return st.lists(lines(task), max_size=4).map(b"\n".join)


@pytest.mark.parametrize("task", ["math", "code"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_data_file_loads_or_fails_in_one_line_naming_it(tmp_path_factory, plain_tokenizer, task, data):
    directory = tmp_path_factory.mktemp("data")
    train, test = data.draw(files(task), label="train.jsonl"), data.draw(files(task), label="test.jsonl")
    (directory / "train.jsonl").write_bytes(train)
    (directory / "test.jsonl").write_bytes(test)
    cfg = TaskConfig(name=task, data_dir=str(directory), source="local", max_length=64)
    datamodule = TaskDataModule.from_config(cfg, seed=0)
    try:
        datamodule.load_records()
        datamodule.attach_tokenizer(plain_tokenizer)
        datamodule.setup("fit")
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message
        assert str(directory) in message or "task.max_length" in message
        return
    assert len(datamodule.train_dataset) >= 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.binary(max_size=200))
def test_any_lm_text_file_loads_or_fails_in_one_line_naming_it(tmp_path_factory, plain_tokenizer, text):
    directory = tmp_path_factory.mktemp("wikitext")
    for name in ("train.txt", "valid.txt", "test.txt"):
        (directory / name).write_bytes(text)
    datamodule = TaskDataModule.from_config(TaskConfig(name="lm", data_dir=str(directory), eval_split="valid",
                                                       max_length=8), seed=0)
    try:
        datamodule.load_records()
        datamodule.attach_tokenizer(plain_tokenizer)
        datamodule.setup("fit")
    except ConfigError as err:
        assert "\n" not in str(err) and (str(directory) in str(err) or "task.max_length" in str(err))
