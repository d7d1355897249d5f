"""Run untrusted generated Python programs (code pass@1 on HumanEval/MBPP), each in a throw-away sandbox.

::

    parent (this process, threads ok)                launcher (sandbox_launcher.py, root, one per sample)
    ─────────────────────────────────                ────────────────────────────────────────────────────
    take a slot (flock) ─► uid 61000+slot
    private dir (0700): main.py, stdout, stderr (0600)
    Popen([python -I sandbox_launcher.py CONFIG]) ──► cgroup, namespaces, private tmpfs, /proc, seccomp,
      start_new_session, env = minimal,                uid drop, [bwrap], the harness runs main.py, nonce,
      stdin /dev/null, stdout/err -> files             kill(-1) as the uid, unmount
    read status.json + output tails  ◄──────────────── status.json
    verdict: passed iff exit code 0 and the nonce; sweep the uid (/proc), rm dir, free slot

What each layer does and why is in :mod:`basel_app.evaluation.sandbox_launcher`. In short, as root:

- **verdict**: a program passes only if it exits 0 *and* the harness printed the launcher's random nonce after
  the program's last statement, so ``sys.exit(0)``, ``os._exit(0)`` or an atexit hook before a failing assert
  cannot pass.
- **network**: a new network namespace (only a downed loopback); ``connect`` and every socket but an AF_UNIX
  stream fail in seccomp. Where namespaces are refused, seccomp alone.
- **files**: a private mount namespace; one fresh tmpfs capped at ``disk_mb`` and ``max_files`` inodes covers
  ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run/lock`` and holds the work dir, so nothing persists between
  samples and cleanup is an unmount, inside the sample's clock. ``/proc`` is remounted ``hidepid=invisible``
  (bwrap: a new PID namespace), so host processes and their command lines are invisible.
- **privileges**: ``setgroups([])``, ``setgid``, ``setuid`` to ``UID_BASE + slot``, ``PR_SET_NO_NEW_PRIVS``;
  ``unshare``, ``setns`` and namespace-creating ``clone`` fail in seccomp (bwrap adds ``--disable-userns``).
- **resources**: a cgroup per sample caps memory (swap included; tmpfs pages count) and the number of processes
  of the whole sample; per-process rlimits (CPU, address space, file size, processes per uid, open files, no
  core dumps) stay underneath. Without usable cgroups only the rlimits hold, logged once.
- **backend**: ``"bwrap"`` (bubblewrap, used automatically as root where it is installed) adds user, PID, IPC
  and UTS namespaces, a fresh ``/dev`` and ``--die-with-parent`` on top of the launcher's mounts and cgroup;
  ``"manual"`` is the hand-written path. Both run the same hostile tests.
- **cleanup**: the launcher is a child subreaper; after the program exits or the wall clock runs out it kills
  every process of the sandbox uid (``kill(-1)`` as that uid, atomic) and reaps them, removes the cgroup and
  unmounts the tmpfs. The parent kills the launcher's process group and sweeps ``/proc`` for the uid as a
  backstop, and the world-writable host directories for the uid where the tmpfs could not be mounted.

Without root there is no uid drop, no mount namespace, no cgroup and no bwrap (see the README); what is in
force is measured by :func:`isolation` and missing layers are logged once.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from basel_app.evaluation import sandbox_launcher

log = logging.getLogger(__name__)

UID_BASE = 61000  # sandbox uid/gid of slot k is UID_BASE + k; the range must not belong to real users
SLOTS = 64  # concurrent sandboxes per machine (across processes, via flock)
TAIL_BYTES = 2048  # how much of stdout/stderr an Outcome keeps (the end, where tracebacks are)
_LOCK_DIR = Path("/tmp/basel-sandbox-slots")
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # swept only where no private tmpfs covered them
_PARENT_GRACE_S = 10.0  # extra wall time before the parent stops waiting for a stuck launcher
_MAX_SLOT_WAIT_S = 600.0
_LAUNCHER = os.path.abspath(sandbox_launcher.__file__)

NetworkMode = Literal["auto", "seccomp"]  # "seccomp": skip the network namespace (the fallback, forced)
Backend = Literal["auto", "bwrap", "manual"]


@dataclass(frozen=True)
class Limits:
    """Per-sample resource limits; small by default because a benchmark program needs little."""

    wall_time_s: float = 10.0  # wall clock, from exec of the program to kill
    cpu_time_s: int = 10  # RLIMIT_CPU (soft; the hard limit is one second more)
    memory_mb: int = 1024  # the sample's cgroup (all processes, tmpfs pages too) and each process's RLIMIT_AS
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file (and captured output) the program can write
    max_processes: int = 16  # the sample's cgroup pids.max and RLIMIT_NPROC of the sandbox uid (threads count)
    max_open_files: int = 64  # RLIMIT_NOFILE
    disk_mb: int = 64  # size of the private tmpfs (/tmp, /var/tmp, /dev/shm, /run/lock and the work dir together)
    max_files: int = 10_000  # inodes of the private tmpfs (files and directories)

    def __post_init__(self) -> None:
        if not 0 < self.wall_time_s < float("inf") or self.cpu_time_s < 1:
            raise ValueError(f"wall_time_s must be finite and > 0 and cpu_time_s >= 1, got {self}")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb={self.memory_mb}: the interpreter alone needs ~30 MB; use >= 64")
        if min(self.file_size_mb, self.max_processes, self.disk_mb) < 1 or self.max_open_files < 8:
            raise ValueError(
                f"file_size_mb, max_processes, disk_mb must be >= 1 and max_open_files >= 8, got {self}")
        if self.max_files < 16:
            raise ValueError(f"max_files={self.max_files}: the work dir needs a few inodes; use >= 16")


@dataclass(frozen=True)
class Outcome:
    """What one program did; ``status`` is the verdict, the rest is for debugging and reports."""

    status: Literal["passed", "failed", "timeout", "error"]
    returncode: int | None  # negative: killed by that signal; None: never ran or never observed
    stdout: str  # last ~TAIL_BYTES of the program's output (the harness's nonce line removed)
    stderr: str
    seconds: float  # wall time of the whole sample, sandbox setup and cleanup included

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, limits: Limits = Limits(), backend: Backend = "auto") -> Outcome:
    """Run one program; ``passed`` iff it runs to its end and exits 0 within the limits. Never raises for it."""
    return _run(source, limits, backend=backend)[0]


def run_programs(
    sources: Sequence[str], limits: Limits = Limits(), workers: int | None = None, backend: Backend = "auto"
) -> list[Outcome]:
    """Run many programs in parallel (one sandbox each); outcomes in input order, one failure stops nothing."""
    workers = max(1, min(workers or os.cpu_count() or 1, SLOTS, max(len(sources), 1)))

    def one(source: str) -> Outcome:
        try:
            return run_program(source, limits, backend)
        except Exception as exc:  # noqa: BLE001 - a sandbox bug must not end the evaluation run
            log.exception("sandbox failed to run a program")
            return Outcome("error", None, "", f"sandbox error: {exc!r}", 0.0)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, sources))


def bwrap_path() -> str | None:
    """The bubblewrap binary the ``"auto"`` backend uses as root, if installed."""
    return shutil.which("bwrap", path=sandbox_launcher.PATH)


@functools.cache
def isolation(backend: Backend = "auto") -> dict[str, Any]:
    """What isolation is in force here, measured by running a probe through the sandbox (cached)."""
    probe = (
        "import ctypes, json, os, resource, socket\n"
        "net = 'open'\n"
        "try:\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "    s.settimeout(0.5)\n"
        "    s.connect(('127.0.0.1', 9))\n"
        "except PermissionError:\n"
        "    net = 'socket denied'\n"
        "except OSError as e:\n"
        "    net = 'unreachable' if e.errno in (101, 113) else 'refused' if e.errno == 111 else repr(e)\n"
        "ifaces = [l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]]\n"
        "names = ['CPU', 'AS', 'FSIZE', 'NPROC', 'NOFILE', 'CORE']\n"
        "lims = {n: resource.getrlimit(getattr(resource, 'RLIMIT_' + n)) for n in names}\n"
        "unshare = ctypes.CDLL(None, use_errno=True).unshare(0x10000000)\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
        "    'net': net, 'ifaces': ifaces, 'rlimits': lims, 'cwd': os.getcwd(), 'env': sorted(os.environ),\n"
        "    'pids': sum(e.isdigit() for e in os.listdir('/proc')), 'unshare': unshare}))\n"
    )
    outcome, status = _run(probe, Limits(), backend=backend)
    seen: dict[str, Any] = {}
    if outcome.passed:
        seen = json.loads(outcome.stdout.strip().splitlines()[-1])
    root = os.geteuid() == 0
    return {
        "probe_status": outcome.status,
        "probe_stderr": outcome.stderr[-500:] if not outcome.passed else "",
        "backend": status.get("backend"),
        "uid_drop": bool(root and seen and seen.get("uid", 0) != 0),
        "uid_range": [UID_BASE, UID_BASE + SLOTS - 1] if root else None,
        "probe_uid": seen.get("uid"),
        "probe_groups": seen.get("groups"),
        "network": status.get("network", "unknown"),
        "network_probe": seen.get("net"),
        "network_interfaces": seen.get("ifaces"),
        "seccomp": status.get("seccomp", False),
        "unshare_refused": seen.get("unshare", 0) != 0,
        "private_tmp": status.get("private_tmp", "unknown"),
        "visible_processes": seen.get("pids"),
        "cgroup": status.get("cgroup", "unknown"),
        "interpreter_mounts": status.get("mounts", []),
        "no_new_privs": True,
        "rlimits": seen.get("rlimits"),
        "environment": seen.get("env"),
        "stdin": "/dev/null",
        "verdict": "exit code 0 and the harness's completion nonce",
        "cleanup": "subreaper + kill(-1) as the sandbox uid + unmount + /proc sweep" if root else
                   "subreaper, kill descendants",
    }


# ── parent side ────────────────────────────────────────────────────────────────────────────────────────────


def _backend(backend: Backend, root: bool) -> str:
    """The backend to use: bwrap where asked for or (``"auto"``) where installed, as root."""
    if backend == "manual" or (backend == "auto" and (not root or bwrap_path() is None)):
        return "manual"
    if not root:
        raise ValueError("backend='bwrap' needs root here (the launcher sets up the mounts and the cgroup it uses)")
    if bwrap_path() is None:
        raise ValueError(f"backend='bwrap' but no bwrap on {sandbox_launcher.PATH}; apt-get install bubblewrap")
    return "bwrap"


def _run(
    source: str, limits: Limits, network: NetworkMode = "auto", backend: Backend = "auto"
) -> tuple[Outcome, dict[str, Any]]:
    """One sample in one sandbox; also returns the launcher's status (which isolation it used)."""
    start = time.monotonic()
    root = os.geteuid() == 0
    chosen = _backend(backend, root)
    slot = _Slot.acquire() if root else None
    uid = None if slot is None else UID_BASE + slot.index
    base = Path(tempfile.mkdtemp(prefix="basel-sandbox-"))
    status: dict[str, Any] = {}
    try:
        if uid is not None:
            _sweep_uid(uid)  # a crashed earlier run may have left processes behind
        os.chmod(base, 0o711)  # without a private tmpfs the uid passes through to work/, but lists nothing
        program = base / "main.py"
        _write_private(program, source.encode("utf-8"))
        work = base / "work"  # used only where the launcher cannot mount its private tmpfs
        work.mkdir(mode=0o700)
        if uid is not None:
            os.chown(work, uid, uid)
        config = {
            "source": str(program),
            "work": str(work),
            "status": str(base / "status.json"),
            "base": str(base),
            "uid": uid,
            "slot": None if slot is None else slot.index,
            "limits": asdict(limits),
            "network": network,
            "backend": chosen,
            "bwrap": bwrap_path(),
            "interpreter": os.path.realpath(sys.executable),
        }
        env = {"PATH": sandbox_launcher.PATH, "LANG": "C.UTF-8"}
        with _private_file(base / "stdout") as out, _private_file(base / "stderr") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", _LAUNCHER, json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=base,
                start_new_session=True,
                close_fds=True,
            )
            stuck = False
            try:
                proc.wait(timeout=limits.wall_time_s + _PARENT_GRACE_S)
            except subprocess.TimeoutExpired:
                # only while unreaped is its pid (= process group id) surely still ours to kill
                stuck = True
                log.warning("sandbox launcher %d overran its wall time; killing its process group", proc.pid)
                _killpg(proc.pid)
                proc.wait()
            if uid is not None:
                _sweep_uid(uid)
            stdout, stderr = _tail(out), _tail(err)
        status = _read_status(base / "status.json")
        status["backend"] = chosen
        _report_missing_isolation(status)
    finally:
        if uid is not None and not status.get("private_tmp", "").startswith("tmpfs"):
            _sweep_world_writable(uid)
        _remove_tree(base)
        if slot is not None:
            slot.release()
    outcome = _verdict(status, proc.returncode, stuck, stdout, stderr, limits, time.monotonic() - start)
    return outcome, status


def _write_private(path: Path, data: bytes) -> None:
    with _private_file(path) as fh:
        fh.write(data)


def _private_file(path: Path) -> Any:
    """A new file only its owner can read (0600): other samples and users never see a program's output."""
    return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb+")


def _report_missing_isolation(status: dict[str, Any]) -> None:
    """Log once per kind what this machine could not isolate (the README explains each)."""
    if status.get("network") == "none":
        _warn_once("sandboxed programs have network access here: no network namespace and no seccomp")
    if status.get("seccomp") is False:
        _warn_once("no seccomp filter for this CPU: unshare and AF_UNIX connects are not blocked")
    for key, what in (("private_tmp", "no private tmpfs (shared /tmp, no disk quota)"),
                      ("cgroup", "no per-sample cgroup (memory and processes limited per process only)")):
        if str(status.get(key, "")).startswith("none"):
            _warn_once(f"sandbox: {what}: {status[key]}")
    if status.get("cleanup_error"):
        log.warning("sandbox cleanup failed: %s", status["cleanup_error"])


def _verdict(
    status: dict[str, Any], launcher_rc: int | None, stuck: bool, stdout: str, stderr: str, limits: Limits, secs: float
) -> Outcome:
    """Map the launcher's report to passed / failed / timeout / error (passed needs the completion nonce)."""
    secs = round(secs, 3)
    if stuck:
        return Outcome("timeout", status.get("returncode"), stdout, stderr, secs)
    if "returncode" not in status or status.get("error"):
        why = status.get("error") or f"sandbox launcher exited {launcher_rc} without a status"
        return Outcome("error", None, stdout, _clip(f"{stderr}\nsandbox error: {why}"), secs)
    rc = status["returncode"]
    cpu_out = rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and status["cpu_s"] >= limits.cpu_time_s - 0.05)
    if status["timed_out"] or cpu_out:
        return Outcome("timeout", rc, stdout, stderr, secs)
    line = f"\n{status['nonce']}\n"
    completed = line in stdout
    if completed:
        cut = stdout.rindex(line)
        stdout = stdout[:cut] + stdout[cut + len(line) :]
    elif rc == 0:
        stderr = _clip(f"{stderr}\nsandbox: exit code 0 but the program did not run to its end (no completion nonce)")
    return Outcome("passed" if rc == 0 and completed else "failed", rc, stdout, stderr, secs)


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


class _Slot:
    """A sandbox uid held exclusively by this thread, across processes too (flock on a root-only file)."""

    _lock_dir: Path | None = None
    _dir_guard = threading.Lock()

    def __init__(self, index: int, fd: int) -> None:
        self.index, self._fd = index, fd

    @classmethod
    def acquire(cls) -> _Slot:
        lock_dir = cls._ensure_lock_dir()
        deadline = time.monotonic() + _MAX_SLOT_WAIT_S
        while time.monotonic() < deadline:
            for index in range(SLOTS):
                if not _uid_is_free(UID_BASE + index):
                    continue
                fd = os.open(lock_dir / f"slot-{index}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return cls(index, fd)
            time.sleep(0.05)
        raise TimeoutError(f"no free sandbox slot among {SLOTS} after {_MAX_SLOT_WAIT_S} s")

    def release(self) -> None:
        os.close(self._fd)  # closing drops the flock

    @classmethod
    def _ensure_lock_dir(cls) -> Path:
        """The shared lock dir, unless someone else (a sandboxed program?) owns it: then a private one."""
        with cls._dir_guard:
            if cls._lock_dir is None:
                try:
                    _LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
                    info = os.lstat(_LOCK_DIR)
                    trusted = info.st_uid == os.geteuid() and (info.st_mode & 0o777) == 0o700
                except OSError:
                    trusted = False
                if trusted:
                    cls._lock_dir = _LOCK_DIR
                else:
                    cls._lock_dir = Path(tempfile.mkdtemp(prefix="basel-sandbox-slots-"))
                    log.warning("%s is not a root-only directory; slots are locked per process only", _LOCK_DIR)
            return cls._lock_dir


@functools.cache
def _uid_is_free(uid: int) -> bool:
    """A uid that names a real account is never used: killing 'its' processes would hit that account."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    log.warning("uid %d belongs to a real account; sandbox slot skipped", uid)
    return False


def _processes_of(uid: int) -> list[int]:
    """Pids whose real uid is `uid` (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry))
                        break
        except OSError:
            continue
    return pids


def _sweep_uid(uid: int, rounds: int = 50) -> None:
    """Backstop: SIGKILL every process of the sandbox uid until none (but unreaped zombies) is left."""
    for _ in range(rounds):
        alive = [pid for pid in _processes_of(uid) if not _is_zombie(pid)]
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    log.error("processes of sandbox uid %d survived %d kill rounds", uid, rounds)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def _sweep_world_writable(uid: int) -> None:
    """Remove what the sandbox uid left in the world-writable directories (it can write nowhere else)."""
    for top in _WORLD_WRITABLE:
        try:
            entries = list(os.scandir(top))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    _remove_tree(Path(entry.path))
                else:
                    os.unlink(entry.path)
            except OSError as exc:
                log.warning("could not remove sandbox leftover %s: %s", entry.path, exc)


def _remove_tree(path: Path) -> None:
    """rmtree, with ``rm -rf`` for trees too deep for Python's recursion."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except (OSError, RecursionError):
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, capture_output=True)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(fh: Any) -> str:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(max(0, size - TAIL_BYTES))
    return fh.read().decode("utf-8", errors="replace")


def _clip(text: str) -> str:
    return text[-TAIL_BYTES:]


def _read_status(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
