"""Target applications: reading and validating records, and turning them into (prompt, response)
token sequences with the loss only on the response.
"""

from basel_app.tasks.base import Task
from basel_app.tasks.code import CodeTask  # importing it registers the "code" task
from basel_app.tasks.encoding import IGNORE_INDEX, encode_example, prompt_ids
from basel_app.tasks.lm import LMTask  # importing it registers the "lm" task
from basel_app.tasks.math import MathTask  # importing it registers the "math" task
from basel_app.tasks.records import TaskDataError, read_jsonl
from basel_app.tasks.registry import TASKS, build_task, register_task

__all__ = [
    "CodeTask",
    "IGNORE_INDEX",
    "LMTask",
    "TASKS",
    "MathTask",
    "Task",
    "TaskDataError",
    "build_task",
    "encode_example",
    "prompt_ids",
    "read_jsonl",
    "register_task",
]
