"""The sandbox's launcher: isolates one sample, runs it, cleans up, reports (stdlib only, single-threaded).

:mod:`basel_app.evaluation.sandbox` starts it as ``python -I sandbox_launcher.py CONFIG`` (a fresh interpreter:
``preexec_fn`` would run Python between fork and exec in a threaded parent). As root::

    launcher (root, subreaper)                                 program (sandbox uid 61000+slot)
    ──────────────────────────                                 ─────────────────────────────────
    cgroup slot (memory + pids for the whole sample)
    unshare(NEWNET | NEWNS), mounts private
    interpreter exposed (if under a 0700 dir)
    one tmpfs (size=disk_mb, nr_inodes=max_files) ─ bound over /tmp, /var/tmp, /dev/shm, /run/lock;
                                                    work dir /tmp/work
    /proc remounted hidepid=invisible
    fork ─────────────────────────────────────────────────────► join cgroup, rlimits, setgroups([]), setgid,
                                                               setuid, no_new_privs, then either
                                                               seccomp + exec python (backend "manual")
                                                               or exec bwrap (backend "bwrap": new user, pid,
                                                               ipc, uts, net namespaces, fresh /proc and /dev,
                                                               no further user namespaces, the same seccomp
                                                               filter), running the harness below
    wait (pidfd, wall-clock deadline)
    kill(-1) as the uid, reap all, cgroup removed, tmpfs unmounted (the clock still runs)
    status.json (returncode, cpu, nonce, what isolation held)

**Completion nonce.** The harness (:data:`HARNESS`) reads a random nonce from a pipe, closes it, runs
``main.py`` as ``__main__`` and, only if it ran to its end, flushes stdout and writes the nonce as the last line.
An early exit (``sys.exit(0)``, ``os._exit(0)``, ``SystemExit`` from an atexit hook), a closed or redirected
file descriptor 1, or a guessed nonce therefore cannot look like a pass. The nonce never appears in a file,
argument or environment variable the program can read; it lives in the harness's memory while the program
runs, so code that deliberately walks the interpreter's frames could find it: the nonce defends against
exits and output games, not against in-process introspection.

**Seccomp** (:func:`seccomp_filter`, the same bytes for both backends): ``connect``, ``unshare``, ``setns``,
``io_uring_setup``, ``clone`` with any namespace flag and foreign ABIs fail with EPERM; ``clone3`` fails with
ENOSYS (its flags sit behind a pointer; libc falls back to ``clone``); ``socket`` is allowed only as an
AF_UNIX stream socket and ``socketpair`` only as a stream pair (``asyncio`` and ``multiprocessing`` need
them): with ``connect`` denied such sockets reach nothing, and no datagram socket can ``sendto`` a host path.
It is a hand-assembled BPF program rather than libseccomp through ctypes: the launcher stays stdlib-only,
the filter is 30 instructions checked by tests, and bwrap's ``--seccomp`` takes exactly this form.

Without root there is no uid drop, no mount namespace, no cgroup and no bwrap: the program gets a network
namespace inside a user namespace, the rlimits and the seccomp filter (the README lists what is missing).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import secrets
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any

HARNESS = (
    "import os, runpy, sys\n"
    "_fd = int(sys.argv[1])\n"
    "_nonce = os.read(_fd, 64)\n"
    "os.close(_fd)\n"
    "sys.argv = ['main.py']\n"
    "runpy.run_path('main.py', run_name='__main__')\n"
    "sys.__stdout__.flush()\n"
    "os.write(1, b'\\n' + _nonce + b'\\n')\n"
)
# tmpfs subdirectory -> what it covers; /tmp last, as it hides the tmpfs's own mount point (under /tmp)
PRIVATE_DIRS = {"var_tmp": "/var/tmp", "shm": "/dev/shm", "lock": "/run/lock", "tmp": "/tmp"}
WORK = "/tmp/work"  # the program's directory inside the sandbox (on the private tmpfs)
PATH = "/usr/local/bin:/usr/bin:/bin"

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_CLONE_NAMESPACES = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 0x1, 0x2, 0x4, 0x8, 0x20
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000
_MNT_DETACH = 2
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 36, 38, 22
_SECCOMP_MODE_FILTER = 2
# audit arch and the syscall numbers the filter names, per machine
_SECCOMP_ARCH = {
    "x86_64": (0xC000003E, dict(socket=41, connect=42, socketpair=53, clone=56, unshare=272, setns=308,
                                io_uring_setup=425, clone3=435)),
    "aarch64": (0xC00000B7, dict(socket=198, socketpair=199, connect=203, clone=220, unshare=97, setns=268,
                                 io_uring_setup=425, clone3=435)),
}


# ── syscalls through libc ────────────────────────────────────────────────────────────────────────────────────


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


def _umount(target: str) -> None:
    _check(_libc().umount2(target.encode(), _MNT_DETACH), f"umount {target}")


def _prctl(option: int, arg: int = 0) -> None:
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    _check(libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


# ── seccomp ──────────────────────────────────────────────────────────────────────────────────────────────────


def seccomp_filter() -> bytes | None:
    """The BPF program described in the module docstring; None on a machine without a syscall table here."""
    if platform.machine() not in _SECCOMP_ARCH:
        return None
    arch, nr = _SECCOMP_ARCH[platform.machine()]
    allow, deny, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # ALLOW, ERRNO(EPERM), ERRNO(ENOSYS)
    af_unix, sock_stream, type_mask = 1, 1, 0xF
    # (op, k, jump target) with targets as labels; "jne" jumps when A != k, "jset" when A & k
    code: list[tuple[str, int, str | None] | str] = [
        ("ld", 4, None), ("jne", arch, "deny"),  # foreign ABI (i386 on x86_64, ...)
        ("ld", 0, None), ("jge", 0x40000000, "deny"),  # x32 ABI
        ("jeq", nr["connect"], "deny"), ("jeq", nr["unshare"], "deny"), ("jeq", nr["setns"], "deny"),
        ("jeq", nr["io_uring_setup"], "deny"), ("jeq", nr["clone3"], "enosys"),
        ("jeq", nr["clone"], "clone"), ("jeq", nr["socket"], "socket"), ("jeq", nr["socketpair"], "type"),
        ("ret", allow, None),
        "clone", ("ld", 16, None), ("jset", _CLONE_NAMESPACES, "deny"), ("ret", allow, None),  # args[0]: flags
        "socket", ("ld", 16, None), ("jne", af_unix, "deny"),  # args[0]: the family
        "type", ("ld", 24, None), ("and", type_mask, None), ("jne", sock_stream, "deny"),  # args[1]: the type
        ("ret", allow, None),
        "deny", ("ret", deny, None),
        "enosys", ("ret", enosys, None),
    ]
    return _assemble(code)


def _assemble(code: list[tuple[str, int, str | None] | str]) -> bytes:
    """Classic BPF from (op, k, label) tuples and label strings; every jump goes forward."""
    labels, index = {}, 0
    for item in code:
        if isinstance(item, str):
            labels[item] = index
        else:
            index += 1
    opcodes = {"ld": 0x20, "jeq": 0x15, "jne": 0x15, "jge": 0x35, "jset": 0x45, "and": 0x54, "ret": 0x06}
    out, index = [], 0
    for item in code:
        if isinstance(item, str):
            continue
        op, k, target = item
        jt = jf = 0
        if target is not None:
            offset = labels[target] - index - 1
            if not 0 <= offset < 256:
                raise ValueError(f"BPF jump to {target!r} out of range")
            jt, jf = (0, offset) if op == "jne" else (offset, 0)
        out.append(struct.pack("HBBI", opcodes[op], jt, jf, k))
        index += 1
    return b"".join(out)


def _install_seccomp(program: bytes) -> None:
    buf = ctypes.create_string_buffer(program, len(program))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(program) // 8, ctypes.addressof(buf))
    libc = _libc()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    _check(libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


# ── namespaces and mounts ────────────────────────────────────────────────────────────────────────────────────


def _isolate_network(mode: str, root: bool) -> str:
    """Cut the network off as well as this OS allows; returns what was done (applied before the uid drop)."""
    if mode == "auto":
        try:
            _unshare(_CLONE_NEWNET if root else _CLONE_NEWUSER | _CLONE_NEWNET)
            return "namespace" if root else "user-namespace"
        except OSError:
            pass
    return "seccomp" if seccomp_filter() is not None else "none"


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
    """Make the interpreter's prefixes reachable for `uid` (already inside a private mount namespace).

    When the interpreter lives under a directory the uid cannot traverse (pyenv under ``/root``, mode 0700):
    for each blocked directory D above a prefix P, bind P to a staging point, cover D with an empty tmpfs,
    recreate the path to P in it and move the staged mount there, read-only. Returns the prefixes exposed.
    """
    exe = os.path.realpath(sys.executable)
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    needed = [os.path.dirname(exe), *sorted({os.path.realpath(p) for p in prefixes})]
    by_blocker: dict[str, list[str]] = {}
    for path in needed:
        blocker = _blocked_ancestor(path, uid)
        if blocker is not None:
            if blocker == path or not path.startswith(blocker + "/"):
                raise PermissionError(f"{path} itself is not traversable by the sandbox uid")
            by_blocker.setdefault(blocker, []).append(path)
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


def _place_program(work: str, source: bytes, uid: int | None) -> None:
    """``main.py`` in the work dir, owned by the sandbox uid (0700 dir, 0600 file: no other sample reads it)."""
    fd = os.open(os.path.join(work, "main.py"), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(source)
    if uid is not None:
        for path in (work, os.path.join(work, "main.py")):
            os.chown(path, uid, uid)


def _private_tmp(base: str, uid: int, limits: dict[str, Any], source: bytes) -> list[str]:
    """One fresh tmpfs (size and inode capped) bound over every world-writable directory; returns the targets.

    The work dir ``/tmp/work`` (holding ``main.py``) is on it too, so whatever the program writes counts
    against one quota and disappears in one unmount, however deep the tree.
    """
    fs = os.path.join(base, "fs")
    os.mkdir(fs, 0o700)
    options = f"size={limits['disk_mb']}m,nr_inodes={limits['max_files']},mode=0700"
    _mount("tmpfs", fs, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    for name in PRIVATE_DIRS:
        os.mkdir(os.path.join(fs, name), 0o700)
        os.chown(os.path.join(fs, name), uid, uid)
    work = os.path.join(fs, "tmp", os.path.basename(WORK))
    os.mkdir(work, 0o700)
    _place_program(work, source, uid)
    covered = []
    for name, target in PRIVATE_DIRS.items():
        if not os.path.isdir(target):
            continue  # nothing to cover (a container without /run/lock)
        _mount(os.path.join(fs, name), target, None, _MS_BIND)
        _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | _MS_NODEV)
        covered.append(target)
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "hidepid=invisible")
    return [*covered, "/proc", fs]


# ── cgroups ──────────────────────────────────────────────────────────────────────────────────────────────────


class Cgroup:
    """A per-sample cgroup (v2, or v1 memory + pids): memory with swap, and process count, for all processes.

    Created under a ``basel-sandbox`` directory: at the root of a cgroup2 hierarchy that offers the memory and
    pids controllers, else under this process's own v1 memory and pids groups. Unavailable (no root, no such
    controllers, a cgroup namespace that forbids it): :meth:`create` says why and the rlimits remain.
    """

    def __init__(self, kind: str, dirs: list[str]) -> None:
        self.kind, self.dirs = kind, dirs

    @classmethod
    def create(cls, name: str, limits: dict[str, Any]) -> tuple[Cgroup | None, str]:
        memory, pids = limits["memory_mb"] * 1024 * 1024, limits["max_processes"]
        mounts = _cgroup_mounts()
        reasons = []
        for make in (cls._v2, cls._v1):
            try:
                group = make(mounts, name)
                if group is not None:
                    group._limit(memory, pids)
                    return group, group.kind
            except OSError as exc:
                reasons.append(f"{make.__name__.strip('_')}: {exc}")
        return None, "none (" + ("; ".join(reasons) or "no cgroup memory and pids controllers") + ")"

    @classmethod
    def _v2(cls, mounts: list[tuple[str, str, str]], name: str) -> Cgroup | None:
        for mountpoint, fstype, _ in mounts:
            if fstype != "cgroup2":
                continue
            if not {"memory", "pids"} <= set(_read(os.path.join(mountpoint, "cgroup.controllers")).split()):
                continue
            parent = os.path.join(mountpoint, "basel-sandbox")
            _write(os.path.join(mountpoint, "cgroup.subtree_control"), "+memory +pids")
            os.makedirs(parent, exist_ok=True)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
            return cls("cgroup v2", [_fresh_dir(os.path.join(parent, name))])
        return None

    @classmethod
    def _v1(cls, mounts: list[tuple[str, str, str]], name: str) -> Cgroup | None:
        own = {}
        for line in _read("/proc/self/cgroup").splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                own[controller] = path
        dirs = {}
        for mountpoint, fstype, options in mounts:
            for controller in ("memory", "pids"):
                if fstype == "cgroup" and controller in options.split(",") and controller in own:
                    dirs[controller] = os.path.join(mountpoint + own[controller], "basel-sandbox", name)
        if set(dirs) != {"memory", "pids"}:
            return None
        return cls("cgroup v1", [_fresh_dir(dirs["memory"]), _fresh_dir(dirs["pids"])])

    def _limit(self, memory: int, pids: int) -> None:
        for path, value in (("memory.max", memory), ("memory.swap.max", 0), ("memory.limit_in_bytes", memory),
                            ("memory.memsw.limit_in_bytes", memory), ("pids.max", pids)):
            for directory in self.dirs:
                if os.path.exists(os.path.join(directory, path)):
                    _write(os.path.join(directory, path), str(value))

    def join(self) -> None:
        for directory in self.dirs:
            _write(os.path.join(directory, "cgroup.procs"), str(os.getpid()))

    def oom_kills(self) -> int:
        for directory in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                path = os.path.join(directory, name)
                if os.path.exists(path):
                    fields = dict(line.split() for line in _read(path).splitlines() if len(line.split()) == 2)
                    return int(fields.get("oom_kill", 0))
        return 0

    def remove(self) -> None:
        for directory in self.dirs:
            _kill_members(directory)
            _remove_dir(directory)


def _cgroup_mounts() -> list[tuple[str, str, str]]:
    """(mountpoint, fstype, options) of every cgroup/cgroup2 mount."""
    found = []
    for line in _read("/proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            found.append((fields[1], fields[2], fields[3]))
    return found


def _fresh_dir(path: str) -> str:
    """A cgroup directory with no member: a leftover of a crashed run is emptied first."""
    if os.path.isdir(path):
        _kill_members(path)
        _remove_dir(path)
    os.makedirs(path, exist_ok=True)
    return path


def _kill_members(directory: str) -> None:
    kill_file = os.path.join(directory, "cgroup.kill")
    if os.path.exists(kill_file):
        _write(kill_file, "1")
        return
    for pid in _read(os.path.join(directory, "cgroup.procs")).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _remove_dir(directory: str, tries: int = 100) -> None:
    """rmdir, retried while killed members are still being reaped (EBUSY)."""
    for _ in range(tries):
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)
    os.rmdir(directory)


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as fh:
        fh.write(text)


# ── the program ──────────────────────────────────────────────────────────────────────────────────────────────


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


def _interpreter(config: dict[str, Any]) -> str:
    """The interpreter the sample runs: the one behind the caller's venv link (resolved by the parent, before
    any mount), since a venv under /tmp (a fresh clone there) is covered by the sample's private tmpfs. The
    harness and the programs need only the standard library."""
    exe = config["interpreter"]
    for private in PRIVATE_DIRS.values():
        if exe.startswith(private + "/"):
            raise RuntimeError(f"the interpreter {exe} lies under {private}, which every sample gets a fresh tmpfs "
                               "over; run basel_app with a Python installed elsewhere")
    return exe


def _bwrap_argv(bwrap: str, uid: int, filter_fd: int) -> list[str]:
    """bwrap's namespaces on top of the launcher's mounts (which ``--ro-bind / /`` carries in, read-only)."""
    argv = [bwrap, "--unshare-user", "--uid", str(uid), "--gid", str(uid), "--disable-userns",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for target in PRIVATE_DIRS.values():
        if os.path.isdir(target):
            argv += ["--bind", target, target]
    return [*argv, "--seccomp", str(filter_fd), "--chdir", WORK, "--"]


def _exec_program(config: dict[str, Any], work: str, nonce_fd: int, cgroup: Cgroup | None, error_fd: int) -> None:
    """Child: cgroup, rlimits, uid drop, no_new_privs, seccomp or bwrap, exec. Never returns."""
    try:
        os.chdir(work)
        if cgroup is not None:
            cgroup.join()
        _apply_limits(config["limits"])
        uid = config["uid"]
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            if os.getuid() != uid or os.geteuid() != uid or os.getegid() != uid:
                raise PermissionError("privilege drop did not take")
        _prctl(_PR_SET_NO_NEW_PRIVS, 1)
        os.set_inheritable(nonce_fd, True)
        program = [_interpreter(config), "-I", "-c", HARNESS, str(nonce_fd)]
        env = {"PATH": PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8"}
        bpf = seccomp_filter()
        if config["backend"] == "bwrap":
            read_fd, write_fd = os.pipe()
            os.write(write_fd, bpf)
            os.close(write_fd)
            os.set_inheritable(read_fd, True)
            os.execve(config["bwrap"], [*_bwrap_argv(config["bwrap"], uid, read_fd), *program], env)
        if bpf is not None:
            _install_seccomp(bpf)
        os.execve(program[0], program, env)
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


def _isolate_files(config: dict[str, Any], status: dict[str, Any]) -> tuple[str, list[str]]:
    """As root: a private mount namespace, the interpreter exposed, the private tmpfs and /proc.

    Returns the work dir and what to unmount afterwards. A refused mount namespace (a container without
    CAP_SYS_ADMIN) is reported in the status; the program then works in a host directory, as without root.
    """
    uid, base = config["uid"], config["base"]
    source = Path(config["source"]).read_bytes()  # before /tmp (which holds it) is covered
    if uid is None:
        status["private_tmp"] = "none (not root)"
        _place_program(config["work"], source, uid)
        return config["work"], []
    try:
        _unshare(_CLONE_NEWNS)
    except OSError as exc:
        if config["backend"] == "bwrap":
            raise OSError(exc.errno, f"the bwrap backend binds the launcher's private tmpfs: {exc}") from exc
        status["private_tmp"] = f"none ({exc})"
        status["mounts"] = _expose_interpreter(uid, base)  # raises if the interpreter needs the namespace
        _place_program(config["work"], source, uid)
        return config["work"], []
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    status["mounts"] = _expose_interpreter(uid, base)
    targets = _private_tmp(base, uid, config["limits"], source)
    status["private_tmp"] = "tmpfs"
    return WORK, targets


def _launch(config: dict[str, Any]) -> int:
    """The launcher's main: isolate, run the program, clean up, report in status.json (exit code 0)."""
    status: dict[str, Any] = {"returncode": None, "timed_out": False, "cpu_s": 0.0, "error": None, "mounts": []}
    uid = config["uid"]
    status_fd = os.open(config["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    nonce = secrets.token_hex(16)
    cgroup, unmount = None, []
    try:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        if uid is not None:
            cgroup, status["cgroup"] = Cgroup.create(f"slot-{config['slot']}", config["limits"])
        else:
            status["cgroup"] = "none (not root)"
        status["network"] = _isolate_network(config["network"], root=uid is not None)
        status["seccomp"] = seccomp_filter() is not None
        work, unmount = _isolate_files(config, status)
        nonce_read, nonce_write = os.pipe()
        os.write(nonce_write, nonce.encode())
        os.close(nonce_write)
        error_read, error_write = os.pipe()  # close-on-exec: EOF means the exec worked
        pid = os.fork()
        if pid == 0:
            os.close(error_read)
            _exec_program(config, work, nonce_read, cgroup, error_write)
        os.close(error_write)
        os.close(nonce_read)
        start = time.monotonic()
        with os.fdopen(error_read, "rb") as pipe:
            failure = pipe.read()
        waited = _wait_until(pid, start + config["limits"]["wall_time_s"])
        if waited is None:
            status["timed_out"] = True
            os.kill(pid, signal.SIGKILL)
            waited = os.wait4(pid, 0)[1:]
        wait_status, usage = waited
        returncode = os.waitstatus_to_exitcode(wait_status)
        if config["backend"] == "bwrap" and 128 < returncode < 128 + signal.NSIG:
            returncode = 128 - returncode  # bwrap reports the program's death by signal S as exit code 128 + S
        status["returncode"] = returncode
        status["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 3)
        if failure:
            status["error"] = "could not start the program: " + failure.decode(errors="replace")
    except Exception as exc:  # noqa: BLE001 - reported to the parent as an 'error' outcome
        status["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        cleanup_start = time.monotonic()
        _kill_everything(uid)
        try:
            if cgroup is not None:
                status["oom_kills"] = cgroup.oom_kills()
                cgroup.remove()
            for target in unmount:
                _umount(target)
        except OSError as exc:  # the sample's verdict stands; the parent logs the leak
            status["cleanup_error"] = str(exc)
        status["cleanup_s"] = round(time.monotonic() - cleanup_start, 3)
    status["nonce"] = nonce
    with os.fdopen(status_fd, "w", encoding="utf-8") as fh:
        json.dump(status, fh)
    return 0


if __name__ == "__main__" and len(sys.argv) == 2:
    sys.exit(_launch(json.loads(sys.argv[1])))
