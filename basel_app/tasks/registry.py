"""Task names → task classes. A new task is a name in ``basel_app.config.names.TASK_NAMES`` (which the
config validates against) and a module with a :class:`~basel_app.tasks.base.Task` subclass decorated with
:func:`register_task`, imported in ``basel_app/tasks/__init__.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from basel_app.config.names import TASK_NAMES
from basel_app.config.errors import ConfigError
from basel_app.config.schema import TaskConfig

if TYPE_CHECKING:
    from basel_app.tasks.base import Task

TASKS: dict[str, type[Task]] = {}

T = TypeVar("T", bound="type[Task]")


def register_task(cls: T) -> T:
    """Class decorator: make ``cls`` available as ``task.name=<cls.name>``."""
    name = cls.name
    if name not in TASK_NAMES:
        raise ValueError(f"task {name!r} ({cls.__qualname__}) is not in basel_app.config.names.TASK_NAMES; add it there")
    if name in TASKS and TASKS[name] is not cls:
        raise ValueError(f"task name {name!r} is registered twice ({TASKS[name].__qualname__}, {cls.__qualname__})")
    TASKS[name] = cls
    return cls


def build_task(cfg: TaskConfig) -> Task:
    """Instantiate the task named by ``cfg.name`` with its config."""
    name = cfg.name
    if name not in TASKS:
        raise ConfigError(f"task.name={name!r} is not a known task; choose one of: {', '.join(sorted(TASKS))}")
    return TASKS[name](cfg)
