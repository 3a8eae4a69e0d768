"""Nothing outlives its parent: child processes that die with it, and scratch directories a killed
process cannot leak.

A SIGKILLed process runs no ``finally``, ``atexit`` or ``__del__``: whatever it started or created
must be cleaned up by someone else. Two mechanisms, both Linux:

- :func:`die_with_parent` asks the kernel to SIGKILL the calling process when its parent goes
  (``prctl(PR_SET_PDEATHSIG)``). The kernel's "parent" is the *thread* that forked the child: the
  signal fires when that thread exits, even if the rest of the parent lives on. So it is only set
  in children started from a thread that lives as long as its process (the caller checks that;
  see :mod:`polyray.rollout.vllm_plugin` for vLLM's engine processes). A parent already gone by the
  time the child asks is caught by comparing ``getppid()`` with the expected parent.
- :func:`process_dir` gives each process its own directory, ``<base>/<name>-<uid>/<owner>``, where
  ``<owner>`` is the process's PID namespace, PID and start time (``/proc/<pid>/stat``, clock ticks
  since boot: a recycled PID has another). :func:`sweep_stale` removes the owners' directories whose
  process is gone, so the next process to start (a restarted replica) removes what a killed one left.
  A directory of another PID namespace (another container sharing the base) is never touched: its
  owner cannot be looked up from here.

:func:`kill_descendants` ends a whole process tree at once (a command's forced stop on Ctrl-C:
``polyray.cli.common.bounded_interrupt``).

:func:`exit_process` ends a command's process after Python's own clean-up but without the native one: torch,
triton, gRPC (Ray) and vLLM share a driver's process, and a native exit handler or static destructor of one
that reaches state another already freed crashes a command that finished (SIGSEGV after its complete output).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import stat
import tempfile
import threading
from typing import NoReturn

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the thread that started it exits; at once if ``parent_pid`` is gone already."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    # reparented before the prctl: the parent died in between
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None: no such process)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def descendants(root: int) -> set[int]:
    """PIDs below ``root`` (children, theirs, ...), from /proc."""
    return _below({root})


def _below(roots: set[int]) -> set[int]:
    """PIDs below any of ``roots``, from one scan of /proc."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            ppid = parent_of(int(entry.name))
            if ppid is not None:
                parents[int(entry.name)] = ppid
    found: set[int] = set()
    frontier = set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie), and is the process that started at ``started`` when given."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and (started is None or int(fields[19]) == started)


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def owner_tag(pid: int | None = None) -> str:
    """``<pid namespace>-<pid>-<start time>`` of ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{_pid_namespace()}-{pid}-{start_time(pid)}"


def owner_gone(tag: str) -> bool:
    """Whether the process an :func:`owner_tag` names is gone (False for a tag of another PID namespace,
    or a name that is no tag: not ours to judge)."""
    parts = tag.split("-")
    if len(parts) != 3 or parts[0] != _pid_namespace() or not parts[1].isdigit():
        return False
    return str(start_time(int(parts[1]))) != parts[2]


def remove_tree(path: str) -> None:
    """Delete ``path`` even if a program chmod-ed things in it to 000 (a sandbox in ``rlimits`` mode writes there).

    Only real directories are ever chmod-ed back, never through a symlink: a program that
    planted ``link -> /etc`` must not get the service to open up the link's target."""

    def make_writable(p: str) -> None:
        # lstat: a symlink is never followed
        if stat.S_ISDIR(os.lstat(p).st_mode):
            os.chmod(p, stat.S_IRWXU, follow_symlinks=False)

    def fix(func, p, _exc):
        try:
            make_writable(os.path.dirname(p))
            make_writable(p)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix)


def shared_root(name: str, base: str | None = None) -> str:
    """``<base>/<name>-<uid>`` (base: the temp directory), created private to this user; refused if
    it is anything but a directory this user owns (someone else's, or a planted symlink)."""
    root = os.path.join(base or tempfile.gettempdir(), f"{name}-{os.getuid()}")
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{root} is not a directory owned by uid {os.getuid()}")
    return root


def sweep_stale(root: str) -> list[str]:
    """Remove the directories under ``root`` whose owner process is gone; returns their paths."""
    removed = []
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False) and owner_gone(entry.name):
            remove_tree(entry.path)
            removed.append(entry.path)
    return removed


_dirs: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def process_dir(name: str, base: str | None = None) -> str:
    """This process's own directory under :func:`shared_root` (created on first use, when the
    directories of processes that are gone are swept). Create scratch directories inside it."""
    # a forked child gets its own
    key = (name, base or "", os.getpid())
    with _lock:
        path = _dirs.get(key)
        if path is None or not os.path.isdir(path):
            root = shared_root(name, base)
            sweep_stale(root)
            path = os.path.join(root, owner_tag())
            os.makedirs(path, 0o700, exist_ok=True)
            _dirs[key] = path
        return path


def kill_descendants(root: int | None = None, also: dict[int, int | None] | None = None) -> list[int]:
    """SIGKILL every process below ``root`` (default: this one), and those of ``also`` ({pid: start
    time}, e.g. the tree as it was before a shutdown orphaned part of it) that still run; returns their
    PIDs. The tree is frozen first (SIGSTOP, until a scan finds no new process), so a child forked
    meanwhile is not missed and none is orphaned out of the tree before it is found."""
    root = os.getpid() if root is None else root
    frozen = {pid for pid, started in (also or {}).items() if pid != os.getpid() and alive(pid, started)}
    for pid in frozen:
        _signal(pid, signal.SIGSTOP)
    while True:
        found = _below({root, *frozen}) - frozen
        if not found:
            break
        for pid in found:
            _signal(pid, signal.SIGSTOP)
        frozen |= found
    for pid in frozen:
        _signal(pid, signal.SIGKILL)
    return sorted(frozen)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def exit_status(exc: SystemExit) -> int:
    """The status a process ending with ``exc`` exits with, as the interpreter maps it: ``None`` is 0, an
    integer itself, anything else (a message, printed to standard error) 1."""
    import sys

    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def exit_process(code: int) -> NoReturn:
    """End this process with status ``code``: the non-daemon threads joined and the ``atexit`` handlers run
    (Ray's shutdown, logging's flush, multiprocessing's children) as at a normal exit, standard output and
    error flushed, then ``os._exit``, which skips the interpreter's teardown and the native libraries' exit
    handlers (the module docstring says why). For a process's entry point only: a test in the same process
    would end with it. Nothing raised on the way (a Ctrl-C while a thread is joined) changes the status or
    lets the teardown run: it is reported, as the interpreter reports it at exit."""
    import atexit
    import sys
    import traceback

    try:
        try:
            threading._shutdown()  # what the interpreter's exit runs first (private): executors stop, threads join
        except BaseException:
            traceback.print_exc()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # a stream whose descriptor was closed at start
                try:
                    stream.flush()
                except Exception:
                    pass
    finally:
        os._exit(code)
