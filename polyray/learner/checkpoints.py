"""A phase's checkpoints in Ray Train's run directory, and its resume when Ray Train's own record of
them cannot be read.

Ray Train finds a phase's latest checkpoint through its checkpoint-manager snapshot
(``<storage_path>/<phase>/checkpoint_manager_snapshot.json``), which its controller rewrites in place
after each registered checkpoint. A driver killed during that write leaves the file empty or cut off,
and the next ``fit()`` of the phase stops in the controller (``CheckpointManagerInitializationError``):
the run could not be resumed. polyray does not depend on that file alone:

- each checkpoint directory is sealed with :data:`~polyray.storage.MANIFEST` (every file's size and
  SHA-256). Ray Train uploads a checkpoint's files in no set order (``pyarrow.fs.copy_files``), so
  what tells a whole checkpoint from one cut off in upload is the files themselves: all there at
  their sizes, and, for the one resumed from, at their hashes;
- before a phase's ``fit()``, :func:`recover_run_dir` reads the snapshot. Readable, it stays Ray
  Train's to use. Unreadable, it is set aside (renamed, nothing deleted) and the phase's newest whole
  checkpoint on storage is handed to the ranks, which resume from it as from Ray Train's. With no
  snapshot at all (the driver died before Ray Train wrote one, or after one was set aside) the
  newest whole checkpoint is likewise resumed from, when there is one.

"Newest" is by directory name, Ray Train's ``checkpoint_<date>_<time>.<microseconds>``, not by
step: after a restart from an earlier checkpoint the newest directory is the one the latest attempt
wrote, which is what the step logs' resume markers follow (a higher step from a lost attempt is not).

The storage is a local path or a ``pyarrow.fs`` URI (:class:`polyray.storage.Storage`), as Ray
Train's ``storage_path``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from polyray.io import warn
from polyray.storage import MANIFEST, Storage, StorageError, write_manifest

# {"step", "version"}: where an attempt resumed from the checkpoint starts
STATE_FILE = "state.json"
# Ray Train's checkpoint directory names: checkpoint_<timestamp>
CHECKPOINT_PREFIX = "checkpoint_"


def snapshot_name() -> str:
    """Ray Train's checkpoint-manager snapshot file name, in the phase's run directory (a constant of
    Ray Train's internals: ``ray`` is pinned in pyproject.toml)."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    return CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


def seal(directory: str | Path, step: int, version: int) -> None:
    """Finish a checkpoint directory (before Ray Train uploads it): its state file, then its manifest."""
    directory = Path(directory)
    (directory / STATE_FILE).write_text(json.dumps({"step": step, "version": version}))
    write_manifest(directory)


@dataclass(frozen=True)
class FoundCheckpoint:
    """A whole checkpoint of a phase found on storage."""

    # a path or URI (what ``ray.train.Checkpoint(path)`` takes)
    location: str
    step: int
    version: int


def _listed_files(storage: Storage, key: str) -> dict[str, dict] | None:
    """The manifest's files of the checkpoint at ``key`` when all are there at their sizes, else None."""
    from pyarrow import fs

    try:
        files = json.loads(storage.read_bytes(f"{key}/{MANIFEST}"))["files"]
        infos = storage.fs.get_file_info([storage.path(f"{key}/{rel}") for rel in files])
    # no manifest, or not one
    except (StorageError, OSError, ValueError, KeyError, TypeError):
        return None
    whole = all(i.type == fs.FileType.File and i.size == files[rel]["size"] for rel, i in zip(files, infos))
    return files if whole and STATE_FILE in files else None


def _hashes_match(storage: Storage, key: str, files: dict[str, dict]) -> bool:
    """Every listed file's bytes at its SHA-256 (a file of the right size can still hold zeros after a
    machine, not a process, went down)."""
    return all(storage.file_sha256(f"{key}/{rel}") == entry["sha256"] for rel, entry in files.items())


def newest_whole_checkpoint(storage: Storage, phase: str) -> FoundCheckpoint | None:
    """The phase's newest checkpoint directory whose files all match its manifest, or None."""
    names = sorted((n for n in storage.list_dirs(phase) if n.startswith(CHECKPOINT_PREFIX)), reverse=True)
    for name in names:
        key = f"{phase}/{name}"
        files = _listed_files(storage, key)
        if files is not None and _hashes_match(storage, key, files):
            state = json.loads(storage.read_bytes(f"{key}/{STATE_FILE}"))
            return FoundCheckpoint(storage.location(key), int(state["step"]), int(state["version"]))
    return None


def recover_run_dir(storage_path: str, phase: str) -> FoundCheckpoint | None:
    """Make the phase's run directory resumable; the checkpoint its ranks resume from when Ray Train
    will not hand them one (module docstring), else None (Ray Train's snapshot is read as usual)."""
    storage = Storage(storage_path)
    key = f"{phase}/{snapshot_name()}"
    if storage.exists(key):
        try:
            json.loads(storage.read_bytes(key))
            return None
        # (JSONDecodeError, UnicodeDecodeError): written in part
        except ValueError:
            aside = f"{key}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            storage.fs.move(storage.path(key), storage.path(aside))
            warn(f"{storage.location(key)}: cut off while written, set aside as {storage.location(aside)}")
    found = newest_whole_checkpoint(storage, phase)
    if found is not None:
        warn(f"phase {phase} resumes from its newest whole checkpoint: step {found.step} ({found.location})")
    return found
