"""The math (GSM8K) task: annotations stripped, final answers extracted, prompt/response split."""

from __future__ import annotations

import pytest

from basel_app.tasks import build_task
from basel_app.tasks.math import final_answer, strip_calculator_annotations
from tests.tasks.helpers import task_cfg


def test_strip_calculator_annotations():
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips.\nShe earned $<<12/60=0.2>>0.2 per minute.\n#### 24"
    assert strip_calculator_annotations(text) == "Natalia sold 48/2 = 24 clips.\nShe earned $0.2 per minute.\n#### 24"


def test_packaged_answers_are_clean_by_default():
    task = build_task(task_cfg())
    records = task.load_train_records()
    prompt, response = task.to_example(records[0])
    assert prompt.startswith("Natalia sold clips") and prompt.endswith("in April and May?")
    assert response == "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"
    assert not any("<<" in task.to_example(r)[1] or ">>" in task.to_example(r)[1] for r in records)


def test_annotations_kept_when_asked():
    task = build_task(task_cfg(strip_calculator_annotations=False))
    _, response = task.to_example(task.load_train_records()[0])
    assert "<<48/2=24>>" in response


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("a\nb\n#### 72", "72"), ("x\n#### 1,200", "1200"), ("#### -3.5 ", "-3.5"), ("no final line", None)],
)
def test_final_answer(answer, expected):
    assert final_answer(answer) == expected


def test_every_packaged_record_has_a_reference_answer():
    task = build_task(task_cfg())
    assert all(task.reference_answer(r) for r in task.load_eval_records())
