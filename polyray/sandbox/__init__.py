"""Run untrusted Python in a separate, locked-down process and report what happened.

The service never evaluates the code itself. It writes the program into a fresh
temporary directory and starts a small trusted *launcher* (a fresh interpreter, so no
``preexec_fn`` runs inside a multi-threaded Ray replica) which isolates itself and then
``execve``s the program. The strongest of three isolation modes that works on the host
is detected once (:func:`detect_isolation`) and reported in every result:

``uid+namespaces`` (the service runs as root)
    New mount, network, PID, IPC and UTS namespaces. The program's root filesystem is
    a fresh read-only tmpfs holding only ``/usr``, ``/bin``, ``/lib*``, ``/etc`` and the
    interpreter's install prefix (all bound read-only), minimal ``/dev`` nodes, its own
    ``/proc``, an empty writable ``/tmp`` and its directory at ``/sandbox``; the old
    root is detached after ``pivot_root``, so the service's files, home, virtualenv,
    Ray session and ``/dev/shm`` simply do not exist there. The network namespace has
    only a downed loopback. The program runs as a throw-away uid from systemd's
    dynamic-user range (61184-65519): it cannot signal the service or share a process
    count with another sandbox. It is PID 2 of its own PID namespace, where the
    service's PIDs do not exist, and when that namespace's init exits the kernel kills
    every process left in it, including ones that called ``setsid()``.
``userns`` (unprivileged, user namespaces allowed)
    The same namespaces and root inside a new user namespace; the program keeps the
    service's uid on the host, so the private root is what hides the service's files,
    and it runs with every capability dropped so it cannot unmount or remount anything.
``rlimits`` (fallback)
    Resource limits, a clean environment, its own session, and an audit hook that
    refuses sockets, signals, subprocesses, ``ctypes``, reads outside the temporary
    directory and the interpreter's prefix, and writes outside the temporary directory;
    the seccomp filter refuses every new process (no PID namespace would take one along
    when the service dies). Audit hooks are not a security boundary (CPython says so):
    this mode contains accidents, not an adversary.

In every mode: rlimits (CPU seconds, address space, file size, open files, processes,
no core dumps), where the host mounts cgroup v1 writable a memory and a pids group of the
sandbox's own (its memory and tasks capped as a whole: :mod:`polyray.sandbox.cgroups`), a
file count on each tmpfs, a wall-clock timeout that kills the whole process group, an empty
environment (a few fixed variables, nothing inherited), stdout/stderr read through
pipes up to a cap (the program is killed past it, the result keeps the tails), and
the temporary directory deleted afterwards (by the next process to start a sandbox, if the
service was SIGKILLed: :func:`sweep_workdirs`). The program runs the service's base
interpreter as ``python -I -S -B``: standard library only (enough for HumanEval), no
site-packages, no bytecode files. Linux only (x86_64 and aarch64 for the namespaces).
"""

from __future__ import annotations

import contextvars
import json
import os
import platform
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from polyray.lifetime import descendants as _descendants
from polyray.lifetime import parent_of as _parent
from polyray.lifetime import process_dir
from polyray.lifetime import remove_tree as _rmtree
from polyray.lifetime import shared_root, sweep_stale
from polyray.sandbox.cgroups import SandboxCgroup, limits_report, sweep_cgroups, whole_sandbox_caps
from polyray.sandbox.seccomp import build_filter

Isolation = Literal["uid+namespaces", "userns", "rlimits"]
Status = Literal["passed", "failed", "timeout", "error", "killed"]
ISOLATION_MODES: tuple[Isolation, ...] = ("uid+namespaces", "userns", "rlimits")

# systemd reserves this range for dynamic users; picking a fresh uid per run means two
# sandboxes never share a process count or can signal each other.
_DYNAMIC_UID_RANGE = (61184, 65519)
_SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
# What the new root contains besides the interpreter's prefix; everything else is absent.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Of /etc only what the loader and the standard library read: never shadow, ssh keys or the
# service's own configuration (a sandbox under a root service could read all of /etc).
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime", "nsswitch.conf", "passwd", "group", "hosts", "mime.types")
_PIVOT_ROOT_SYSCALL = {"x86_64": 155, "aarch64": 41}  # no pivot_root wrapper in glibc
WORK_ROOT = "polyray-sandbox"  # work directories: <tmp>/polyray-sandbox-<uid>/<owner process>/run-*


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run (defaults suit unit tests of small functions)."""

    timeout_s: float = 10.0  # wall clock, whole run
    cpu_s: int | None = None  # RLIMIT_CPU; default ceil(timeout) + 1
    memory_mb: int = 1024  # RLIMIT_AS (virtual memory, so leave headroom above real use)
    file_size_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 16  # RLIMIT_NPROC: processes + threads of the sandbox user
    output_bytes: int = 1 << 20  # per stream; the program is killed past this
    tail_bytes: int = 4096  # how much of each stream the result keeps (the end)
    disk_mb: int = 64  # namespace modes: size of each of /sandbox and /tmp (memory-backed tmpfs)


class SandboxResult(BaseModel):
    """What happened to one program."""

    status: Status = Field(
        ..., description="passed (exit 0), failed (exit != 0), timeout, killed (signal or limit), error (sandbox)."
    )
    passed: bool = Field(..., description="status == 'passed'.")
    returncode: int | None = Field(None, description="Exit code, when the program exited.")
    signal: int | None = Field(None, description="Signal that ended the program, when one did.")
    stdout: str = Field("", description="Tail of standard output.")
    stderr: str = Field("", description="Tail of standard error.")
    truncated: bool = Field(False, description="Output exceeded the limit (the program was killed).")
    duration_s: float = Field(..., description="Wall-clock seconds from start to cleanup.")
    isolation: str = Field(..., description="Isolation mode that was active.")
    reason: str = Field("", description="Human-readable explanation of the status.")


# --------------------------------------------------------------------------- the two programs
# Module files, run by a fresh interpreter as ``python -I -S -B <path>`` (standard library only, nothing of
# polyray imported): the launcher isolates itself and starts the program; the guard is the audit hook a
# program runs under in rlimits mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
_LAUNCHER, _GUARD = os.path.join(_HERE, "launcher.py"), os.path.join(_HERE, "guard.py")


# ------------------------------------------------------------------------- service side
def _interpreter() -> tuple[str, str]:
    """(real interpreter path, install prefix): the program runs the base interpreter, not the venv."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


def _count_user_tasks(uid: int) -> int:
    """Processes + threads owned by ``uid`` (RLIMIT_NPROC counts both, per real uid)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            total += int(fields.get("Threads", "1"))
    return total


class SandboxBusyError(RuntimeError):
    """Every sandbox uid of this process is in use: the run fails at once instead of waiting."""


class _UidPool:
    """Hands out dynamic uids not in use by another sandbox of this process; none free is
    :class:`SandboxBusyError` at once (a caller that leaked or flooded them must not block the rest)."""

    def __init__(self, first: int = _DYNAMIC_UID_RANGE[0], last: int = _DYNAMIC_UID_RANGE[1]) -> None:
        self._lock = threading.Lock()
        self._range = (first, last)
        self._busy: set[int] = set()

    def acquire(self) -> int:
        with self._lock:
            size = self._range[1] - self._range[0] + 1
            if len(self._busy) >= size:
                raise SandboxBusyError(f"all {size} sandbox uids are in use; try again later")
            while True:  # random, so uids are not reused in order; at least one is free
                uid = random.randint(*self._range)
                if uid not in self._busy:
                    self._busy.add(uid)
                    return uid

    def in_use(self) -> int:
        with self._lock:
            return len(self._busy)

    def release(self, uid: int) -> None:
        with self._lock:
            self._busy.discard(uid)


_UIDS = _UidPool()


# Without a cgroup capping the whole sandbox, each process gets at least this much address space, and
# as few processes as keep processes x address space within memory_mb.
_MIN_PROCESS_MB = 256


def _process_budget(limits: SandboxLimits, mode: str, whole: bool) -> tuple[int, int]:
    """(processes, MB of address space each). ``whole``: a cgroup caps the sandbox's memory and tasks, so
    each process may use all of ``memory_mb``; else processes x address space stays within it (rlimits
    mode starts no process, so its one process has it all)."""
    if whole or mode == "rlimits":
        return limits.processes, limits.memory_mb
    processes = max(1, min(limits.processes, limits.memory_mb // _MIN_PROCESS_MB))
    return processes, limits.memory_mb // processes


def _rlimits(limits: SandboxLimits, mode: str, whole: bool = True) -> dict[str, int]:
    cpu = limits.cpu_s if limits.cpu_s is not None else int(limits.timeout_s) + 1
    nproc, memory_mb = _process_budget(limits, mode, whole)
    if mode == "rlimits":
        # Same uid as the service and no user namespace: the kernel counts the service's
        # own tasks against the limit too. (In a user namespace, Linux >= 5.14 counts per
        # namespace, so the plain limit applies there.)
        nproc += _count_user_tasks(os.getuid())
    mb = 1 << 20
    return {
        "RLIMIT_CPU": cpu,
        "RLIMIT_AS": memory_mb * mb,
        "RLIMIT_FSIZE": limits.file_size_mb * mb,
        "RLIMIT_NOFILE": limits.open_files,
        "RLIMIT_NPROC": nproc,
        "RLIMIT_CORE": 0,
    }


# linux/threads.h RESERVED_PIDS: a PID namespace's pid_max is at least this + 1, and once its
# numbers wrap, new PIDs come from [RESERVED_PIDS, pid_max)
_RESERVED_PIDS = 300


def _pid_max(limits: SandboxLimits) -> int:
    """A ``userns`` sandbox's PID namespace pid_max: at most this - 1 tasks (processes and threads)
    at once, and ``4 x limits.processes`` (at least 64) free numbers once they wrap."""
    return _RESERVED_PIDS + max(64, 4 * limits.processes)


def _make_workdir(source: str, uid: int | None, files: dict[str, str]) -> str:
    """``base/work/program.py`` (owned by the sandbox uid) and ``base/root`` (the new root's mountpoint)."""
    # inside this process's own directory: if the service is SIGKILLed mid-run, the next process
    # to start a sandbox here (a restarted replica) sweeps what it left (polyray.lifetime)
    base = tempfile.mkdtemp(prefix="run-", dir=process_dir(WORK_ROOT))
    try:
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        os.mkdir(os.path.join(base, "root"), 0o755)
        for name, text in {**files, "program.py": source}.items():
            if os.path.basename(name) != name or name.startswith("."):
                raise ValueError(f"sandbox file name {name!r} must be a plain file name")
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:  # strict: a lone surrogate raises
                f.write(text)
    except BaseException:  # a half-made directory (text that is no UTF-8, a full disk) is not left behind
        _rmtree(base)
        raise
    return os.path.realpath(base)  # namespace modes copy the files into their own /sandbox


def _ro_binds() -> list[str]:
    """System directories plus the interpreter's prefix, without nested duplicates."""
    python, prefix = _interpreter()
    etc = [os.path.join("/etc", name) for name in _ETC_FILES]
    wanted = [p for p in (*_SYSTEM_DIRS, *etc) if os.path.lexists(p)] + [prefix, os.path.dirname(python)]
    binds: list[str] = []
    for path in wanted:
        real = os.path.realpath(path) if not os.path.islink(path) else path
        covered = any(real == b or real.startswith(b.rstrip("/") + "/") for b in binds if not os.path.islink(b))
        if not covered and real not in binds:
            binds.append(real)
    return binds


def _tmpfs_inodes(limits: SandboxLimits) -> int:
    """Files (and directories) each of a sandbox's /tmp and /sandbox may hold: 64 per MiB of its size."""
    return max(1024, 64 * limits.disk_mb)


def _launch_config(
    mode: str, base: str, uid: int | None, limits: SandboxLimits, status_fd: int, channel_fds: dict[int, int],
    cgroup_procs: list[str] | None = None,
) -> dict:
    whole = bool(cgroup_procs)  # a cgroup caps the whole sandbox's memory and tasks
    python, _ = _interpreter()
    work = os.path.join(base, "work")
    namespaced = mode != "rlimits"
    cwd = "/sandbox" if namespaced else work
    argv = [python, "-I", "-S", "-B"] + (["program.py"] if namespaced else [_GUARD, "program.py"])
    return {
        "mode": mode,
        "status_fd": status_fd,
        "channel_fds": {str(target): src for target, src in channel_fds.items()},
        "tmp_mb": limits.disk_mb,
        "tmp_inodes": _tmpfs_inodes(limits),
        "cgroup_procs": list(cgroup_procs or []),
        "workdir": work,
        "newroot": os.path.join(base, "root"),
        "cwd": cwd,
        "uid": uid,
        "gid": uid,
        "python": python,
        "argv": argv,
        "env": {**_SANDBOX_ENV, "HOME": cwd, "TMPDIR": "/tmp" if namespaced else work},
        "rlimits": _rlimits(limits, mode, whole),
        "pid_max": _pid_max(limits),
        "ro_binds": _ro_binds(),
        "pivot_root_syscall": _PIVOT_ROOT_SYSCALL.get(platform.machine(), -1),
        # ValueError on another architecture: no run. Without a PID namespace a program's processes
        # would not die with it, so in rlimits mode it starts none.
        # Without a cgroup, nothing bounds memory outside the processes' address spaces: no SysV IPC
        # (rlimits mode shares the host's IPC namespace, where it would outlive the run) and no memfd.
        "seccomp": build_filter(platform.machine(), forks=namespaced, shared_memory=whole and namespaced).hex(),
        "parent_pid": os.getpid(),
    }


@dataclass
class _Streams:
    """Bytes read so far from the program's stdout/stderr, keeping only the tails."""

    limit: int
    tail: int
    out: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)
    totals: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})

    def add(self, which: str, data: bytes) -> None:
        buf = self.out if which == "stdout" else self.err
        self.totals[which] += len(data)
        buf += data
        del buf[: max(0, len(buf) - self.tail)]

    @property
    def over_limit(self) -> bool:
        return max(self.totals.values()) > self.limit


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(child) for child in f.read().split()}
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN
        return {child for child in _descendants(pid) if _parent(child) == pid}


def _end(proc: subprocess.Popen, namespaced: bool) -> None:
    """Kill everything the launcher started and reap the launcher, leaving no process and no zombie.

    The launcher itself is left to reap what dies and exit (it is a subreaper: orphans of a double
    fork or ``setsid`` are re-parented to it, not to the host's init, where they would linger as
    zombies). In a PID namespace killing its init, the launcher's child, kills every process in it.
    Without one (``rlimits``) every descendant is frozen first (SIGSTOP: a stopped process cannot
    fork), again until no new one appears, then killed."""
    if proc.poll() is None and namespaced:
        _signal_all(_children(proc.pid), signal.SIGKILL)
    elif proc.poll() is None:
        stopped: set[int] = set()
        for _ in range(1000):
            new = _descendants(proc.pid) - stopped
            if not new:
                break
            _signal_all(new, signal.SIGSTOP)
            stopped |= new
        _signal_all(stopped, signal.SIGKILL)
    try:
        # A namespace of thousands (a fork bomb where RLIMIT_NPROC does not bind: a root service in
        # userns mode) takes seconds to tear down; every process in it is already killed by then.
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()


# Events that stop the runs started in this context (see :func:`cancelled_by`).
_CANCEL: contextvars.ContextVar[tuple[threading.Event, ...]] = contextvars.ContextVar("polyray_sandbox_cancel", default=())


@contextmanager
def cancelled_by(event: threading.Event | None) -> Iterator[None]:
    """Runs started inside (this thread, or a thread given a copy of this context) stop when ``event`` is set:
    their processes are killed and the result is status "killed". A cancelled request or a spent budget sets
    it, so no sandbox outlives the work it was for. Nests: any enclosing event stops them too."""
    if event is None:
        yield
        return
    token = _CANCEL.set((*_CANCEL.get(), event))
    try:
        yield
    finally:
        _CANCEL.reset(token)


def _close_all(fds: dict[int, int]) -> None:
    """Close and forget the fds (each once, whichever path gets here first)."""
    for target in list(fds):
        try:
            os.close(fds.pop(target))
        except OSError:
            pass


def _pump(
    proc: subprocess.Popen, status_r: int, deadline: float, streams: _Streams, cancel: tuple[threading.Event, ...] = ()
) -> tuple[bytes, str | None]:
    """Read stdout, stderr and the status pipe until all close or a limit is hit.

    Returns (status bytes, limit hit: None, "timeout", "output" or "cancelled").
    """
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(status_r, selectors.EVENT_READ, "status")
    status = bytearray()
    open_streams = 3
    try:
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(status), "timeout"
            if any(event.is_set() for event in cancel):
                return bytes(status), "cancelled"
            for key, _ in sel.select(timeout=min(remaining, 0.1 if cancel else 0.5)):
                fd = key.fd if key.data == "status" else key.fileobj.fileno()
                data = os.read(fd, 65536)
                if not data:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                elif key.data == "status":
                    status += data
                else:
                    streams.add(key.data, data)
                    if streams.over_limit:
                        return bytes(status), "output"
            if proc.poll() is not None:
                # The launcher is gone; stragglers holding the pipes (only possible in
                # rlimits mode) get a short grace, not the whole timeout.
                deadline = min(deadline, time.monotonic() + 0.3)
    finally:
        sel.close()
    return bytes(status), None


def _decode(buf: bytearray) -> str:
    return bytes(buf).decode("utf-8", errors="replace")


def _interpret(status_bytes: bytes, limit_hit: str | None, limits: SandboxLimits) -> dict:
    if limit_hit == "timeout":
        return {"status": "timeout", "reason": f"wall-clock timeout after {limits.timeout_s:g}s"}
    if limit_hit == "cancelled":
        return {"status": "killed", "reason": "stopped early by the caller"}
    if limit_hit == "output":
        return {"status": "killed", "truncated": True, "reason": f"output exceeded {limits.output_bytes} bytes"}
    try:
        # The first JSON object wins: a start failure is followed by init's report of exit 127.
        report = json.loads(status_bytes.decode().replace("}{", "}\n{").splitlines()[0])
    except (ValueError, IndexError):
        return {"status": "error", "reason": "the sandbox ended without reporting a status"}
    if "error" in report:
        return {"status": "error", "reason": report["error"]}
    if "signal" in report:
        sig = report["signal"]
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        why = " (CPU time limit)" if sig == signal.SIGXCPU else ""
        return {"status": "killed", "signal": sig, "reason": f"killed by {name}{why}"}
    code = report["exit"]
    if code == 0:
        return {"status": "passed", "returncode": 0, "reason": "exited 0"}
    return {"status": "failed", "returncode": code, "reason": f"exited {code}"}


def run_python(
    source: str,
    limits: SandboxLimits = SandboxLimits(),
    isolation: Isolation | Literal["auto"] = "auto",
    *,
    files: dict[str, str] | None = None,
    channel_fds: dict[int, int] | None = None,
    cancel: threading.Event | None = None,
) -> SandboxResult:
    """Run ``source`` as a Python program in the sandbox and report its fate (never raises for the program's sake).

    ``files`` are more files beside ``program.py`` (name -> text). ``channel_fds`` maps the
    program's fd 3, 4, ... to fds of this process; they are handed over (closed here once the
    launcher has them), so the peer sees end-of-file when the program ends. ``cancel`` stops
    the run early (status "killed"), e.g. a candidate whose tests have already finished; so does
    an event of an enclosing :func:`cancelled_by`. Either way no process of the run is left."""
    mode = detect_isolation() if isolation == "auto" else isolation
    channel_fds = dict(channel_fds or {})
    start = time.monotonic()
    stops = (*_CANCEL.get(), *([cancel] if cancel is not None else []))
    if any(event.is_set() for event in stops):  # cancelled before it started: start nothing
        _close_all(channel_fds)
        return SandboxResult(status="killed", passed=False, duration_s=0.0, isolation=mode,
                             reason="stopped early by the caller")  # fmt: skip
    uid, workdir, proc, cgroup = None, None, None, None
    status_r = status_w = -1
    try:  # everything the run takes is released in the finally, whatever raises on the way
        uid = _UIDS.acquire() if mode == "uid+namespaces" else None
        workdir = _make_workdir(source, uid, files or {})
        # the whole sandbox's memory and tasks (the launcher and its init beside the program's), where
        # the host has cgroup v1; None elsewhere
        cgroup = SandboxCgroup.create(os.path.basename(workdir), limits.memory_mb << 20, limits.processes + 2)
        status_r, status_w = os.pipe()
        cfg = _launch_config(mode, workdir, uid, limits, status_w, channel_fds, cgroup.procs_files() if cgroup else [])
        proc = subprocess.Popen(
            [cfg["python"], "-I", "-S", "-B", _LAUNCHER],
            stdin=subprocess.PIPE,  # its settings: on no command line the program could read
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=os.path.join(workdir, "work"),
            env={},
            pass_fds=(status_w, *channel_fds.values()),
            start_new_session=True,  # its own process group, so one killpg ends all of it
        )
        os.close(status_w)
        status_w = -1
        _close_all(channel_fds)
        with proc.stdin:
            proc.stdin.write(json.dumps(cfg).encode())
        streams = _Streams(limits.output_bytes, limits.tail_bytes)
        status_bytes, limit_hit = _pump(proc, status_r, start + limits.timeout_s, streams, stops)
        _end(proc, mode != "rlimits")  # ends the PID namespace (and anything left in rlimits mode)
        outcome = _interpret(status_bytes, limit_hit, limits)
        if cgroup is not None and outcome["status"] in ("killed", "error") and cgroup.oom_kills():
            outcome = {**outcome, "status": "killed",
                       "reason": f"the sandbox's memory ran out ({limits.memory_mb} MB for all its processes)"}  # fmt: skip
        return SandboxResult(
            passed=outcome["status"] == "passed",
            stdout=_decode(streams.out),
            stderr=_decode(streams.err),
            duration_s=round(time.monotonic() - start, 4),
            isolation=mode,
            **outcome,
        )
    # ValueError: no seccomp filter for this architecture, or text that is no UTF-8 (a lone surrogate)
    except (OSError, ValueError, SandboxBusyError) as exc:
        return SandboxResult(
            status="error",
            passed=False,
            duration_s=round(time.monotonic() - start, 4),
            isolation=mode,
            reason=f"could not start the sandbox: {exc}",
        )
    finally:
        if proc is not None and proc.poll() is None:
            _end(proc, mode != "rlimits")
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        _close_all(channel_fds)
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        if cgroup is not None:
            cgroup.destroy()
        if workdir is not None:
            _rmtree(workdir)
        if uid is not None:
            _UIDS.release(uid)


def sweep_workdirs() -> list[str]:
    """Remove the work directories and cgroups that processes now gone left behind (a service SIGKILLed
    mid-run runs no cleanup); a reward replica calls it when it starts. Returns the removed paths."""
    return sweep_stale(shared_root(WORK_ROOT)) + sweep_cgroups()


# A mode works if a program starts, runs the stdlib, and cannot reach the loopback.
_PROBE = (
    "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\n"
    "except OSError as e:\n    print('ok', e.errno)\n"
)
_detected: Isolation | None = None
_detect_lock = threading.Lock()


def detect_isolation() -> Isolation:
    """The strongest mode that works here (probed once per process, then cached)."""
    global _detected
    with _detect_lock:
        if _detected is None:
            candidates = ISOLATION_MODES if os.geteuid() == 0 else ISOLATION_MODES[1:]
            for mode in candidates:
                result = run_python(_PROBE, SandboxLimits(timeout_s=30), isolation=mode)
                if result.passed and result.stdout.startswith("ok"):
                    _detected = mode
                    break
            else:
                _detected = "rlimits"
        return _detected


class WeakSandboxError(RuntimeError):
    """The host offers only a weaker isolation mode than the settings ask for (fail closed)."""


def isolation_rank(mode: str) -> int:
    """Strength of a mode: higher is stronger (``rlimits`` is 0)."""
    return len(ISOLATION_MODES) - 1 - ISOLATION_MODES.index(mode)  # type: ignore[arg-type]


def require_isolation(
    min_isolation: str = "userns", allow_weak_sandbox: bool = False, where: str = "sandbox", require_memory_cap: bool = False
) -> str:
    """The mode untrusted code will run in here, or :class:`WeakSandboxError` when it is below ``min_isolation``.

    ``rlimits`` (what is left without namespaces: a non-root image, a seccomp profile that
    forbids ``unshare``) contains accidents, not an adversary, and RL optimises against its
    reward; so judging refuses to start there unless an operator opted in. ``require_memory_cap``: refused
    too unless each sandbox's memory and processes are capped as a whole (:mod:`polyray.sandbox.cgroups`).
    ``where`` prefixes the setting's name in the message (``reward service sandbox``, ``task.sandbox``)."""
    if min_isolation not in ISOLATION_MODES:
        raise ValueError(f"{where}.min_isolation must be one of {', '.join(ISOLATION_MODES)}, not {min_isolation!r}")
    mode = detect_isolation()
    if isolation_rank(mode) < isolation_rank(min_isolation) and not allow_weak_sandbox:
        raise WeakSandboxError(
            f"{where}.min_isolation is {min_isolation!r} but this host offers only {mode!r} (no user or mount"
            f" namespaces); run where namespaces work, or set {where}.allow_weak_sandbox: true to accept it"
        )
    if require_memory_cap and not whole_sandbox_caps():
        raise WeakSandboxError(f"{where}.require_memory_cap is true but this host caps each process alone: {limits_report()}")
    return mode
