"""Decompositions, calibration statistics and dequantised input models kept on disk, so a sweep computes
each one once.

An entry is found by a fingerprint of everything it was computed from (the caller's key: weight digests,
settings, calibration-data digest, a GGUF file's sha256, ...), so a changed weight or setting simply misses.

    <dir>/<kind>/<fingerprint>.json                       manifest: file name, size, sha256, key; written last
    <dir>/<kind>/<fingerprint>.<sha256[:16]>.safetensors  the tensors (and string notes as metadata)
    <dir>/<kind>/<fingerprint>.<digest[:16]>/             or a folder of files (`fetch_folder`: a saved model),
                                                          the manifest holding every file's sha256
    <dir>/<kind>/<fingerprint>.lock                       held while one job computes and writes the entry

An entry is used only when its file's sha256 matches the manifest's; anything else (a flipped byte, a
truncated file, an unreadable manifest) is reported in one log line and recomputed over. Both files are
written under temporary names and renamed, the tensors first, so a reader sees a whole entry or none;
the tensor file is named by its own checksum, so a concurrent rewrite can never swap other bytes in
under a verified name. Two jobs that miss the same key at once take turns on the lock: the second one
finds the first one's entry and loads it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from basel_app.files import atomic_write_json, checksum_mismatch, sha256_of
from basel_app.lowrank.factorizations import Factorization

log = logging.getLogger(__name__)

# Part of every key: raise it when what a cached computation returns changes for the same inputs.
CACHE_VERSION = 1
ALIASES = "__aliases__"  # metadata: {name: the name its tensor is stored under}, for a tensor given twice

Tensors = dict[str, torch.Tensor]
Notes = dict[str, str]
Key = dict[str, Any]
T = TypeVar("T")


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (wherever it lives)."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def state_digest(model: nn.Module) -> str:
    """sha256 of every tensor in the model's state: what its forward computes with."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}={tensor_digest(tensor)};".encode())
    return digest.hexdigest()


def batches_digest(batches: Iterable[dict[str, torch.Tensor]]) -> str:
    """sha256 of every field (token ids, attention mask, labels) of every batch, in order."""
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            digest.update(f"{name}={tensor_digest(batch[name])};".encode())
        digest.update(b"|")
    return digest.hexdigest()


def fingerprint(kind: str, key: Key) -> str:
    text = json.dumps({"kind": kind, "version": CACHE_VERSION, "key": key}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class CorruptEntry(Exception):
    """An entry whose manifest or tensors cannot be trusted (the message says why)."""


class DecompositionCache:
    """Tensors (or folders of files) by fingerprint under `root`; with `root=None` nothing is stored and every
    `fetch` computes."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root is not None else None
        self.computed = 0  # entries computed rather than loaded (a sweep's later jobs: 0)

    @classmethod
    def from_config(cls, cfg: Any) -> DecompositionCache:
        """The cache that the `cache` group (`CacheConfig`) names: `cache.dir`, or none with `cache.enabled=false`."""
        return cls(cfg.dir if cfg.enabled else None)

    def fetch(
        self, kind: str, key: Callable[[], Key], compute: Callable[[], tuple[Tensors, Notes]],
        device: torch.device | str = "cpu",
    ) -> tuple[Tensors, Notes]:
        """The entry for `key()` (loaded onto `device`), or `compute()`'s result, stored for next time.

        `key` is called only when the cache is on (digesting weights costs time). The tensors come back
        contiguous either way, so a hit and a miss give the same tensors bit for bit.
        """
        if self.root is None:
            self.computed += 1
            return _contiguous(*compute())
        parts = key()
        name = fingerprint(kind, parts)
        folder = self.root / kind

        def compute_and_store() -> tuple[Tensors, Notes]:
            tensors, notes = _contiguous(*compute())
            self._store(folder, name, tensors, notes, parts)
            return tensors, notes

        return self._found_or_made(kind, name, lambda: self._load(folder, name, device), compute_and_store)

    def fetch_folder(self, kind: str, key: Callable[[], Key], write: Callable[[Path], None]) -> Path:
        """The verified folder of the entry for `key()`, or a new one that `write(folder)` fills (a model's
        `save_pretrained`, say); the caller reads from it either way, so a hit and a miss read the same bytes."""
        if self.root is None:
            raise ValueError("fetch_folder needs a cache directory (cache.enabled=true)")
        parts = key()
        name = fingerprint(kind, parts)
        folder = self.root / kind

        def write_and_record() -> Path:
            for unfinished in folder.glob(f".{name}.*.tmp"):  # a killed writer's; none is running: we hold the lock
                shutil.rmtree(unfinished, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
            try:
                write(tmp)
                files = {f.name: sha256_of(f) for f in sorted(tmp.iterdir())}
                # Named by its contents, like the tensor files: a reader never sees other bytes under a verified name.
                path = folder / f"{name}.{fingerprint('files', files)[:16]}"
                shutil.rmtree(path, ignore_errors=True)  # a damaged copy of these very bytes
                os.replace(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            atomic_write_json(folder / f"{name}.json", {"folder": path.name, "sha256": files, "key": parts})
            return path

        return self._found_or_made(kind, name, lambda: self._verified_folder(folder, name), write_and_record)

    def _found_or_made(self, kind: str, name: str, load: Callable[[], T], make: Callable[[], T]) -> T:
        """`load()`, or under the key's lock (another job may be making it right now) `load()` again, or `make()`:
        a missing entry is logged, a corrupt one warned about."""
        try:
            return load()
        except (FileNotFoundError, CorruptEntry):
            pass
        with _locked(self.root / kind / f"{name}.lock"):
            try:
                return load()
            except FileNotFoundError:
                log.info("decomposition cache: no %s entry %s yet; computing it", kind, name[:16])
            except CorruptEntry as problem:
                log.warning("decomposition cache: %s entry %s is corrupt (%s); recomputing it", kind, name[:16], problem)
            made = make()
            self.computed += 1
            return made

    def holds(self, kind: str, key: Callable[[], Key]) -> bool:
        """Whether `fetch` would find an entry for `key()` (its manifest is there; verified only on load)."""
        return self.root is not None and (self.root / kind / f"{fingerprint(kind, key())}.json").is_file()

    def fetch_factorization(
        self, kind: str, key: Callable[[], Key], compute: Callable[[], Factorization], device: torch.device | str,
    ) -> Factorization:
        """`fetch` for one layer's factorisation (its `note` kept as metadata)."""

        def as_tensors() -> tuple[Tensors, Notes]:
            f = compute()
            return {"left": f.left, "values": f.values, "right": f.right}, {"note": f.note}

        tensors, notes = self.fetch(kind, key, as_tensors, device)
        return Factorization(tensors["left"], tensors["values"], tensors["right"], notes.get("note", ""))

    def _load(self, folder: Path, name: str, device: torch.device | str) -> tuple[Tensors, Notes]:
        """The verified entry; FileNotFoundError when there is none, CorruptEntry when it cannot be trusted."""
        text = (folder / f"{name}.json").read_text()
        try:
            manifest = json.loads(text)
            path, size, sha = folder / manifest["file"], int(manifest["bytes"]), str(manifest["sha256"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptEntry(f"unreadable manifest: {err}") from None
        if not path.is_file():
            raise CorruptEntry(f"{path.name} is missing")
        if path.stat().st_size != size:
            raise CorruptEntry(f"{path.name} has {path.stat().st_size} bytes, the manifest says {size}")
        if sha256_of(path) != sha:
            raise CorruptEntry(f"{path.name} does not match its sha256")
        with safe_open(path, framework="pt", device=str(device)) as f:
            tensors, notes = {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
        for alias, stored in json.loads(notes.pop(ALIASES, "{}")).items():
            tensors[alias] = tensors[stored]
        log.info("decomposition cache: loaded %s", path)
        return tensors, notes

    def _verified_folder(self, folder: Path, name: str) -> Path:
        """The entry's folder, every file checked; FileNotFoundError when there is none, CorruptEntry otherwise."""
        text = (folder / f"{name}.json").read_text()
        try:
            manifest = json.loads(text)
            path, files = folder / str(manifest["folder"]), dict(manifest["sha256"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptEntry(f"unreadable manifest: {err}") from None
        present = sorted(f.name for f in path.iterdir()) if path.is_dir() else []
        if present != sorted(files):
            raise CorruptEntry(f"{path.name} holds {present}, the manifest lists {sorted(files)}")
        problem = checksum_mismatch(path, files)
        if problem is not None:
            raise CorruptEntry(problem)
        log.info("decomposition cache: loading %s", path)
        return path

    def _store(self, folder: Path, name: str, tensors: Tensors, notes: Notes, key: Key) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        # A tensor given under several names (the layers that share an input's Gram) is stored once.
        stored_as: dict[int, str] = {}
        unique, aliases = {}, {}
        for key_name, tensor in tensors.items():
            first = stored_as.setdefault(id(tensor), key_name)
            if first == key_name:
                unique[key_name] = tensor
            else:
                aliases[key_name] = first
        try:
            save_file(unique, tmp, metadata={**notes, ALIASES: json.dumps(aliases)} if aliases else notes)
            sha = sha256_of(Path(tmp))
            path = folder / f"{name}.{sha[:16]}.safetensors"
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        manifest = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha, "key": key}
        atomic_write_json(folder / f"{name}.json", manifest)  # last: it makes the entry visible


def _contiguous(tensors: Tensors, notes: Notes) -> tuple[Tensors, Notes]:
    return {k: t.contiguous() for k, t in tensors.items()}, notes


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if absent) for the block's duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
