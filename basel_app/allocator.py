"""Run the command lines under tcmalloc where it is installed: glibc's malloc slows down as training goes on.

Training fragments glibc's heap (activations of a new length every batch), and after a few steps every
allocation searches long free lists. oneDNN's bf16 path allocates a scratchpad per GEMM, so the cost lands on
every product: `make run` took 887 s under glibc's malloc against 738 s under tcmalloc, its prune phase 1.54x and
its greedy GSM8K benchmark after training 1.38x as long (docs/BENCHMARKS.md, "The memory allocator"). An
allocator can only be chosen when a process starts, so `python -m basel_app[.evaluate|.bench]` replaces itself,
once, with the same command under `LD_PRELOAD=<tcmalloc>`. Pure standard library: it runs before torch is imported.

`BASEL_APP_MALLOC=system` keeps glibc's malloc; an `LD_PRELOAD` the user set is left as it is (a DDP worker
inherits the parent's, so it never re-executes).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from collections.abc import Mapping, Sequence

ENV = "BASEL_APP_MALLOC"
CHOICES = ("tcmalloc", "system")
# The modules whose `python -m` runs train or decode; a library import or pytest never re-executes.
COMMAND_LINES = ("basel_app", "basel_app.evaluate", "basel_app.bench")
# gperftools' allocator without its profiler (Debian/Ubuntu: libtcmalloc-minimal4), or the full one.
LIBRARY_NAMES = ("tcmalloc_minimal", "tcmalloc")
SYSTEM_MALLOC = "system malloc"
# Python's options that take the next word as their value (`python -W error -m basel_app`).
_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")


def module_run(argv: Sequence[str]) -> str | None:
    """The module an interpreter command line runs with `-m` (`sys.orig_argv`), or None for a script or `-c`."""
    words = iter(argv[1:])
    for word in words:
        if word == "-m":
            return next(words, None)
        if word.startswith("-m"):
            return word[2:]
        if word in _OPTIONS_WITH_VALUE:
            next(words, None)
        elif word == "-c" or word == "-" or not word.startswith("-"):
            return None
    return None


def preload_environment(environ: Mapping[str, str], library: str | None) -> dict[str, str] | None:
    """The environment to re-execute a command line in under `library`, or None where it stays as it is."""
    choice = environ.get(ENV, "tcmalloc")
    if choice not in CHOICES:
        raise SystemExit(f"{ENV}={choice!r} is not an allocator choice; allowed: {', '.join(CHOICES)}")
    if choice == "system" or environ.get("LD_PRELOAD") or library is None:
        return None
    return {**environ, "LD_PRELOAD": library}


def find_tcmalloc() -> str | None:
    """The shared library's name as the dynamic linker resolves it (ldconfig's cache), if installed."""
    if not sys.platform.startswith("linux"):
        return None
    for name in LIBRARY_NAMES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def reexec_command_line_under_tcmalloc() -> None:
    """Replace this process by the same command under tcmalloc, if it is one of the command lines and may."""
    if module_run(sys.orig_argv) not in COMMAND_LINES:
        return
    environ = preload_environment(os.environ, find_tcmalloc())
    if environ is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def release_free_memory() -> None:
    """Give the pages the allocator holds free back to the OS (tcmalloc's ReleaseFreeMemory, else glibc's
    `malloc_trim`), so that the resident size is what is live: the bench measures peaks above it."""
    process = ctypes.CDLL(None)
    if hasattr(process, "MallocExtension_ReleaseFreeMemory"):
        process.MallocExtension_ReleaseFreeMemory()
    elif hasattr(process, "malloc_trim"):
        process.malloc_trim(0)


def allocator_in_use() -> str:
    """What serves this process's malloc, from its mapped libraries: for the run log and the bench's records."""
    try:
        with open("/proc/self/maps") as maps:
            mapped = maps.read()
    except OSError:
        return "unknown"
    for name in ("tcmalloc", "jemalloc", "mimalloc"):
        if f"lib{name}" in mapped:
            return name
    return SYSTEM_MALLOC


def describe_allocator() -> str:
    """`allocator_in_use()`, and where tcmalloc is missing, what that costs and how to install it: for the run log."""
    allocator = allocator_in_use()
    if allocator != SYSTEM_MALLOC or find_tcmalloc() is not None:
        return allocator
    return (f"{allocator} (tcmalloc is not installed: CPU training and decoding slow down as glibc's heap "
            "fragments; apt-get install libtcmalloc-minimal4)")
