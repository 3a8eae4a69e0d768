"""What caps a whole sandbox's memory and processes: cgroup v1 where the host mounts it writable.

Every sandbox is capped by rlimits (address space, CPU seconds, file size, open files, processes
per uid), which bind each process alone: a program that forks, or maps SysV shared memory (outside
every process's RSS), could hold many times its ``memory_mb``. Where this host mounts the cgroup v1
``memory`` and ``pids`` controllers writable by this process (a root service on a v1 host), each
sandbox runs in a group of its own in both: its memory (RSS, page cache, shared memory, the kernel
memory of its tmpfs files) is capped at ``memory_mb`` as a whole and its tasks at ``processes``
plus the launcher and its init; the kernel's OOM killer acts inside the group only. The launcher
joins the groups before it starts anything, so every process of the sandbox is in them.

cgroup v2 would do the same where the host delegates a subtree; polyray does not use it yet, and
says in ``/healthz`` and the start log why it is or is not available, beside what does hold.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from dataclasses import dataclass

from polyray.lifetime import owner_gone, owner_tag

WANTED = ("memory", "pids")
# <controller root>/polyray-sandbox/<owner process>/<run>
GROUP = "polyray-sandbox"


def cgroup_v2_status(mountinfo: str = "/proc/self/mountinfo", membership: str = "/proc/self/cgroup") -> str:
    """``available (<dir>)`` or ``unavailable: <reason>`` for this process's cgroup v2 delegation."""
    try:
        with open(mountinfo) as f:
            mounts = [line.split() for line in f]
        with open(membership) as f:
            own = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
    except OSError as exc:
        return f"unavailable: cannot read {exc.filename}"
    # mountinfo: ... mount_point ... - fstype source options
    mount = next((m[4] for m in mounts if "-" in m and m[m.index("-") + 1] == "cgroup2"), None)
    if mount is None:
        return "unavailable: no cgroup2 hierarchy mounted (a cgroup v1 host)"
    if own is None:
        return "unavailable: this process is in no cgroup2 group"
    here = os.path.normpath(os.path.join(mount, own.lstrip("/")))
    try:
        with open(os.path.join(here, "cgroup.controllers")) as f:
            offered = f.read().split()
    except OSError:
        return f"unavailable: {here} cannot be read"
    missing = [c for c in WANTED if c not in offered]
    if missing:
        return f"unavailable: the {' and '.join(missing)} controller(s) are not delegated to {here} (a hybrid host)"
    if not os.access(here, os.W_OK):
        return f"unavailable: {here} is not writable by this process"
    return f"available ({here})"


def cgroup_v1_roots(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str] | str:
    """``{"memory": dir, "pids": dir}``: the cgroup v1 hierarchies of those controllers, each with
    polyray's parent group made in it; or why not (one line)."""
    try:
        with open(mountinfo) as f:
            mounts = [line.split() for line in f]
    except OSError as exc:
        return f"cannot read {exc.filename}"
    roots: dict[str, str] = {}
    # ... mount_point ... - cgroup source super_options (rw,memory)
    for m in mounts:
        if "-" in m and m[m.index("-") + 1] == "cgroup":
            options = m[m.index("-") + 3].split(",")
            roots.update({c: m[4] for c in WANTED if c in options and c not in roots})
    missing = [c for c in WANTED if c not in roots]
    if missing:
        return f"no cgroup v1 {' or '.join(missing)} hierarchy mounted"
    for root in roots.values():
        try:
            os.makedirs(os.path.join(root, GROUP), exist_ok=True)
        except OSError as exc:
            return f"cannot make groups in {root} ({exc.strerror})"
    return {c: os.path.join(root, GROUP) for c, root in roots.items()}


@functools.lru_cache(maxsize=1)
def _v1() -> dict[str, str] | str:
    return cgroup_v1_roots()


def limits_report() -> str:
    """What caps a sandbox's resources here, for ``/healthz`` and the start log."""
    if isinstance(_v1(), dict):
        return "cgroup v1 (memory, pids) + rlimits"
    return (
        f"rlimits: processes x address space within memory_mb, no SysV IPC or memfd (cgroup v1: {_v1()};"
        f" cgroup v2 {cgroup_v2_status()})"
    )


def whole_sandbox_caps() -> bool:
    """Whether each sandbox's memory and tasks are capped as a whole here (cgroup v1)."""
    return isinstance(_v1(), dict)


def _write(directory: str, name: str, value: int | str) -> None:
    with open(os.path.join(directory, name), "w") as f:
        f.write(str(value))


def _tasks(directory: str) -> list[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as f:
            return [int(line) for line in f if line.strip()]
    except OSError:
        return []


def _remove(directory: str, deadline_s: float = 10.0) -> None:
    """Kill whatever still runs in the group, then remove it (a group is removable once empty)."""
    end = time.monotonic() + deadline_s
    while True:
        for pid in _tasks(directory):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        # EBUSY: a killed task not yet gone
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.01)


@dataclass
class SandboxCgroup:
    """One sandbox's groups, a directory per controller."""

    dirs: dict[str, str]

    @classmethod
    def create(cls, name: str, memory_bytes: int, tasks: int) -> SandboxCgroup | None:
        """The groups of run ``name`` with its caps (None where this host has no cgroup v1 to use)."""
        roots = _v1()
        if not isinstance(roots, dict):
            return None
        group = cls({})
        try:
            for controller, root in roots.items():
                owner = os.path.join(root, owner_tag())
                os.makedirs(owner, exist_ok=True)
                group.dirs[controller] = os.path.join(owner, name)
                os.mkdir(group.dirs[controller])
            memory = group.dirs["memory"]
            _write(memory, "memory.limit_in_bytes", memory_bytes)
            # swap accounting: no way out
            if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
                _write(memory, "memory.memsw.limit_in_bytes", memory_bytes)
            _write(group.dirs["pids"], "pids.max", tasks)
        except BaseException:
            group.destroy()
            raise
        return group

    def procs_files(self) -> list[str]:
        """The files the launcher writes its pid to, to join every group before it starts anything."""
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer killed in this sandbox (its memory cap was hit)."""
        try:
            with open(os.path.join(self.dirs["memory"], "memory.oom_control")) as f:
                fields = dict(line.split() for line in f if line.strip())
        except (OSError, KeyError, ValueError):
            return 0
        return int(fields.get("oom_kill", 0))

    def destroy(self) -> None:
        for directory in self.dirs.values():
            try:
                _remove(directory)
            # a task that outlived SIGKILL for seconds (stuck in the kernel): its group stays
            except OSError:
                pass


def sweep_cgroups() -> list[str]:
    """Remove the groups of processes that are gone (a service SIGKILLed mid-run runs no cleanup);
    returns the removed paths."""
    roots = _v1()
    if not isinstance(roots, dict):
        return []
    removed = []
    for root in roots.values():
        for owner in os.scandir(root):
            if owner.is_dir(follow_symlinks=False) and owner_gone(owner.name):
                for run in os.scandir(owner.path):
                    if run.is_dir(follow_symlinks=False):
                        _remove(run.path)
                        removed.append(run.path)
                _remove(owner.path)
    return removed
