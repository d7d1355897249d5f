"""basel_app.allocator: which command lines restart under tcmalloc, and in what environment."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from basel_app import allocator
from basel_app.allocator import COMMAND_LINES, ENV, find_tcmalloc, module_run, preload_environment

from .conftest import REPO

LIBRARY = "libtcmalloc_minimal.so.4"


@pytest.mark.parametrize(
    "argv,module",
    [
        (["python", "-m", "basel_app", "method=bsi"], "basel_app"),
        (["python", "-mbasel_app.bench", "all"], "basel_app.bench"),
        (["python", "-X", "importtime", "-W", "error", "-m", "basel_app.evaluate", "-m", "x"], "basel_app.evaluate"),
        (["python", "-I", "-u", "-m", "pytest", "-q"], "pytest"),
        (["python", "-c", "import basel_app", "-m", "basel_app"], None),  # after -c the words are the program's
        (["python", "train.py", "-m", "basel_app"], None),
        (["python"], None),
    ],
)
def test_module_run_reads_the_interpreter_command_line(argv, module):
    assert module_run(argv) == module


@pytest.mark.parametrize("name", COMMAND_LINES)
def test_each_command_line_is_a_module_python_can_run(name):
    spec = importlib.util.find_spec(name)
    path = Path(spec.origin).with_name("__main__.py") if spec.submodule_search_locations else Path(spec.origin)
    assert 'if __name__ == "__main__":' in path.read_text(), path


def test_preloads_tcmalloc_by_default_and_keeps_the_rest_of_the_environment():
    environ = preload_environment({"PATH": "/usr/bin", "OMP_NUM_THREADS": "2"}, LIBRARY)
    assert environ == {"PATH": "/usr/bin", "OMP_NUM_THREADS": "2", "LD_PRELOAD": LIBRARY}


@pytest.mark.parametrize(
    "environ,library",
    [
        ({ENV: "system"}, LIBRARY),  # the user's opt-out
        ({"LD_PRELOAD": "/opt/libjemalloc.so.2"}, LIBRARY),  # the user's own preload, and a DDP worker's inherited one
        ({}, None),  # not installed
    ],
)
def test_stays_as_it_is(environ, library):
    assert preload_environment(environ, library) is None


def test_an_unknown_choice_names_the_value_and_the_allowed_ones():
    message = r"BASEL_APP_MALLOC='jemalloc' is not an allocator choice; allowed: tcmalloc, system"
    with pytest.raises(SystemExit, match=message):
        preload_environment({ENV: "jemalloc"}, LIBRARY)


@pytest.mark.skipif(find_tcmalloc() is None, reason="tcmalloc is not installed (make install adds it where apt allows)")
def test_under_tcmalloc_freed_memory_stays_resident_until_released():
    """What the bench's peak-memory baseline relies on: tcmalloc keeps freed pages, release_free_memory returns them."""
    program = (
        "import os\n"
        "from basel_app.allocator import allocator_in_use, release_free_memory\n"
        "def resident_mb(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20\n"
        "blocks = [bytearray(4 << 20) for _ in range(100)]\n"
        "del blocks\n"
        "held = resident_mb()\n"
        "release_free_memory()\n"
        "print(allocator_in_use(), held - resident_mb())\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "LD_PRELOAD": find_tcmalloc()}, cwd=REPO)
    allocator, released_mb = result.stdout.split()
    assert allocator == "tcmalloc" and int(released_mb) > 300, result.stdout + result.stderr


def test_the_run_log_says_how_to_install_tcmalloc_only_where_it_is_missing(monkeypatch):
    monkeypatch.setattr(allocator, "allocator_in_use", lambda: allocator.SYSTEM_MALLOC)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert "apt-get install libtcmalloc-minimal4" in allocator.describe_allocator()
    # installed, and BASEL_APP_MALLOC=system chose glibc's
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: LIBRARY)
    assert allocator.describe_allocator() == "system malloc"
    monkeypatch.setattr(allocator, "allocator_in_use", lambda: "tcmalloc")
    assert allocator.describe_allocator() == "tcmalloc"
