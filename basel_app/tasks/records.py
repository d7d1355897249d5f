"""Reading and validating a task's raw records (before any model is loaded).

A task's records come from one of three places:

- ``packaged``: a copy shipped inside the package (``basel_app/resources/<task>/<split>.jsonl``),
- ``local``: ``<data_dir>/<split>.jsonl`` on disk,
- ``hub``: ``datasets.load_dataset(hub_id, hub_config, split=split, revision=revision)``.

Every record is checked against the task's field spec (name -> expected type) as it is read, so a
bad line fails in seconds with one line naming the file, the line number and what is wrong, rather
than after a multi-minute model load. Every error raised here is a :class:`TaskDataError` (a
``ValueError``) so callers can catch one type.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from basel_app.config.errors import ConfigError

Record = dict[str, Any]
FieldSpec = Mapping[str, type]


class TaskDataError(ConfigError):
    """A task's data cannot be read or is malformed; the message says where and how to fix it."""


def _describe(fields: FieldSpec) -> str:
    return ", ".join(fields)


def validate_record(record: Any, fields: FieldSpec, where: str) -> Record:
    """Return ``record`` if it is an object holding every field of ``fields`` with the right type.

    ``where`` names the record in errors (``"path/train.jsonl:12"`` or ``"openai/gsm8k[train] row 3"``).
    """
    if not isinstance(record, dict):
        raise TaskDataError(
            f"{where}: expected a JSON object, got {type(record).__name__}; required fields: {_describe(fields)}"
        )
    for name, expected in fields.items():
        if name not in record:
            raise TaskDataError(
                f"{where}: record is missing field {name!r}; required fields: {_describe(fields)}"
            )
        if not isinstance(record[name], expected):
            raise TaskDataError(
                f"{where}: field {name!r} must be {expected.__name__}, got {type(record[name]).__name__}; "
                f"required fields: {_describe(fields)}"
            )
    return record


def read_jsonl(path: str | Path, fields: FieldSpec) -> list[Record]:
    """Read a JSONL file (one JSON object per line; blank lines ignored) and validate every record."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"data file {str(path)!r} does not exist (expected one JSON object per line)")
    records: list[Record] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskDataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one "
                    f"JSON object with fields: {_describe(fields)}"
                ) from None
            records.append(validate_record(record, fields, f"{path}:{lineno}"))
    if not records:
        raise TaskDataError(f"{path}: holds no records; expected JSON objects with fields: {_describe(fields)}")
    return records


def local_split_file(data_dir: str | Path, split: str, filename: str, expected: str = "") -> Path:
    """``<data_dir>/<filename>``; errors name the directory, the missing file and what the directory holds."""
    data_dir = Path(data_dir)
    suffix = Path(filename).suffix
    if not data_dir.is_dir():
        raise TaskDataError(f"task.data_dir={str(data_dir)!r} is not a directory; give one holding {filename}")
    path = data_dir / filename
    if not path.is_file():
        present = sorted(p.name for p in data_dir.glob(f"*{suffix}"))
        raise TaskDataError(
            f"task.data_dir={str(data_dir)!r} has no {filename} (split {split!r}); "
            f"it holds: {', '.join(present) or f'no {suffix} files'}{expected}"
        )
    return path


def read_local_split(data_dir: str | Path, split: str, fields: FieldSpec) -> list[Record]:
    """Read ``<data_dir>/<split>.jsonl``."""
    return read_jsonl(local_split_file(data_dir, split, f"{split}.jsonl"), fields)


def read_packaged_split(resource_dir: str, split: str, fields: FieldSpec) -> list[Record]:
    """Read ``basel_app/resources/<resource_dir>/<split>.jsonl`` (works from a wheel or a checkout)."""
    resource = resources.files("basel_app").joinpath("resources", resource_dir, f"{split}.jsonl")
    if not resource.is_file():
        raise TaskDataError(
            f"the package ships no {resource_dir}/{split}.jsonl (split {split!r}); use a split it ships or "
            f"task.data_dir=/dir/with/{split}.jsonl"
        )
    with resources.as_file(resource) as path:
        return read_jsonl(path, fields)


def read_hub_split(
    hub_id: str,
    hub_config: str | None,
    split: str,
    fields: FieldSpec,
    revision: str | None = None,
    local_splits: Iterable[str] = ("train", "test"),
) -> list[Record]:
    """Load one split of a hub dataset with ``datasets.load_dataset`` and validate every row.

    Any failure to load (no network, unknown id, missing split) becomes one line that names the hub id
    and the offline override (``task.data_dir=...``). ``local_splits`` only shapes that hint.
    """
    import datasets  # imported here: it is slow to import and only this source needs it

    try:
        dataset = datasets.load_dataset(hub_id, hub_config, split=split, revision=revision)
    except Exception as exc:  # noqa: BLE001 - any loading failure gets the same actionable message
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        files = ",".join(f"{name}.jsonl" for name in local_splits)
        raise TaskDataError(
            f"could not load split {split!r} of hub dataset {hub_id!r} (config {hub_config!r}, revision "
            f"{revision!r}): {type(exc).__name__}: {reason}; offline? use a local copy with "
            f"task.data_dir=/dir/with/{files}"
        ) from exc
    where = f"{hub_id}[{split}]"
    return [validate_record(dict(row), fields, f"{where} row {i}") for i, row in enumerate(dataset)]
