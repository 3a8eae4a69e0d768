"""``sandbox``: how strong the isolation of untrusted code must be before polyray judges it.

Code rewards are optimised against: RL finds whatever makes a test report "passed", so a
sandbox that silently degrades is a reward that can be faked. Judging therefore fails
closed: below ``min_isolation`` the reward service's replica, and a task's sandbox judge,
refuse to start with one line naming the setting, unless an operator opts into the weaker
mode with ``allow_weak_sandbox``. The modes, strongest first, are the sandbox's own
(``uid+namespaces``, ``userns``, ``rlimits``; :mod:`polyray.sandbox` describes them); the
names are repeated here because the config layer imports nothing but :mod:`polyray.io`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from polyray.io import StrictModel

IsolationName = Literal["uid+namespaces", "userns", "rlimits"]


class SandboxConfig(StrictModel):
    """The weakest isolation polyray will judge untrusted code in."""

    min_isolation: IsolationName = Field(
        "userns",
        description="Weakest isolation mode accepted: 'uid+namespaces' (root service), 'userns' (user namespaces),"
        " or 'rlimits' (resource limits and an audit hook only: not a boundary against an adversary).",
    )
    allow_weak_sandbox: bool = Field(
        False,
        description="Judge anyway when the host offers less than min_isolation (the mode is still reported in"
        " /healthz, the start log and every result).",
    )
    require_memory_cap: bool = Field(
        False,
        description="Refuse to judge unless each sandbox's memory and processes are capped as a whole (cgroup v1"
        " where the host mounts it writable); without, rlimits cap each process alone. /healthz says which holds.",
    )
