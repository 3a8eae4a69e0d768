"""The run directory's step logs as the learner's rank 0 writes them.

Rank 0 may run on any node, and the run directory is the driver's (``--output-dir``), so rank 0
never opens those files. It hands its rows to :class:`StepLogs`. In a Ray run, the rows go to a
small actor that the driver pins to its own node (:func:`polyray.cluster.on_this_node`), and that
actor appends them there. Each append waits for the actor's answer, so a row that rank 0 has got
past is on the driver's disk, even if rank 0's node is lost a moment later. Without Ray (a plain
``torch.distributed`` worker, as in the GPU test), the same object writes the files itself.

Rows are read back with :func:`polyray.io.read_log_jsonl`, whichever way they were written
(a resumed attempt marks what it supersedes: :func:`polyray.learner.loop._mark_superseded`).
The same object keeps each phase's latest ``metrics.jsonl`` row, which the driver polls for its
progress bar (:meth:`StepLogs.latest`): one actor and one call per step serve both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STEP_LOGS = ("metrics.jsonl", "dynamics.jsonl", "rollouts.jsonl")
"""The run directory's per-step logs."""


class LogFiles:
    """The step logs of one run directory, on the disk this object lives on."""

    def __init__(self, output_dir: str | Path):
        self.dir = Path(output_dir)
        # phase -> its last metrics.jsonl row appended here
        self._latest: dict[str, dict[str, Any]] = {}

    def _path(self, name: str) -> Path:
        if name not in STEP_LOGS:
            raise ValueError(f"{name!r} is not a step log; the step logs are {', '.join(STEP_LOGS)}")
        return self.dir / name

    def append(self, name: str, records: list[dict[str, Any]]) -> None:
        from polyray.io import append_jsonl

        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        for record in records:
            append_jsonl(path, record)
        if name == "metrics.jsonl":
            self._latest.update((r["phase"], r) for r in records if "phase" in r)

    def latest(self, phase: str) -> dict[str, Any] | None:
        """The last ``metrics.jsonl`` row of ``phase`` appended through this object (None: none yet)."""
        return self._latest.get(phase)

    def rows(self, name: str) -> list[dict[str, Any]]:
        from polyray.io import read_log_jsonl

        return read_log_jsonl(self._path(name))


class StepLogs:
    """What rank 0 writes its step logs through: the files themselves (``StepLogs(LogFiles(dir))``),
    or a :class:`LogFiles` actor on the driver's node (:meth:`on_driver_node`). Picklable."""

    def __init__(self, files: LogFiles | None = None, actor=None):
        if (files is None) == (actor is None):
            raise ValueError("StepLogs takes the files or an actor holding them, one of the two")
        self.files, self.actor = files, actor

    @classmethod
    def on_driver_node(cls, output_dir: str | Path) -> StepLogs:
        """Logs written by an actor on the calling process's node (Ray connected)."""
        import ray

        from polyray.cluster import on_this_node

        # restarted if it dies (the rows are in the files; only the progress bar's latest row starts empty
        # again): an append in flight then fails, and Ray Train restarts the ranks from their checkpoint,
        # whose rows reach the new actor
        actor = (
            ray.remote(num_cpus=0, max_restarts=-1)(LogFiles)
            .options(scheduling_strategy=on_this_node())
            .remote(str(output_dir))
        )
        return cls(actor=actor)

    def append(self, name: str, *records: dict[str, Any]) -> None:
        """Append ``records`` to log ``name``; returns once they are written."""
        if not records:
            return
        if self.files is not None:
            self.files.append(name, list(records))
            return
        import ray

        ray.get(self.actor.append.remote(name, list(records)))

    def rows(self, name: str) -> list[dict[str, Any]]:
        """The current rows of log ``name`` (:func:`polyray.io.read_log_jsonl`)."""
        if self.files is not None:
            return self.files.rows(name)
        import ray

        return ray.get(self.actor.rows.remote(name))

    def latest(self, phase: str) -> dict[str, Any] | None:
        """:meth:`LogFiles.latest`: the phase's last step row written through these logs."""
        if self.files is not None:
            return self.files.latest(phase)
        import ray

        return ray.get(self.actor.latest.remote(phase))

    def close(self) -> None:
        """Stop the actor (the files stay)."""
        if self.actor is not None:
            import ray

            ray.kill(self.actor)
