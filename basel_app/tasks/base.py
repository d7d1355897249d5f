"""The task interface: where a task's records come from and how one becomes a training example.

A task is built from a ``basel_app.config.schema.TaskConfig``. It reads its training split and its evaluation split separately — the two are never mixed,
and a config that names the same split for both is refused — and turns each record into
``(prompt_text, response_text)``; :mod:`basel_app.tasks.encoding` turns that into token ids.

Where records come from (``Task.source``):

1. ``data_dir`` set → ``local``: ``<data_dir>/<split>.jsonl``. ``data_dir`` always wins, whatever
   ``source`` says, so ``task.data_dir=...`` is the one override that works offline for every task.
2. ``source == "hub"`` → ``datasets.load_dataset(hub_id, hub_config, split=..., revision=...)``.
3. otherwise → ``packaged``: the copy under ``basel_app/resources/<resource_dir>/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from basel_app.config.errors import ConfigError
from basel_app.config.schema import TaskConfig
from basel_app.tasks.encoding import PLAIN_TEMPLATE, encode_example, prompt_ids
from basel_app.tasks.records import (
    FieldSpec,
    Record,
    read_hub_split,
    read_local_split,
    read_packaged_split,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Task(ABC):
    """One target application. Subclasses set the class attributes and implement :meth:`to_example`."""

    name: ClassVar[str]
    fields: ClassVar[FieldSpec]  # required record fields and their types, checked on read
    resource_dir: ClassVar[str | None] = None  # folder under basel_app/resources/ with the packaged copy
    plain_template: ClassVar[str] = PLAIN_TEMPLATE  # prompt format for tokenizers without a chat template

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg
        self.train_split: str = cfg.train_split
        self.eval_split: str = cfg.eval_split
        self.system_prompt: str | None = cfg.system_prompt
        self.source = self._resolve_source(cfg)
        if self.train_split == self.eval_split:
            # Same file for both: the model would be trained on its own test set.
            raise ConfigError(
                f"task.train_split and task.eval_split are both {self.train_split!r}; training on the "
                "evaluation split would inflate every score. Name two different splits."
            )

    @classmethod
    def packaged(cls, system_prompt: str | None = None) -> Task:
        """The task on its packaged copy with the standard splits — for benchmarks, which have no task config."""
        return cls(TaskConfig(name=cls.name, source="packaged", system_prompt=system_prompt))

    def _resolve_source(self, cfg: TaskConfig) -> str:
        if cfg.data_dir is not None:
            return "local"
        if cfg.source == "local":
            raise ConfigError("task.source=local needs task.data_dir=/dir/with/<split>.jsonl")
        if cfg.source == "hub":
            if not cfg.hub_id:
                raise ConfigError(f"task.source=hub needs task.hub_id=<dataset id> for task {self.name!r}")
            return "hub"
        if self.resource_dir is None:
            raise ConfigError(
                f"task {self.name!r} ships no data; set task.data_dir=/dir/with/<split>.jsonl or "
                "task.source=hub with task.hub_id"
            )
        return "packaged"

    def describe_source(self) -> str:
        """One line for logs and metrics: which data this run used."""
        if self.source == "local":
            return f"local:{self.cfg.data_dir}"
        if self.source == "hub":
            return f"hub:{self.cfg.hub_id}/{self.cfg.hub_config}@{self.cfg.revision}"
        return f"packaged:basel_app/resources/{self.resource_dir}"

    def read_split(self, split: str) -> list[Record]:
        """Read and validate every record of ``split`` from this task's source."""
        if self.source == "local":
            return read_local_split(self.cfg.data_dir, split, self.fields)
        if self.source == "hub":
            return read_hub_split(
                self.cfg.hub_id,
                self.cfg.hub_config,
                split,
                self.fields,
                revision=self.cfg.revision,
                local_splits=(self.train_split, self.eval_split),
            )
        assert self.resource_dir is not None
        return read_packaged_split(self.resource_dir, split, self.fields)

    def load_train_records(self) -> list[Record]:
        return self.read_split(self.train_split)

    def load_eval_records(self) -> list[Record]:
        return self.read_split(self.eval_split)

    @abstractmethod
    def to_example(self, record: Record) -> tuple[str, str]:
        """``(prompt_text, response_text)`` of one record: what the user asks, what the model should answer."""

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, record: Record, max_length: int
    ) -> dict[str, list[int]] | None:
        """Token ids and labels (loss on the response only), or ``None`` to skip a too-long prompt.

        Tasks without a prompt/response split (language modelling) override this.
        """
        prompt, response = self.to_example(record)
        return encode_example(tokenizer, prompt, response, max_length, self.system_prompt, self.plain_template)

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, record: Record) -> list[int]:
        """The prompt exactly as in training, for generating an answer at evaluation."""
        prompt, _ = self.to_example(record)
        return prompt_ids(tokenizer, prompt, self.system_prompt, self.plain_template)

