"""What the launcher is started with: the new root's read-only binds and its settings for one run (the
program's command line, environment, rlimits and seccomp filter)."""

from __future__ import annotations

import os
import platform
import sys

from polyray.sandbox.limits import SandboxLimits, _pid_max, _rlimits, _tmpfs_inodes
from polyray.sandbox.seccomp import build_filter

_SANDBOX_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
# What the new root contains besides the interpreter's prefix; everything else is absent.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Of /etc only what the loader and the standard library read: never shadow, ssh keys or the
# service's own configuration (a sandbox under a root service could read all of /etc).
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime", "nsswitch.conf", "passwd", "group", "hosts", "mime.types")
# no pivot_root wrapper in glibc
_PIVOT_ROOT_SYSCALL = {"x86_64": 155, "aarch64": 41}


# Module files, run by a fresh interpreter as ``python -I -S -B <path>`` (standard library only, nothing of
# polyray imported): the launcher isolates itself and starts the program; the guard is the audit hook a
# program runs under in rlimits mode.
_HERE = os.path.dirname(os.path.abspath(__file__))
_LAUNCHER, _GUARD = os.path.join(_HERE, "launcher.py"), os.path.join(_HERE, "guard.py")


def _interpreter() -> tuple[str, str]:
    """(real interpreter path, install prefix): the program runs the base interpreter, not the venv."""
    return os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix)


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


def _launch_config(
    mode: str,
    base: str,
    uid: int | None,
    limits: SandboxLimits,
    status_fd: int,
    channel_fds: dict[int, int],
    cgroup_procs: list[str] | None = None,
) -> dict:
    # a cgroup caps the whole sandbox's memory and tasks
    whole = bool(cgroup_procs)
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
