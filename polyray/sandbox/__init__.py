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

# an ``x as x`` import below marks a name the tests reach through the package (they patch sb.platform.machine)
import json
import os
import platform as platform
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Literal

from polyray.lifetime import process_dir
from polyray.lifetime import remove_tree as _rmtree
from polyray.lifetime import shared_root, sweep_stale
from polyray.sandbox.cgroups import SandboxCgroup, limits_report, sweep_cgroups, whole_sandbox_caps
from polyray.sandbox.collect import _decode, _pump, _Streams
from polyray.sandbox.limits import SandboxLimits
from polyray.sandbox.limits import _pid_max as _pid_max
from polyray.sandbox.limits import _tmpfs_inodes as _tmpfs_inodes
from polyray.sandbox.prepare import _GUARD as _GUARD
from polyray.sandbox.prepare import _LAUNCHER, _launch_config
from polyray.sandbox.results import SandboxResult, Status, _interpret
from polyray.sandbox.stop import _CANCEL, _end, cancelled_by
from polyray.sandbox.stop import _descendants as _descendants
from polyray.sandbox.uids import SandboxBusyError, _UidPool

__all__ = [
    "ISOLATION_MODES",
    "WORK_ROOT",
    "Isolation",
    "SandboxBusyError",
    "SandboxLimits",
    "SandboxResult",
    "Status",
    "WeakSandboxError",
    "cancelled_by",
    "detect_isolation",
    "isolation_rank",
    "require_isolation",
    "run_python",
    "sweep_workdirs",
]

Isolation = Literal["uid+namespaces", "userns", "rlimits"]
ISOLATION_MODES: tuple[Isolation, ...] = ("uid+namespaces", "userns", "rlimits")
# work directories: <tmp>/polyray-sandbox-<uid>/<owner process>/run-*
WORK_ROOT = "polyray-sandbox"

# The runner and the isolation policy live here, not in a submodule: callers and tests patch what they look
# up (_UIDS, _make_workdir, _detected, whole_sandbox_caps) on the package.
_UIDS = _UidPool()


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
            # strict: a lone surrogate raises
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                f.write(text)
    # a half-made directory (text that is no UTF-8, a full disk) is not left behind
    except BaseException:
        _rmtree(base)
        raise
    # namespace modes copy the files into their own /sandbox
    return os.path.realpath(base)


def _close_all(fds: dict[int, int]) -> None:
    """Close and forget the fds (each once, whichever path gets here first)."""
    for target in list(fds):
        try:
            os.close(fds.pop(target))
        except OSError:
            pass


@dataclass
class _Run:
    """What one run has taken so far: :func:`_release` frees each of them, whatever raised on the way."""

    mode: str
    uid: int | None = None
    workdir: str | None = None
    cgroup: SandboxCgroup | None = None
    proc: subprocess.Popen | None = None
    status_r: int = -1
    status_w: int = -1


def _prepare(run: _Run, source: str, limits: SandboxLimits, files: dict[str, str]) -> None:
    """Take the run's uid, work directory, cgroup and status pipe, in that order, each kept on ``run`` at once."""
    run.uid = _UIDS.acquire() if run.mode == "uid+namespaces" else None
    run.workdir = _make_workdir(source, run.uid, files)
    # the whole sandbox's memory and tasks (the launcher and its init beside the program's), where
    # the host has cgroup v1; None elsewhere
    run.cgroup = SandboxCgroup.create(os.path.basename(run.workdir), limits.memory_mb << 20, limits.processes + 2)
    run.status_r, run.status_w = os.pipe()


def _launch(run: _Run, limits: SandboxLimits, channel_fds: dict[int, int]) -> None:
    """Start the launcher with the status pipe and channel fds (closed here once it has them); write its settings."""
    cgroup_procs = run.cgroup.procs_files() if run.cgroup else []
    cfg = _launch_config(run.mode, run.workdir, run.uid, limits, run.status_w, channel_fds, cgroup_procs)
    run.proc = subprocess.Popen(
        [cfg["python"], "-I", "-S", "-B", _LAUNCHER],
        # its settings: on no command line the program could read
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=os.path.join(run.workdir, "work"),
        env={},
        pass_fds=(run.status_w, *channel_fds.values()),
        # its own process group, so one killpg ends all of it
        start_new_session=True,
    )
    os.close(run.status_w)
    run.status_w = -1
    _close_all(channel_fds)
    with run.proc.stdin:
        run.proc.stdin.write(json.dumps(cfg).encode())


def _classify(status_bytes: bytes, limit_hit: str | None, limits: SandboxLimits, cgroup: SandboxCgroup | None) -> dict:
    """The run's status and reason; a killed or silent sandbox whose cgroup saw an OOM kill ran out of memory."""
    outcome = _interpret(status_bytes, limit_hit, limits)
    if cgroup is not None and outcome["status"] in ("killed", "error") and cgroup.oom_kills():
        outcome = {
            **outcome,
            "status": "killed",
            "reason": f"the sandbox's memory ran out ({limits.memory_mb} MB for all its processes)",
        }
    return outcome


def _watch(run: _Run, limits: SandboxLimits, start: float, stops: tuple[threading.Event, ...]) -> SandboxResult:
    """Read the program's output until it ends or hits a limit, end every process of the run, and report."""
    streams = _Streams(limits.output_bytes, limits.tail_bytes)
    status_bytes, limit_hit = _pump(run.proc, run.status_r, start + limits.timeout_s, streams, stops)
    # ends the PID namespace (and anything left in rlimits mode)
    _end(run.proc, run.mode != "rlimits")
    outcome = _classify(status_bytes, limit_hit, limits, run.cgroup)
    return SandboxResult(
        passed=outcome["status"] == "passed",
        stdout=_decode(streams.out),
        stderr=_decode(streams.err),
        duration_s=round(time.monotonic() - start, 4),
        isolation=run.mode,
        **outcome,
    )


def _release(run: _Run, channel_fds: dict[int, int]) -> None:
    """End what still runs, then close the pipes and fds and free the cgroup, work directory and uid."""
    if run.proc is not None and run.proc.poll() is None:
        _end(run.proc, run.mode != "rlimits")
    for fd in (run.status_r, run.status_w):
        if fd >= 0:
            os.close(fd)
    _close_all(channel_fds)
    if run.proc is not None:
        for stream in (run.proc.stdin, run.proc.stdout, run.proc.stderr):
            if stream:
                stream.close()
    if run.cgroup is not None:
        run.cgroup.destroy()
    if run.workdir is not None:
        _rmtree(run.workdir)
    if run.uid is not None:
        _UIDS.release(run.uid)


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
    # cancelled before it started: start nothing
    if any(event.is_set() for event in stops):
        _close_all(channel_fds)
        return SandboxResult(
            status="killed", passed=False, duration_s=0.0, isolation=mode, reason="stopped early by the caller"
        )
    run = _Run(mode)
    # everything the run takes is released in the finally, whatever raises on the way
    try:
        _prepare(run, source, limits, files or {})
        _launch(run, limits, channel_fds)
        return _watch(run, limits, start, stops)
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
        _release(run, channel_fds)


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
    min_isolation: str = "userns",
    allow_weak_sandbox: bool = False,
    where: str = "sandbox",
    require_memory_cap: bool = False,
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
        raise WeakSandboxError(
            f"{where}.require_memory_cap is true but this host caps each process alone: {limits_report()}"
        )
    return mode
