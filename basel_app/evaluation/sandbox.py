"""Run untrusted generated Python programs (code pass@1 on HumanEval/MBPP) in a throw-away sandbox.

::

    parent (this process, threads ok)        launcher (root, one per sample)         program (sandbox uid)
    ─────────────────────────────────        ───────────────────────────────         ─────────────────────
    take a slot (flock) ─► uid 61000+slot
    fresh dir/work (owned by uid) + main.py
    Popen([python -I sandbox.py --launch])──► subreaper; unshare(NEWNET|NEWNS);
      start_new_session, env = minimal,       interpreter made reachable (below);
      stdin /dev/null, stdout/err -> files    fork ─────────────────────────────────► rlimits, setgroups([]),
                                                                                      setgid, setuid, no_new_privs,
                                                                                      [seccomp], execv(python -I)
                                              wait (pidfd, wall-clock deadline)
                                              kill(-1) as the uid, reap everything
    read status.json + output tails   ◄────── write status.json
    sweep the uid (/proc), rm dir, free slot

Why a launcher instead of ``preexec_fn``: ``preexec_fn`` runs Python between fork and exec, which can
deadlock when the parent has threads (``run_programs`` uses a thread pool). The launcher is a fresh,
single-threaded interpreter running this very file as a script, so everything it imports is stdlib.

Isolation, in order of application (unshare and setrlimit happen before the uid drop; RLIMIT_NPROC counts
the processes of the *new* uid, which is distinct per concurrent slot, so one sample's fork bomb cannot
starve another):

- network: a new, empty network namespace (only a downed loopback) via ``unshare(CLONE_NEWNET)`` through
  libc. Fallbacks when the OS refuses it: as non-root, a user namespace plus a network namespace; failing
  that, a seccomp filter that makes ``socket()`` fail for every family but AF_UNIX (and ``io_uring_setup``,
  which could create sockets); failing that (no seccomp on this architecture) nothing, logged as a warning
  and reported by :func:`isolation` as ``"none"``.
- privileges: as root, ``setgroups([])``, ``setgid``, ``setuid`` to ``UID_BASE + slot`` and
  ``PR_SET_NO_NEW_PRIVS`` (setuid binaries cannot regain root). The working directory is owned by that uid;
  everything else it can write to is world-writable (``/tmp``, ``/var/tmp``, ``/dev/shm``), and entries the
  uid leaves there are removed after the run. Without root there is no uid drop.
- interpreter reachability: when the interpreter lives under a directory the sandbox uid cannot traverse
  (e.g. pyenv under ``/root``, mode 0700), the launcher opens a private mount namespace, covers that
  directory with an empty tmpfs and bind-mounts only the interpreter's prefixes into it, read-only. The
  program then sees the interpreter and nothing else of that directory; the host's mounts are untouched.
- rlimits: CPU seconds (SIGXCPU, then SIGKILL one second later), address space, file size (which also caps
  what the program can write to its captured stdout/stderr), processes, open files, no core dumps.
- cleanup: the launcher is a child subreaper, so every descendant (double-forked daemons included) ends up
  as its child; after the program exits or the wall clock runs out it sends SIGKILL to every process of the
  sandbox uid (``kill(-1)`` from a helper running as that uid, atomic in the kernel) and reaps until none is
  left. The parent then kills the launcher's process group and sweeps ``/proc`` for the uid as a backstop.

Stdin is ``/dev/null`` (reads see EOF). The environment is only ``PATH``, ``HOME`` and ``TMPDIR`` (the
working directory) and ``LANG``. Disk use inside the working directory is bounded only by the file-size
limit per file and the wall clock; the directory is removed afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import json
import logging
import os
import platform
import pwd
import resource
import select
import shutil
import signal
import struct
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

log = logging.getLogger(__name__)

UID_BASE = 61000  # sandbox uid/gid of slot k is UID_BASE + k; the range must not belong to real users
SLOTS = 64  # concurrent sandboxes per machine (across processes, via flock)
TAIL_BYTES = 2048  # how much of stdout/stderr an Outcome keeps (the end, where tracebacks are)
_LOCK_DIR = Path("/tmp/basel-sandbox-slots")
_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
_PARENT_GRACE_S = 10.0  # extra wall time before the parent stops waiting for a stuck launcher
_MAX_SLOT_WAIT_S = 600.0

NetworkMode = Literal["auto", "seccomp", "none"]


@dataclass(frozen=True)
class Limits:
    """Per-sample resource limits; small by default because a benchmark program needs little."""

    wall_time_s: float = 10.0  # wall clock, from exec of the program to kill
    cpu_time_s: int = 10  # RLIMIT_CPU (soft; the hard limit is one second more)
    memory_mb: int = 1024  # RLIMIT_AS: address space, so a 10 GB allocation is a MemoryError
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file (and captured output) the program can write
    max_processes: int = 16  # RLIMIT_NPROC of the sandbox's own uid (threads count as processes)
    max_open_files: int = 64  # RLIMIT_NOFILE

    def __post_init__(self) -> None:
        if self.wall_time_s <= 0 or self.cpu_time_s < 1:
            raise ValueError(f"wall_time_s must be > 0 and cpu_time_s >= 1, got {self}")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb={self.memory_mb}: the interpreter alone needs ~30 MB; use >= 64")
        if min(self.file_size_mb, self.max_processes) < 1 or self.max_open_files < 8:
            raise ValueError(f"file_size_mb, max_processes must be >= 1 and max_open_files >= 8, got {self}")


@dataclass(frozen=True)
class Outcome:
    """What one program did; ``status`` is the verdict, the rest is for debugging and reports."""

    status: Literal["passed", "failed", "timeout", "error"]
    returncode: int | None  # negative: killed by that signal; None: never ran or never observed
    stdout: str  # last ~TAIL_BYTES of the output
    stderr: str
    seconds: float  # wall time of the whole sample, sandbox setup and cleanup included

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Run one program; ``passed`` iff it exits 0 within the limits. Never raises for the program's sake."""
    return _run(source, limits)[0]


def run_programs(sources: Sequence[str], limits: Limits = Limits(), workers: int | None = None) -> list[Outcome]:
    """Run many programs in parallel (one sandbox each); outcomes in input order, one failure stops nothing."""
    workers = max(1, min(workers or os.cpu_count() or 1, SLOTS, max(len(sources), 1)))

    def one(source: str) -> Outcome:
        try:
            return run_program(source, limits)
        except Exception as exc:  # noqa: BLE001 - a sandbox bug must not end the evaluation run
            log.exception("sandbox failed to run a program")
            return Outcome("error", None, "", f"sandbox error: {exc!r}", 0.0)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, sources))


@functools.cache
def isolation() -> dict[str, Any]:
    """What isolation is in force here, measured by running a probe through the sandbox (cached)."""
    probe = (
        "import json, os, resource, socket\n"
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
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),\n"
        "    'net': net, 'ifaces': ifaces, 'rlimits': lims, 'cwd': os.getcwd(), 'env': sorted(os.environ)}))\n"
    )
    outcome, status = _run(probe, Limits())
    seen: dict[str, Any] = {}
    if outcome.passed:
        seen = json.loads(outcome.stdout.strip().splitlines()[-1])
    root = os.geteuid() == 0
    return {
        "probe_status": outcome.status,
        "probe_stderr": outcome.stderr[-500:] if not outcome.passed else "",
        "uid_drop": bool(root and seen and seen.get("uid", 0) != 0),
        "uid_range": [UID_BASE, UID_BASE + SLOTS - 1] if root else None,
        "probe_uid": seen.get("uid"),
        "probe_groups": seen.get("groups"),
        "network": status.get("network", "unknown"),
        "network_probe": seen.get("net"),
        "network_interfaces": seen.get("ifaces"),
        "interpreter_mounts": status.get("mounts", []),
        "no_new_privs": True,
        "rlimits": seen.get("rlimits"),
        "environment": seen.get("env"),
        "stdin": "/dev/null",
        "cleanup": "subreaper + kill(-1) as the sandbox uid + /proc sweep" if root else "subreaper, kill descendants",
    }


# ── parent side ────────────────────────────────────────────────────────────────────────────────────────────


def _run(source: str, limits: Limits, network: NetworkMode = "auto") -> tuple[Outcome, dict[str, Any]]:
    """One sample in one sandbox; also returns the launcher's status (which network isolation it used)."""
    start = time.monotonic()
    root = os.geteuid() == 0
    slot = _Slot.acquire() if root else None
    uid = None if slot is None else UID_BASE + slot.index
    base = Path(tempfile.mkdtemp(prefix="basel-sandbox-"))
    try:
        if uid is not None:
            _sweep_uid(uid)  # a crashed earlier run may have left processes behind
        os.chmod(base, 0o711)  # the uid may pass through to work/, but not list or read the rest
        work = base / "work"
        work.mkdir(mode=0o700)
        program = work / "main.py"
        program.write_text(source, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(program, uid, uid)
        config = {
            "work": str(work),
            "program": program.name,
            "status": str(base / "status.json"),
            "uid": uid,
            "limits": asdict(limits),
            "network": network,
            "mount_base": str(base),
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        with open(base / "stdout", "wb+") as out, open(base / "stderr", "wb+") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", os.path.abspath(__file__), "--launch", json.dumps(config)],
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
        if network == "auto" and status.get("network") == "none":
            _warn_once("sandboxed programs have network access here: no network namespace and no seccomp")
        outcome = _verdict(status, proc.returncode, stuck, stdout, stderr, limits, time.monotonic() - start)
        return outcome, status
    finally:
        if uid is not None:
            _sweep_world_writable(uid)
        _remove_tree(base)
        if slot is not None:
            slot.release()


def _verdict(
    status: dict[str, Any], launcher_rc: int | None, stuck: bool, stdout: str, stderr: str, limits: Limits, secs: float
) -> Outcome:
    """Map the launcher's report to passed / failed / timeout / error."""
    secs = round(secs, 3)
    if stuck:
        return Outcome("timeout", status.get("returncode"), stdout, stderr, secs)
    if not status or status.get("error"):
        why = status.get("error") or f"sandbox launcher exited {launcher_rc} without a status"
        return Outcome("error", None, stdout, _clip(f"{stderr}\nsandbox error: {why}"), secs)
    rc = status["returncode"]
    cpu_out = rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and status["cpu_s"] >= limits.cpu_time_s - 0.05)
    if status["timed_out"] or cpu_out:
        return Outcome("timeout", rc, stdout, stderr, secs)
    return Outcome("passed" if rc == 0 else "failed", rc, stdout, stderr, secs)


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


# ── launcher side (runs as ``python -I sandbox.py --launch CONFIG``, single-threaded, stdlib only) ──────────

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_MOVE = 0x1, 0x2, 0x4, 0x20, 0x1000, 0x2000
_MS_REC, _MS_PRIVATE = 0x4000, 0x40000
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 36, 38, 22
_SECCOMP_MODE_FILTER = 2
# (audit arch, socket nr, io_uring_setup nr) per machine
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags), f"unshare({flags:#x})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = [None if value is None else value.encode() for value in (source, target, fstype)]
    options = None if data is None else data.encode()
    _check(_libc().mount(*args, ctypes.c_ulong(flags), options), f"mount {target}")


def _prctl(option: int, arg: int | ctypes.c_void_p = 0) -> None:
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _check(libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def _isolate_network(mode: NetworkMode, root: bool) -> str:
    """Cut the network off as well as this OS allows; returns what was done (applied before the uid drop)."""
    if mode == "auto":
        try:
            _unshare(_CLONE_NEWNET if root else _CLONE_NEWUSER | _CLONE_NEWNET)
            return "namespace" if root else "user-namespace"
        except OSError:
            pass
    if mode in ("auto", "seccomp") and platform.machine() in _SECCOMP_ARCH:
        return "seccomp"  # installed in the child after no_new_privs, right before exec
    return "none"


def _seccomp_deny_inet() -> None:
    """A BPF filter: socket() of any family but AF_UNIX, io_uring_setup, and foreign ABIs fail with EACCES."""
    arch, nr_socket, nr_uring = _SECCOMP_ARCH[platform.machine()]
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EACCES
    af_unix = 1
    program = [  # (code, jt, jf, k); jumps count instructions after the next one
        (ld_abs, 0, 0, 4),  # 0: A = arch
        (jeq, 0, 7, arch),  # 1: foreign ABI (i386, ...) -> deny
        (ld_abs, 0, 0, 0),  # 2: A = syscall nr
        (jge, 5, 0, 0x40000000),  # 3: x32 ABI -> deny
        (jeq, 4, 0, nr_uring),  # 4: io_uring_setup -> deny
        (jeq, 0, 2, nr_socket),  # 5: not socket -> allow
        (ld_abs, 0, 0, 16),  # 6: A = low word of args[0] (the family)
        (jeq, 0, 1, af_unix),  # 7: AF_UNIX -> allow, else deny
        (ret, 0, 0, allow),  # 8
        (ret, 0, 0, deny),  # 9
    ]
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(program), ctypes.addressof(buf))
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


def _blocked_ancestor(path: str, uid: int) -> str | None:
    """The topmost directory above `path` (or itself) that `uid` (not owner, no groups) cannot traverse."""
    current = "/"
    for part in Path(path).parts[1:]:
        current = os.path.join(current, part)
        info = os.stat(current)
        if os.path.isdir(current) and info.st_uid != uid and not info.st_mode & 0o001:
            return current
    return None


def _expose_interpreter(uid: int, staging_base: str) -> list[str]:
    """Make the interpreter's prefixes reachable for `uid` inside a private mount namespace (see module doc).

    For each blocked directory D above a prefix P: bind P to a staging point, cover D with an empty tmpfs,
    recreate the path to P in it and move the staged mount there, read-only. Host mounts do not change
    (everything is made private first). Returns the prefixes that needed it.
    """
    exe = os.path.realpath(sys.executable)
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    prefixes = sorted({os.path.realpath(p) for p in prefixes})
    needed = [os.path.dirname(exe), *prefixes]
    by_blocker: dict[str, list[str]] = {}
    for path in needed:
        blocker = _blocked_ancestor(path, uid)
        if blocker is not None:
            if blocker == path or not path.startswith(blocker + "/"):
                raise PermissionError(f"{path} itself is not traversable by the sandbox uid")
            by_blocker.setdefault(blocker, []).append(path)
    if not by_blocker:
        return []
    _unshare(_CLONE_NEWNS)
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    exposed = []
    for blocker, paths in by_blocker.items():
        # keep only outermost paths: a prefix inside another one comes with it
        paths = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
        staged = []
        for i, path in enumerate(dict.fromkeys(paths)):
            stage = os.path.join(staging_base, f"stage-{len(exposed)}-{i}")
            os.mkdir(stage, 0o755)
            _mount(path, stage, None, _MS_BIND | _MS_REC)
            staged.append((stage, path))
        _mount("tmpfs", blocker, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        for stage, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(stage, path, None, _MS_MOVE)
            _mount(None, path, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
            exposed.append(path)
        _mount(None, blocker, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    return exposed


def _apply_limits(limits: dict[str, Any]) -> None:
    mib = 1024 * 1024
    for which, soft, hard in (
        (resource.RLIMIT_CPU, limits["cpu_time_s"], limits["cpu_time_s"] + 1),
        (resource.RLIMIT_AS, limits["memory_mb"] * mib, limits["memory_mb"] * mib),
        (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib, limits["file_size_mb"] * mib),
        (resource.RLIMIT_NPROC, limits["max_processes"], limits["max_processes"]),
        (resource.RLIMIT_NOFILE, limits["max_open_files"], limits["max_open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        resource.setrlimit(which, (soft, hard))


def _exec_program(config: dict[str, Any], network: str, error_fd: int) -> None:
    """Child: limits, uid drop, no_new_privs, seccomp, exec. Never returns; errors go to `error_fd`."""
    try:
        os.chdir(config["work"])
        _apply_limits(config["limits"])
        uid = config["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid or os.getegid() != uid:
                raise PermissionError("privilege drop did not take")
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        if network == "seccomp":
            _seccomp_deny_inet()
        os.execv(sys.executable, [sys.executable, "-I", config["program"]])
    except BaseException as exc:  # noqa: BLE001 - report anything, then leave without running Python cleanup
        os.write(error_fd, f"{type(exc).__name__}: {exc}".encode()[:4000])
    finally:
        os._exit(127)


def _wait_until(pid: int, deadline: float) -> tuple[int, Any] | None:
    """wait4(pid) until the deadline; None when it is still running then."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return status, usage
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], remaining)
            else:
                time.sleep(min(remaining, 0.01))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _kill_everything(uid: int | None) -> None:
    """SIGKILL every process of the sandbox uid (root) or every descendant (otherwise), and reap them all.

    ``kill(-1)`` from a helper running as the uid reaches all of the uid's processes in one atomic pass
    (no fork can slip through). As the launcher is a subreaper, orphans are its children, so reaping until
    ECHILD leaves neither live processes nor zombies.
    """
    if uid is not None:
        helper = os.fork()
        if helper == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if uid is None:
            _kill_children()
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.005)


def _kill_children() -> None:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == me:
                        os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError):
                continue


def _launch(config: dict[str, Any]) -> int:
    """The launcher's main: isolate, run the program, clean up, report in status.json (exit code 0)."""
    status: dict[str, Any] = {"returncode": None, "timed_out": False, "cpu_s": 0.0, "error": None}
    uid = config["uid"]
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        status["network"] = _isolate_network(config["network"], root=os.geteuid() == 0)
        status["mounts"] = _expose_interpreter(uid, config["mount_base"]) if uid is not None else []
        read_fd, write_fd = os.pipe()  # close-on-exec: EOF means the exec worked
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _exec_program(config, status["network"], write_fd)
        os.close(write_fd)
        start = time.monotonic()
        with os.fdopen(read_fd, "rb") as pipe:
            failure = pipe.read()
        waited = _wait_until(pid, start + config["limits"]["wall_time_s"])
        if waited is None:
            status["timed_out"] = True
            os.kill(pid, signal.SIGKILL)
            waited = os.wait4(pid, 0)[1:]
        wait_status, usage = waited
        status["returncode"] = os.waitstatus_to_exitcode(wait_status)
        status["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
        if failure:
            status["error"] = "could not start the program: " + failure.decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - reported to the parent as an 'error' outcome
        status["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        _kill_everything(uid)
    with open(config["status"], "w", encoding="utf-8") as fh:
        json.dump(status, fh)
    return 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--launch":
    sys.exit(_launch(json.loads(sys.argv[2])))
