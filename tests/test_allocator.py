"""basel_app.allocator: which command lines restart under tcmalloc, and in what environment."""

from __future__ import annotations

import pytest

from basel_app.allocator import COMMAND_LINES, ENV, module_run, preload_environment

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


def test_the_command_lines_are_modules_of_the_package():
    assert all(name == "basel_app" or name.startswith("basel_app.") for name in COMMAND_LINES)


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
    with pytest.raises(SystemExit, match=r"BASEL_APP_MALLOC='jemalloc' is not an allocator choice; allowed: tcmalloc, system"):
        preload_environment({ENV: "jemalloc"}, LIBRARY)
