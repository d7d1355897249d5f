"""Outputs are complete or absent: write to a temporary name beside the target, then rename; a sha256 tells a
complete file from a damaged one later; what a killed writer left behind is removed on the next start."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Hidden names of unfinished writes beside their target: `.<name>.partial-*` (a directory being written),
# `.<name>.old-*` (the previous version being replaced), `.<name>.*.tmp` (a file being written).
PARTIAL, OLD, TMP = ".partial-", ".old-", ".tmp"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` when the block ends, removed if it raises.

    The temporary name does not end in `path`'s suffix: writers that guess a format from it must be told.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_mismatch(folder: Path, expected: Mapping[str, str]) -> str | None:
    """The first file of `expected` (name -> sha256) in `folder` that is missing or differs, as a phrase ("<path>
    is missing" / "<path> is corrupt: ..."); None when every one matches."""
    for name, sha in expected.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        if sha256_of(file) != sha:
            return f"{file} is corrupt: its sha256 differs from the one recorded when it was written"
    return None


def remove_unfinished_writes(root: Path) -> list[Path]:
    """Delete what writers killed mid-way left under `root` (never a finished output); returns what was removed."""
    stale = [p for p in root.rglob(".*") if PARTIAL in p.name or OLD in p.name or p.name.endswith(TMP)]
    for path in stale:
        log.warning("removing %s: an unfinished write from an earlier, interrupted attempt", path)
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    return stale
