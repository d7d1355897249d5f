"""The code sandbox against hostile programs: each test bounds its program with small limits and short timeouts.

Invariants checked after every hostile run: the host (this test process, its files, its listeners, its
mounts) is unchanged, and no process of any sandbox uid is left running.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from basel_app.evaluation import sandbox
from basel_app.evaluation.sandbox import SLOTS, UID_BASE, Limits, Outcome, isolation, run_program, run_programs

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[2]
# Small enough that a runaway program costs seconds, large enough for the interpreter to start on a busy CI box.
QUICK = Limits(wall_time_s=3.0, cpu_time_s=2, memory_mb=256, file_size_mb=1, max_processes=8, max_open_files=32)
needs_root = pytest.mark.skipif(not ROOT, reason="uid drop and per-uid process limits need root")


def run(source: str, limits: Limits = QUICK) -> Outcome:
    return run_program(textwrap.dedent(source), limits)


def sandbox_processes() -> list[tuple[int, int]]:
    """(pid, uid) of every live process whose real uid is in the sandbox range."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        uid = int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1))
        state = re.search(r"^State:\s+(\w)", text, re.M).group(1)
        if UID_BASE <= uid < UID_BASE + SLOTS and state not in "ZX":
            found.append((int(pid), uid))
    return found


def mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.fixture(autouse=True)
def host_unharmed():
    """Every test: no sandbox process survives and the host's mount table is unchanged."""
    before = mounts()
    yield
    assert sandbox_processes() == []
    assert mounts() == before


@pytest.fixture
def canary():
    """A world-readable directory outside the sandbox with a file the program will try to change."""
    directory = Path(tempfile.mkdtemp(prefix="basel-canary-"))
    directory.chmod(0o755)  # traversable by the sandbox uid, so the test is about write permission
    path = directory / "canary.txt"
    path.write_text("original")
    path.chmod(0o644)
    yield path
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


# ── verdicts ─────────────────────────────────────────────────────────────────────────────────────────────────


def test_correct_program_passes():
    outcome = run(
        """
        def add(a, b):
            return a + b
        assert add(2, 3) == 5
        print("ok")
        """
    )
    assert outcome.passed and outcome.status == "passed" and outcome.returncode == 0
    assert outcome.stdout == "ok\n" and outcome.seconds < QUICK.wall_time_s


def test_assertion_failure_fails():
    outcome = run("assert 1 + 1 == 3, 'wrong'")
    assert outcome.status == "failed" and not outcome.passed and outcome.returncode == 1
    assert "AssertionError: wrong" in outcome.stderr


def test_syntax_error_fails():
    outcome = run("def f(:\n    pass")
    assert outcome.status == "failed" and "SyntaxError" in outcome.stderr


def test_output_keeps_only_the_tail():
    outcome = run("print('x' * 100_000); print('END')")
    assert outcome.passed and outcome.stdout.endswith("END\n") and len(outcome.stdout) <= sandbox.TAIL_BYTES


def test_stdin_is_empty():
    outcome = run("import sys; assert sys.stdin.read() == ''")
    assert outcome.passed, outcome.stderr


def test_working_directory_is_fresh_and_private():
    outcome = run(
        """
        import os
        assert sorted(os.listdir('.')) == ['main.py'], os.listdir('.')
        assert os.environ['HOME'] == os.getcwd()
        open('scratch.txt', 'w').write('mine')
        print(os.getcwd())
        """
    )
    assert outcome.passed, outcome.stderr
    assert not Path(outcome.stdout.strip()).exists()  # removed afterwards


# ── time and memory ──────────────────────────────────────────────────────────────────────────────────────────


def test_infinite_loop_times_out_on_the_wall_clock():
    limits = Limits(wall_time_s=1.5, cpu_time_s=30, memory_mb=256)
    outcome = run("import time\nwhile True:\n    time.sleep(0.01)", limits)
    assert outcome.status == "timeout" and not outcome.passed
    assert 1.5 <= outcome.seconds < 1.5 + 2.0


def test_busy_loop_hits_the_cpu_limit():
    outcome = run("while True:\n    pass", Limits(wall_time_s=8, cpu_time_s=1, memory_mb=256))
    assert outcome.status == "timeout" and outcome.seconds < 5


def test_huge_allocation_fails_and_host_is_fine():
    outcome = run("x = bytearray(10 * 1024**3)\nprint('allocated')")
    assert outcome.status == "failed" and "MemoryError" in outcome.stderr
    assert "allocated" not in outcome.stdout


def test_file_size_limit():
    outcome = run("open('big', 'wb').write(b'0' * (4 * 1024 * 1024))")
    assert outcome.status == "failed"


# ── processes ────────────────────────────────────────────────────────────────────────────────────────────────


@needs_root
def test_fork_bomb_is_contained_and_leaves_no_process():
    outcome = run(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    assert outcome.status in ("failed", "timeout")
    assert sandbox_processes() == []


@needs_root
def test_subprocess_spam_is_contained():
    outcome = run(
        """
        import subprocess, sys
        children = []
        for _ in range(200):
            try:
                children.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']))
            except OSError:
                pass
        print(len(children))
        raise SystemExit(1 if len(children) >= 8 else 0)
        """
    )
    assert outcome.passed, outcome.stderr  # RLIMIT_NPROC=8 stopped it short of 8 children
    assert int(outcome.stdout) < QUICK.max_processes
    assert sandbox_processes() == []


@needs_root
def test_daemon_escaping_the_session_is_killed():
    outcome = run(
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        print('parent done')
        """
    )
    assert outcome.passed and outcome.stdout == "parent done\n"
    assert sandbox_processes() == []


@needs_root
def test_killing_the_parent_and_init_does_not_hurt_the_host():
    outcome = run(
        f"""
        import os, signal
        hits = []
        for pid in (os.getppid(), 1, {os.getpid()}, -1):
            try:
                os.kill(pid, signal.SIGKILL)
                hits.append(pid)
            except OSError:
                pass
        print(hits)
        """
    )
    # only kill(-1) "succeeds" (it reaches the sandbox uid's own processes); the launcher survived to report
    assert outcome.passed and outcome.stdout == "[-1]\n", outcome


# ── files ────────────────────────────────────────────────────────────────────────────────────────────────────


@needs_root
def test_writes_and_deletes_outside_the_sandbox_fail(canary):
    repo_probe = REPO / "SANDBOX_WAS_HERE"
    package_probe = REPO / "basel_app" / "evaluation" / "pwned.py"
    outcome = run(
        f"""
        import os
        results = {{}}
        actions = {{
            'append': lambda: open({str(canary)!r}, 'a').write('pwned'),
            'overwrite': lambda: open({str(canary)!r}, 'w').write('pwned'),
            'create': lambda: open({str(canary.parent / 'new.txt')!r}, 'w').write('x'),
            'remove': lambda: os.remove({str(canary)!r}),
            'rename': lambda: os.rename({str(canary)!r}, {str(canary) + '.moved'!r}),
            'chmod': lambda: os.chmod({str(canary)!r}, 0o777),
            'repo': lambda: open({str(repo_probe)!r}, 'w').write('x'),
            'package': lambda: open({str(package_probe)!r}, 'w').write('x'),
            'etc': lambda: open('/etc/basel-sandbox-probe', 'w').write('x'),
        }}
        for name, action in actions.items():
            try:
                action()
                results[name] = 'done'
            except OSError as exc:
                results[name] = type(exc).__name__
        print(results)
        """
    )
    assert outcome.passed, outcome.stderr
    assert "done" not in outcome.stdout, outcome.stdout
    assert canary.read_text() == "original"
    assert stat.S_IMODE(canary.stat().st_mode) == 0o644
    assert sorted(p.name for p in canary.parent.iterdir()) == ["canary.txt"]
    assert not repo_probe.exists() and not package_probe.exists()
    assert not Path("/etc/basel-sandbox-probe").exists()


@needs_root
def test_leftovers_in_world_writable_dirs_are_removed():
    name = f"basel-sandbox-leftover-{os.getpid()}"
    outcome = run(f"import os\nos.mkdir('/tmp/{name}')\nopen('/tmp/{name}/f', 'w').write('x')")
    assert outcome.passed, outcome.stderr
    assert not Path("/tmp", name).exists()


@needs_root
def test_interpreter_files_are_read_only():
    outcome = run(
        """
        import os, sys
        try:
            open(os.path.join(os.path.dirname(os.__file__), 'basel_probe.py'), 'w')
        except OSError:
            raise SystemExit(0)
        raise SystemExit('wrote into the stdlib')
        """
    )
    assert outcome.passed, outcome.stderr


# ── secrets ──────────────────────────────────────────────────────────────────────────────────────────────────


def test_environment_secrets_are_invisible(monkeypatch):
    secret = "s3cr3t-value-that-must-not-leak"
    monkeypatch.setenv("BASEL_TEST_SECRET", secret)
    outcome = run(
        f"""
        import json, os
        try:
            parent_env = open('/proc/{os.getpid()}/environ', 'rb').read().decode(errors='replace')
        except OSError:
            parent_env = ''
        print(json.dumps({{'env': dict(os.environ), 'parent': parent_env}}))
        """
    )
    assert outcome.passed, outcome.stderr
    seen = json.loads(outcome.stdout)
    assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE"}
    assert secret not in outcome.stdout
    if ROOT:
        assert seen["parent"] == ""


# ── network ──────────────────────────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.3)
    yield server
    server.close()


NETWORK_PROGRAM = """
import socket
reached = []
def attempt(name, fn):
    try:
        fn()
        reached.append(name)
    except OSError:
        pass
def tcp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(0.5)
    s.connect((host, port))
    s.sendall(b'leak')
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b'leak', ('8.8.8.8', 53))
def tcp6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(0.5)
    s.connect(('::1', PORT))
attempt('loopback', lambda: tcp('127.0.0.1', PORT))
attempt('internet', lambda: tcp('1.1.1.1', 443))
attempt('udp', udp)
attempt('ipv6', tcp6)
print(reached)
raise SystemExit(1 if reached else 0)
"""


def assert_listener_got_nothing(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        server.accept()


def test_network_is_unreachable(listener):
    if isolation()["network"] == "none":
        pytest.skip("this OS allows neither a network namespace nor seccomp: no network isolation")
    outcome = run(NETWORK_PROGRAM.replace("PORT", str(listener.getsockname()[1])))
    assert outcome.passed, (outcome.stdout, outcome.stderr)
    assert_listener_got_nothing(listener)


@pytest.mark.skipif(sandbox.platform.machine() not in sandbox._SECCOMP_ARCH, reason="no seccomp filter for this CPU")
def test_seccomp_fallback_blocks_inet_but_not_unix_sockets(listener):
    """The fallback used where the OS refuses network namespaces, forced here."""
    outcome, status = sandbox._run(NETWORK_PROGRAM.replace("PORT", str(listener.getsockname()[1])), QUICK, "seccomp")
    assert status["network"] == "seccomp"
    assert outcome.passed, (outcome.stdout, outcome.stderr)
    assert_listener_got_nothing(listener)
    pair = "import socket\na, b = socket.socketpair()\na.send(b'x')\nassert b.recv(1) == b'x'"
    unix, _ = sandbox._run(pair, QUICK, "seccomp")
    assert unix.passed, unix.stderr


# ── many programs ────────────────────────────────────────────────────────────────────────────────────────────


def test_run_programs_keeps_order_and_survives_hostile_neighbours(listener):
    good = "assert sum(range(10)) == 45\nprint('good', {i})"
    hostile = [
        "while True:\n    pass",
        "x = bytearray(10 * 1024**3)",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        # passes only if it reached the network
        NETWORK_PROGRAM.replace("PORT", str(listener.getsockname()[1])).replace("(1 if reached else 0)", "(not reached)"),
        "def f(:",
    ]
    sources = []
    for i, bad in enumerate(hostile):
        sources += [good.format(i=i), bad]
    limits = Limits(wall_time_s=2.0, cpu_time_s=1, memory_mb=256, file_size_mb=1, max_processes=8, max_open_files=32)
    outcomes = run_programs(sources, limits, workers=2)
    assert len(outcomes) == len(sources)
    for i in range(len(hostile)):
        assert outcomes[2 * i].passed and outcomes[2 * i].stdout == f"good {i}\n", outcomes[2 * i]
        assert not outcomes[2 * i + 1].passed, (i, outcomes[2 * i + 1])
    assert outcomes[1].status == "timeout"
    assert_listener_got_nothing(listener)


def test_run_programs_of_nothing():
    assert run_programs([]) == []


# ── reporting ────────────────────────────────────────────────────────────────────────────────────────────────


def test_isolation_report():
    report = isolation()
    assert report["probe_status"] == "passed", report["probe_stderr"]
    assert report["rlimits"]["AS"][0] == Limits().memory_mb * 1024 * 1024
    assert report["rlimits"]["NPROC"][0] == Limits().max_processes
    assert report["rlimits"]["CORE"] == [0, 0]
    assert set(report["environment"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_CTYPE"}
    if ROOT:
        assert report["uid_drop"] and UID_BASE <= report["probe_uid"] < UID_BASE + SLOTS
        assert report["probe_groups"] == []
    if ROOT and _has_cap_sys_admin():
        assert report["network"] == "namespace" and report["network_interfaces"] == ["lo"]
        assert report["network_probe"] == "unreachable"
    else:
        assert report["network"] in ("user-namespace", "seccomp", "none")


def _has_cap_sys_admin() -> bool:
    caps = re.search(r"^CapEff:\s+([0-9a-f]+)", Path("/proc/self/status").read_text(), re.M)
    return bool(caps and int(caps.group(1), 16) >> 21 & 1)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=8)
    with pytest.raises(ValueError, match="wall_time_s"):
        Limits(wall_time_s=0)


def test_interpreter_is_the_callers():
    outcome = run("import sys\nprint(sys.version)")
    assert outcome.passed and outcome.stdout.strip() == sys.version
