"""Fault injection shared by the end-to-end recovery tests: real processes, really killed."""

from __future__ import annotations

import json
from pathlib import Path

import psutil


def kill_node(pid: int) -> None:
    """SIGKILL the process ``pid`` and every process under it (its local Ray cluster) at once, as
    when its node dies: killed one by one, a learner could finish its phase before its cluster noticed."""
    tree = psutil.Process(pid).children(recursive=True)
    for p in [psutil.Process(pid), *tree]:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(tree, timeout=60)


def registered_step(run_dir: Path, phase: str) -> int:
    """The newest checkpoint step a restart of ``phase`` of the run in ``run_dir`` resumes from: the newest
    one Ray Train has registered (its record trails the step that wrote the checkpoint), or with kept ranks
    the newest one whole in storage."""
    from polyray.learner.checkpoints import newest_whole_checkpoint
    from polyray.storage import Storage

    try:
        snapshot = json.loads((run_dir / "checkpoints" / phase / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        found = newest_whole_checkpoint(Storage(run_dir / "checkpoints"), phase)
        return found.step if found else 0
    return max((c["metrics"]["step"] for c in snapshot["checkpoint_results"]), default=0)
