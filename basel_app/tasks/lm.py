"""The ``lm`` task: language modelling on WikiText-2 — the loss is on every token, there is no prompt.

Compression data is the training split cut into fixed-length windows of ``max_length`` token ids, each trained
on all of its tokens (``labels == input_ids``); evaluation data is the evaluation split cut the same way.
The WikiText-2 *test perplexity* (sliding window over the whole test split) is a separate benchmark:
:func:`basel_app.evaluation.perplexity.wikitext_perplexity` on :func:`wikitext_test_text`.

How a split becomes windows (records are read before any tokenizer exists, see
:mod:`basel_app.data.datamodule`, so a record cannot be a token window yet)::

    split text (as the file is laid out) ──words──► " \\n =" " Valkyria" " Chronicles" " III" " =" " \\n \\n Senjō" ...
    record k = the text of words [k·W, (k+1)·W)          W = task.max_length words, the last partial run dropped
    encode(record) = its first max_length token ids       labels = input_ids (every token trained)

A *word* here is a whitespace-delimited run with the whitespace before it (regex ``\\s*\\S+``). Tokenizers that
split before whitespace (byte-level BPE as in SmolLM2 and Llama 3, SentencePiece as in Llama 2) give every word
at least one token of its own, so a record of ``max_length`` words has at least ``max_length`` tokens and every
window is exactly ``max_length`` long; the tokens past it are dropped (about 22% of WikiText-2's text for
SmolLM2's tokenizer, 1.29 tokens per word). Windows run across article boundaries, like the evaluation stream;
they are tokenized one at a time, without special tokens (no BOS/EOS inside running text).

Data (the same three files in every source; ``valid`` and ``validation`` name the same split):

- packaged (default): ``basel_app/resources/wikitext2/{train,valid,test}.txt.gz`` (CC BY-SA, see its README);
- ``task.data_dir=/dir`` holding ``train.txt``, ``valid.txt``, ``test.txt`` in the same layout;
- ``task.source=hub``: ``datasets.load_dataset("wikitext", "wikitext-2-v1")`` (``task.hub_id`` /
  ``task.hub_config`` override), its rows joined back into the file layout (an empty row is the file's
  ``" \\n"`` line).
"""

from __future__ import annotations

import gzip
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from basel_app.config.errors import ConfigError
from basel_app.config.schema import TaskConfig
from basel_app.tasks.base import Task
from basel_app.tasks.encoding import _as_ids
from basel_app.tasks.records import Record, TaskDataError, local_split_file
from basel_app.tasks.registry import register_task

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

HUB_ID = "wikitext"
HUB_CONFIG = "wikitext-2-v1"  # the tokenized variant with <unk>, as packaged (not wikitext-2-raw-v1)
RESOURCE_DIR = "wikitext2"
# split name -> (file stem, hub split name)
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train", "train"),
    "valid": ("valid", "validation"),
    "validation": ("valid", "validation"),
    "test": ("test", "test"),
}

_WORD = re.compile(r"\s*\S+")


def _split_names(split: str) -> tuple[str, str]:
    if split not in SPLITS:
        raise TaskDataError(f"WikiText-2 has no split {split!r}; choose one of: {', '.join(SPLITS)}")
    return SPLITS[split]


def _read_local(data_dir: str | Path, split: str) -> str:
    stem, _ = _split_names(split)
    expected = "; expected WikiText-2's train.txt, valid.txt, test.txt"
    path = local_split_file(data_dir, split, f"{stem}.txt", expected)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TaskDataError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8") from None


def _read_packaged(split: str) -> str:
    """The packaged copy is gzipped (train.txt is 10.8 MB as text, 3.7 MB compressed)."""
    stem, _ = _split_names(split)
    resource = resources.files("basel_app").joinpath("resources", RESOURCE_DIR, f"{stem}.txt.gz")
    if not resource.is_file():
        raise TaskDataError(
            f"the package ships no {RESOURCE_DIR}/{stem}.txt.gz (split {split!r}); reinstall basel_app or use "
            f"task.data_dir=/dir/with/{stem}.txt"
        )
    return gzip.decompress(resource.read_bytes()).decode("utf-8")


def _read_hub(split: str, hub_id: str, hub_config: str | None, revision: str | None) -> str:
    _, hub_split = _split_names(split)
    import datasets  # imported here: it is slow to import and only this source needs it

    try:
        rows = datasets.load_dataset(hub_id, hub_config, split=hub_split, revision=revision)["text"]
    except Exception as exc:  # noqa: BLE001 - any loading failure gets the same actionable message
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise TaskDataError(
            f"could not load split {hub_split!r} of hub dataset {hub_id!r} (config {hub_config!r}): "
            f"{type(exc).__name__}: {reason}; offline? use the packaged copy (task.source=packaged) or "
            "task.data_dir=/dir/with/train.txt,valid.txt,test.txt"
        ) from exc
    # The hub keeps one row per file line and turns the file's blank " \n" lines into "".
    return "".join(row if row else " \n" for row in rows)


def read_wikitext(
    split: str,
    data_dir: str | Path | None = None,
    source: str = "packaged",
    hub_id: str = HUB_ID,
    hub_config: str | None = HUB_CONFIG,
    revision: str | None = None,
) -> str:
    """The text of one WikiText-2 split exactly as its file is laid out (``data_dir`` wins over ``source``)."""
    if data_dir is not None:
        return _read_local(data_dir, split)
    if source == "hub":
        return _read_hub(split, hub_id, hub_config, revision)
    if source == "packaged":
        return _read_packaged(split)
    raise TaskDataError(f"source={source!r} is not allowed for WikiText-2; use packaged, hub, or a data_dir")


def wikitext_test_text(data_dir: str | Path | None = None, source: str = "packaged") -> str:
    """The WikiText-2 test split as one string: the raw ``test.txt`` (the perplexity benchmark's input)."""
    return read_wikitext("test", data_dir=data_dir, source=source)


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids a tokenizer puts before any text with ``add_special_tokens=True`` (Llama: ``[bos]``; SmolLM2: ``[]``)."""
    with_special = _as_ids(tokenizer("a", add_special_tokens=True))
    plain = _as_ids(tokenizer("a", add_special_tokens=False))
    at = next((i for i in range(len(with_special) - len(plain) + 1) if with_special[i : i + len(plain)] == plain), 0)
    return with_special[:at]


def word_windows(text: str, words: int) -> list[str]:
    """Consecutive runs of ``words`` words of ``text`` (each word with the whitespace before it).

    Joining the runs gives back ``text`` up to the last full run (the remainder and trailing whitespace are
    dropped).
    """
    if words < 1:
        raise ValueError(f"words={words} is not allowed; it must be >= 1")
    pieces = _WORD.findall(text)
    return ["".join(pieces[start : start + words]) for start in range(0, len(pieces) - words + 1, words)]


@register_task
class LMTask(Task):
    """WikiText-2 language modelling: prompt empty, response = a window of running text, loss on every token."""

    name = "lm"
    fields = {"text": str}
    resource_dir = RESOURCE_DIR

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__(cfg)
        self.window: int = cfg.max_length
        self.hub_id: str = cfg.hub_id or HUB_ID
        self.hub_config: str | None = cfg.hub_config or HUB_CONFIG
        for split in (self.train_split, self.eval_split):
            _split_names(split)  # an unknown split fails here, before any file is read

    def _resolve_source(self, cfg: TaskConfig) -> str:
        # Unlike the base class, hub needs no task.hub_id: WikiText-2 has a known one.
        if cfg.data_dir is not None:
            return "local"
        if cfg.source == "local":
            raise ConfigError("task.source=local needs task.data_dir=/dir/with/train.txt,valid.txt,test.txt")
        return cfg.source

    def describe_source(self) -> str:
        if self.source == "hub":
            return f"hub:{self.hub_id}/{self.hub_config}@{self.cfg.revision}"
        return super().describe_source()

    def read_text(self, split: str) -> str:
        """The split's text as its file is laid out, from this task's source."""
        return read_wikitext(
            split,
            data_dir=self.cfg.data_dir if self.source == "local" else None,
            source=self.source,
            hub_id=self.hub_id,
            hub_config=self.hub_config,
            revision=self.cfg.revision,
        )

    def read_split(self, split: str) -> list[Record]:
        """Records ``{"text": ...}`` of ``task.max_length`` words each, in file order."""
        windows = word_windows(self.read_text(split), self.window)
        if not windows:
            raise TaskDataError(f"WikiText-2 split {split!r} has fewer than task.max_length={self.window} words")
        return [{"text": text} for text in windows]

    def to_example(self, record: Record) -> tuple[str, str]:
        return "", record["text"]

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, record: Record, max_length: int
    ) -> dict[str, list[int]] | None:
        """The record's first ``max_length`` token ids (no special tokens), every one of them a label."""
        ids = _as_ids(tokenizer(record["text"], add_special_tokens=False))[:max_length]
        if not ids:
            return None
        return {"input_ids": ids, "labels": list(ids)}

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, record: Record) -> list[int]:
        """Language modelling has no prompt: only what the tokenizer puts before any text (a BOS, or nothing)."""
        return special_prefix(tokenizer)
