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
from typing import Any, get_args, get_origin

from basel_app.config.errors import ConfigError

Record = dict[str, Any]
FieldSpec = Mapping[str, Any]  # name -> a type, or list[T] for a list whose every item is a T


class TaskDataError(ConfigError):
    """A task's data cannot be read or is malformed; the message says where and how to fix it."""


def _describe(fields: FieldSpec) -> str:
    return ", ".join(fields)


def _type_name(expected: Any) -> str:
    return str(expected) if get_origin(expected) else expected.__name__


def _has_type(value: Any, expected: Any) -> bool:
    if get_origin(expected) is list:
        (item,) = get_args(expected)
        return isinstance(value, list) and all(isinstance(v, item) for v in value)
    return isinstance(value, expected)


def _not_unicode(value: Any) -> bool:
    """Whether `value` (a string, or a list of them) holds a lone surrogate: JSON can escape one (\\ud800), but it
    is no Unicode text, and tokenizers fail on it far from the file."""
    strings = value if isinstance(value, list) else [value]
    try:
        for text in strings:
            if isinstance(text, str):
                text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
        if not _has_type(record[name], expected):
            got = type(record[name]).__name__
            if isinstance(record[name], list):
                got = f"list of {', '.join(sorted({type(v).__name__ for v in record[name]}))}"
            raise TaskDataError(
                f"{where}: field {name!r} must be {_type_name(expected)}, got {got}; required fields: "
                f"{_describe(fields)}"
            )
        if _not_unicode(record[name]):
            raise TaskDataError(f"{where}: field {name!r} holds a lone surrogate escape (such as \\ud800), which is "
                                "not Unicode text; fix or drop the record")
    return record


def read_jsonl(path: str | Path, fields: FieldSpec) -> list[Record]:
    """Read a JSONL file (one JSON object per line; blank lines ignored) and validate every record."""
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"data file {str(path)!r} does not exist (expected one JSON object per line)")
    records: list[Record] = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TaskDataError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start} of the line); "
                                "save the file as UTF-8") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskDataError(
                f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); each line must be one "
                f"JSON object with fields: {_describe(fields)}"
            ) from None
        except (ValueError, RecursionError) as exc:  # a number too long to convert, nesting too deep to parse
            raise TaskDataError(f"{path}:{lineno}: JSON that cannot be read ({type(exc).__name__}: "
                                f"{(str(exc).splitlines() or [''])[0][:120]})") from None
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
