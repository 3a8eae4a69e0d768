"""What one run may use: the limits a caller sets, and the rlimits, PID-namespace size and tmpfs file count
derived from them."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one run (defaults suit unit tests of small functions)."""

    # wall clock, whole run
    timeout_s: float = 10.0
    # RLIMIT_CPU; default ceil(timeout) + 1
    cpu_s: int | None = None
    # RLIMIT_AS (virtual memory, so leave headroom above real use)
    memory_mb: int = 1024
    # RLIMIT_FSIZE: largest file the program may write
    file_size_mb: int = 16
    # RLIMIT_NOFILE
    open_files: int = 64
    # RLIMIT_NPROC: processes + threads of the sandbox user
    processes: int = 16
    # per stream; the program is killed past this
    output_bytes: int = 1 << 20
    # how much of each stream the result keeps (the end)
    tail_bytes: int = 4096
    # namespace modes: size of each of /sandbox and /tmp (memory-backed tmpfs)
    disk_mb: int = 64


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


def _tmpfs_inodes(limits: SandboxLimits) -> int:
    """Files (and directories) each of a sandbox's /tmp and /sandbox may hold: 64 per MiB of its size."""
    return max(1024, 64 * limits.disk_mb)
