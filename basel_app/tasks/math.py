"""The ``math`` task: GSM8K grade-school word problems, question → worked answer.

Each record is ``{"question": str, "answer": str}``; the answer is a worked solution whose last line is
``#### <final answer>``. The model is trained to produce the whole worked answer, ``####`` line included,
so evaluation can score it strictly (the ``####`` number) as well as flexibly (the last number).

GSM8K answers carry calculator annotations, e.g. ``48/2 = <<48/2=24>>24``. They were written for a
calculator-tool setup and are noise for a plain language model (and they are not what the model should
generate), so ``strip_calculator_annotations=True`` (the default) removes them: ``48/2 = 24``.

Data: the packaged copy (``basel_app/resources/gsm8k``, openai/grade-school-math, MIT), a local
``task.data_dir`` with ``train.jsonl``/``test.jsonl``, or the hub (``task.source=hub task.hub_id=openai/gsm8k
task.hub_config=main``). See :mod:`basel_app.tasks.base` for how the source is chosen.
"""

from __future__ import annotations

import re

from basel_app.config.schema import TaskConfig
from basel_app.tasks.base import Task
from basel_app.tasks.records import Record
from basel_app.tasks.registry import register_task

_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
_FINAL_ANSWER = re.compile(r"####\s*(.+?)\s*$")


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's ``<<expression=result>>`` annotations: ``"$<<12/60=0.2>>0.2"`` → ``"$0.2"``."""
    return _CALCULATOR_ANNOTATION.sub("", text)


def final_answer(answer: str) -> str | None:
    """The text after the last ``####`` of a GSM8K answer, commas removed (``"1,200"`` → ``"1200"``)."""
    lines = [line for line in answer.strip().splitlines() if "####" in line]
    if not lines:
        return None
    match = _FINAL_ANSWER.search(lines[-1])
    return match.group(1).replace(",", "") if match else None


@register_task
class MathTask(Task):
    """GSM8K: prompt = the question, response = the worked answer ending in ``#### N``."""

    name = "math"
    fields = {"question": str, "answer": str}
    resource_dir = "gsm8k"

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self.strip_annotations: bool = cfg.strip_calculator_annotations

    def to_example(self, record: Record) -> tuple[str, str]:
        answer = record["answer"]
        if self.strip_annotations:
            answer = strip_calculator_annotations(answer)
        return record["question"].strip(), answer.strip()

    def reference_answer(self, record: Record) -> str | None:
        """The gold final answer (the ``####`` number), for scoring generations."""
        return final_answer(record["answer"])
