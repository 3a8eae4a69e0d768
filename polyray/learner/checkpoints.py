"""A phase's checkpoints in Ray Train's run directory, and its resume when Ray Train's own record of
them cannot be read.

Ray Train finds a phase's latest checkpoint through its checkpoint-manager snapshot
(``<storage_path>/<phase>/checkpoint_manager_snapshot.json``), which its controller rewrites in place
after each registered checkpoint. A driver killed during that write leaves the file empty or cut off,
and the next ``fit()`` of the phase stops in the controller (``CheckpointManagerInitializationError``):
the run could not be resumed. polyray does not depend on that file alone:

- each checkpoint directory is sealed with :data:`~polyray.storage.MANIFEST` (every file's size and
  SHA-256), written last, so a directory whose upload was cut off is told from a whole one;
- before a phase's ``fit()``, :func:`recover_run_dir` reads the snapshot. Readable, it stays Ray
  Train's to use. Unreadable, it is set aside (renamed, nothing deleted) and the phase's latest whole
  checkpoint found on storage is handed to the ranks, which resume from it as from Ray Train's. With
  no snapshot at all (the driver died before Ray Train wrote one, or after one was set aside) the
  latest whole checkpoint is likewise resumed from, when there is one.

The storage is a local path or a ``pyarrow.fs`` URI (:class:`polyray.storage.Storage`), as Ray
Train's ``storage_path``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from polyray.io import warn
from polyray.storage import MANIFEST, Storage, StorageError, write_manifest

STATE_FILE = "state.json"  # {"step", "version"}: where an attempt resumed from the checkpoint starts
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train's checkpoint directory names: checkpoint_<timestamp>


def snapshot_name() -> str:
    """Ray Train's checkpoint-manager snapshot file name, in the phase's run directory."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    return CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


def seal(directory: str | Path, step: int, version: int) -> None:
    """Finish a checkpoint directory: its state file, then its manifest of every file, written last."""
    directory = Path(directory)
    (directory / STATE_FILE).write_text(json.dumps({"step": step, "version": version}))
    write_manifest(directory)


@dataclass(frozen=True)
class FoundCheckpoint:
    location: str  # a path or URI (what ``ray.train.Checkpoint(path)`` takes)
    step: int
    version: int


def _whole(storage: Storage, key: str) -> FoundCheckpoint | None:
    """The checkpoint at ``key`` when its manifest lists files that are all there at their sizes."""
    from pyarrow import fs

    try:
        files = json.loads(storage.read_bytes(f"{key}/{MANIFEST}"))["files"]
        state = json.loads(storage.read_bytes(f"{key}/{STATE_FILE}"))
        infos = storage.fs.get_file_info([storage.path(f"{key}/{rel}") for rel in files])
        if any(i.type != fs.FileType.File or i.size != files[rel]["size"] for rel, i in zip(files, infos)):
            return None
        return FoundCheckpoint(storage.location(key), int(state["step"]), int(state["version"]))
    except (StorageError, OSError, ValueError, KeyError, TypeError):  # missing, cut off, not JSON: not whole
        return None


def latest_whole_checkpoint(storage_path: str, phase: str) -> FoundCheckpoint | None:
    """The phase's whole checkpoint with the most steps (the newest directory among equals), or None."""
    storage = Storage(storage_path)
    found = [
        c
        for name in storage.list_dirs(phase)
        if name.startswith(CHECKPOINT_PREFIX) and (c := _whole(storage, f"{phase}/{name}")) is not None
    ]
    return max(found, key=lambda c: (c.step, c.location), default=None)


def recover_run_dir(storage_path: str, phase: str) -> FoundCheckpoint | None:
    """Make the phase's run directory resumable; the checkpoint its ranks resume from when Ray Train
    will not hand them one (module docstring), else None (Ray Train's snapshot is read as usual)."""
    storage = Storage(storage_path)
    key = f"{phase}/{snapshot_name()}"
    if storage.exists(key):
        try:
            json.loads(storage.read_bytes(key))
            return None
        except ValueError:  # (JSONDecodeError, UnicodeDecodeError): written in part
            aside = f"{key}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
            storage.fs.move(storage.path(key), storage.path(aside))
            warn(f"{storage.location(key)}: cut off while written, set aside as {storage.location(aside)}")
    found = latest_whole_checkpoint(storage_path, phase)
    if found is not None:
        warn(f"phase {phase} resumes from its latest whole checkpoint: step {found.step} ({found.location})")
    return found
