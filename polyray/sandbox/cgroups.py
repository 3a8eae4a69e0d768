"""Whether this host could cap sandboxes with cgroup v2, reported beside the isolation mode.

Every sandbox is capped by rlimits (address space, CPU seconds, file size, open files,
processes per uid). cgroup v2 would cap real memory, the process count of a whole sandbox
and its CPU share, but a process may only use it where the host delegates a subtree: a
cgroup2 hierarchy whose controllers (``memory``, ``pids``) are offered at this process's
cgroup and writable by it. polyray does not yet place sandboxes in cgroups; this says in
``/healthz`` and the start log which limits apply ("rlimits") and why cgroup v2 is or is not
available here, so an operator can tell. Not a failure: ``min_isolation`` is about isolation,
and rlimits bound what a sandbox can take.
"""

from __future__ import annotations

import os

WANTED = ("memory", "pids")


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


def limits_report() -> str:
    """What caps a sandbox's resources here, for ``/healthz`` and the start log."""
    return f"rlimits (cgroup v2 {cgroup_v2_status()})"
