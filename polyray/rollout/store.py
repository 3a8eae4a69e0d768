"""The adapter store: one named Ray actor per run that owns every published adapter version.

The learner publishes each version to it (tensors, phase, step); rollout workers pull a
version they lack from it (a restarted worker, an older version asked for in async mode, the
driver's evaluation after a resume). Each version is persisted in the run directory, so a
store or driver that dies loses nothing: a new store reads the directory back.

Invariants (docs/design.md, "Adapter versions"):

- **Ids never repeat.** The store hands them out: :meth:`AdapterStore.put_next` persists an
  adapter under the id after the newest one ever handed out (``reserved``, persisted before the
  bytes are written; :meth:`AdapterStore.reserve_next` hands out that id ahead of its bytes), so a learner resumed from a checkpoint, or restarted with the store, numbers
  its publishes after everything a lost attempt published. ``put`` with an explicit id (a run's
  init adapter is version 1) refuses one at or below the newest.
- **An id means one set of weights.** Each version carries the SHA-256 of its config and
  tensors (:func:`adapter_hash`); a worker recomputes it on load and refuses a mismatch.
- **Retention.** The newest ``keep`` versions stay on disk, and every pinned one (a phase's
  final adapter); older ones are deleted.

Where: the run directory's ``adapter_store``, or, with ``cluster.storage``, the run's key there (a
shared path or a ``pyarrow.fs`` URI, :class:`~polyray.storage.Storage`): a store restarted on another
node reads it back. Layout: ``<root>/reserved.json`` and ``<root>/v000042/{adapter_config.json,
adapter_model.safetensors, record.json}``; ``record.json`` is written last, so a version
directory without one is a torn write and is removed on start.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from polyray.storage import Storage, StorageError


class AdapterHashError(RuntimeError):
    """An adapter's bytes do not match the hash recorded for its version id."""


class VersionReusedError(ValueError):
    """A publish named a version id the store has already handed out."""


@dataclass(frozen=True)
class AdapterRecord:
    version: int
    sha256: str
    phase: str
    step: int
    time: float


# the numpy dtypes of an adapter's tensors in to_wire form, by the name torch gives them in the hash
_NUMPY_AS_TORCH = {"float32": "torch.float32", "float16": "torch.float16", "float64": "torch.float64"}


def _is_numpy(t) -> bool:
    return type(t).__module__ == "numpy" and getattr(t.dtype, "name", None) in _NUMPY_AS_TORCH


def adapter_hash(adapter: dict[str, Any]) -> str:
    """SHA-256 of an adapter ({"config": dict, "tensors": {name: tensor}}, torch or :func:`to_wire` form):
    its config (sorted JSON) and every tensor's name, dtype (as torch names it), shape and bytes, in name
    order. Numpy arrays are hashed without importing torch (the adapter store's process never needs it)."""
    h = hashlib.sha256(json.dumps(adapter["config"], sort_keys=True).encode())
    for name in sorted(adapter["tensors"]):
        t = adapter["tensors"][name]
        if _is_numpy(t):
            import numpy as np

            a = np.ascontiguousarray(t)
            dtype, shape, data = _NUMPY_AS_TORCH[a.dtype.name], tuple(a.shape), a.tobytes()
        else:
            import numpy as np
            import torch

            t = (torch.from_numpy(np.array(t)) if isinstance(t, np.ndarray) else t).detach().cpu().contiguous()
            # raw bytes, any dtype (bfloat16 too)
            dtype, shape, data = str(t.dtype), tuple(t.shape), t.view(-1).view(torch.uint8).numpy().tobytes()
        h.update(f"{name}|{dtype}|{shape}".encode())
        h.update(data)
    return h.hexdigest()


def to_wire(adapter: dict[str, Any]) -> dict[str, Any]:
    """An adapter as it travels between processes: its tensors as numpy arrays wherever numpy has
    their dtype (Ray moves arrays as buffers; a torch tensor is pickled one by one, at several times
    the cost for an adapter's dozens of small tensors: docs/benchmarks-notes.md, "Weight sync: the publish's floor"), others
    (bfloat16) as they are. :func:`from_wire` turns it back."""
    import torch

    def wire(t):
        t = t.detach().cpu().contiguous()
        return t if t.dtype == torch.bfloat16 else t.numpy()

    return {"config": adapter["config"], "tensors": {k: wire(v) for k, v in adapter["tensors"].items()}}


def from_wire(adapter: dict[str, Any]) -> dict[str, Any]:
    """The adapter with torch tensors again (writable copies: an array Ray hands over is a read-only
    view of its object store); one already in torch form is returned as it is."""
    import numpy as np
    import torch

    tensors = adapter["tensors"]
    if not any(isinstance(v, np.ndarray) for v in tensors.values()):
        return adapter
    return {
        "config": adapter["config"],
        "tensors": {k: torch.from_numpy(v.copy()) if isinstance(v, np.ndarray) else v for k, v in tensors.items()},
    }


def check_adapter(adapter: dict[str, Any], version: int, sha256: str | None) -> str:
    """``adapter``'s hash; raises :class:`AdapterHashError` unless it equals ``sha256`` (None: not checked)."""
    got = adapter_hash(adapter)
    if sha256 is not None and got != sha256:
        raise AdapterHashError(f"adapter version {version}: content hash {got[:12]} != recorded {sha256[:12]}")
    return got


def write_adapter_dir(path: Path, adapter: dict[str, Any]) -> None:
    """Write an adapter (torch or :func:`to_wire` form) as a peft directory (adapter_config.json +
    adapter_model.safetensors)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(adapter["config"]))
    (path / "adapter_model.safetensors").write_bytes(adapter_bytes(adapter))


def adapter_bytes(adapter: dict[str, Any]) -> bytes:
    """The adapter's tensors as a safetensors file's bytes (the same bytes from either form); one all in
    numpy form is written without importing torch."""
    tensors = adapter["tensors"]
    if all(_is_numpy(t) for t in tensors.values()):
        import numpy as np
        from safetensors.numpy import save

        return save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in from_wire(adapter)["tensors"].items()})


def load_adapter_bytes(data: bytes) -> dict[str, Any]:
    """A safetensors file's tensors: numpy arrays (the :func:`to_wire` form) where numpy has their dtype,
    else (bfloat16) torch tensors."""
    from safetensors.numpy import load

    try:
        return load(data)
    # a dtype numpy lacks (bfloat16)
    except KeyError:
        from safetensors.torch import load as load_torch

        return load_torch(data)


def read_adapter_dir(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    config = json.loads((Path(path) / "adapter_config.json").read_text())
    return {"config": config, "tensors": load_file(str(Path(path) / "adapter_model.safetensors"))}


def _import_tensor_libraries() -> None:
    """Import what a put hashes and writes with (numpy, safetensors; torch only for a bfloat16 adapter):
    on a busy machine the run's first publish would otherwise wait for them."""
    import numpy  # noqa: F401
    import safetensors.numpy  # noqa: F401


class AdapterStore:
    """A plain class (tested in-process); :func:`open_store` runs it as the run's named actor."""

    def __init__(self, root: str, keep: int = 8, preload: bool = False):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        # the actor: the first put's imports while the run starts, not in the learner's first publish
        if preload:
            threading.Thread(target=_import_tensor_libraries, name="polyray-store-preload", daemon=True).start()
        # a run directory's path, or a key in cluster.storage
        self.storage, self.keep = Storage(root), keep
        self.root = self.storage.uri
        self.records: dict[int, AdapterRecord] = {}
        for name in self.storage.list_dirs(""):
            if not (name.startswith("v") and name[1:].isdigit()):
                continue
            try:
                r = AdapterRecord(**json.loads(self.storage.read_bytes(f"{name}/record.json")))
            # killed mid-write: the version never became visible
            except StorageError:
                self.storage.delete_dir(name)
                continue
            self.records[r.version] = r
        try:
            saved = json.loads(self.storage.read_bytes("reserved.json"))
        except StorageError:
            saved = {}
        self.reserved = max(saved.get("reserved", 0), max(self.records, default=0))
        # the weights the newest id was reserved for (:meth:`reserve_next`): its put must bring them
        self.reserved_sha256: str | None = (
            saved.get("reserved_sha256") if self.reserved == saved.get("reserved") else None
        )
        self.pins: dict[str, int] = saved.get("pins", {})
        # the newest few adapters, kept in memory
        self._cache: dict[int, dict[str, Any]] = {}

    def _dir(self, version: int) -> str:
        return f"v{version:06d}"

    def _save_state(self) -> None:
        state = {"reserved": self.reserved, "reserved_sha256": self.reserved_sha256, "pins": self.pins}
        self.storage.write_bytes("reserved.json", json.dumps(state).encode())

    # ---- writes -------------------------------------------------------------------------------
    def put_next(self, adapter: dict[str, Any], phase: str = "", step: int = 0) -> AdapterRecord:
        """Persist ``adapter`` under the next id (:meth:`next_version`); returns its record.

        A call the actor retries after a restart may get a later id than the lost call reserved:
        an id is never handed out twice, and the caller learns its id from the record."""
        return self.put(self.next_version(), adapter, phase, step)

    def reserve_next(self, sha256: str) -> int:
        """Hand out the next id for the weights hashing to ``sha256``, before their bytes (persisted
        first, like every reservation); a :meth:`put` of that id follows, and only those weights are
        taken under it. The publisher reserves, then writes the store and loads the workers at once:
        the id is fresh, so no worker holds other weights under it, and no later put can give it
        other ones. An id whose put never comes stays reserved and is never stored (workers that
        loaded it meanwhile hold it; nothing asks them for it, as the learner publishes past it)."""
        self.reserved, self.reserved_sha256 = self.reserved + 1, sha256
        self._save_state()
        return self.reserved

    def put(
        self, version: int, adapter: dict[str, Any], phase: str = "", step: int = 0, sha256: str | None = None
    ) -> AdapterRecord:
        """Persist ``adapter`` (torch or :func:`to_wire` form) as ``version`` (> every id handed out
        before, or the one just reserved); returns its record. ``sha256``: the hash the publisher
        computed, checked here as the workers check it (AdapterHashError on a mismatch).

        Retrying the same put (same id, same weights) returns the existing record."""
        sha = check_adapter(adapter, version, sha256)
        existing = self.records.get(version)
        if existing is not None and existing.sha256 == sha:
            return existing
        if version < 1 or version <= self.reserved and not (version == self.reserved and existing is None):
            raise VersionReusedError(
                f"adapter version {version} was already handed out (newest {self.reserved}): version ids never repeat"
            )
        if version == self.reserved and self.reserved_sha256 not in (None, sha):
            raise VersionReusedError(
                f"adapter version {version} is reserved for other weights: version ids never repeat"
            )
        self.reserved, self.reserved_sha256 = version, sha
        # reserve the id before writing: a torn write never frees it
        self._save_state()
        d = self._dir(version)
        self.storage.delete_dir(d)
        self.storage.write_bytes(f"{d}/adapter_config.json", json.dumps(adapter["config"]).encode())
        self.storage.write_bytes(f"{d}/adapter_model.safetensors", adapter_bytes(adapter))
        record = AdapterRecord(version=version, sha256=sha, phase=phase, step=step, time=time.time())
        self.storage.write_bytes(f"{d}/record.json", json.dumps(asdict(record)).encode())
        self.records[version] = record
        self._cache[version] = adapter
        self._retain()
        return record

    def pin(self, name: str, version: int) -> None:
        """Keep ``version`` regardless of age under ``name`` (e.g. a phase's final adapter)."""
        if version not in self.records:
            raise KeyError(f"adapter version {version} is not in the store")
        self.pins[name] = version
        self._save_state()

    def _retain(self) -> None:
        keep = set(sorted(self.records)[-self.keep :]) | set(self.pins.values())
        for version in [v for v in self.records if v not in keep]:
            del self.records[version]
            self.storage.delete_dir(self._dir(version))
        for version in sorted(self._cache)[:-2]:
            del self._cache[version]

    # ---- reads --------------------------------------------------------------------------------
    def actor_name(self) -> str | None:
        """The name this store runs under as an actor (:func:`open_store` names every one), else None."""
        import ray

        return ray.get_runtime_context().get_actor_name() if ray.is_initialized() else None

    def newest(self) -> int:
        """The newest id ever handed out (0: none); a new publish must use a higher one."""
        return self.reserved

    def next_version(self) -> int:
        """The id the next :meth:`put_next` hands out."""
        return self.reserved + 1

    def newest_stored(self) -> int:
        """The newest version whose weights the store holds (0: none)."""
        return max(self.records, default=0)

    def record(self, version: int) -> AdapterRecord | None:
        return self.records.get(version)

    def records_list(self) -> list[AdapterRecord]:
        return [self.records[v] for v in sorted(self.records)]

    def pinned(self) -> dict[str, int]:
        return dict(self.pins)

    def get(self, version: int) -> tuple[dict[str, Any], AdapterRecord] | None:
        """(adapter, record) of ``version``, or None if the store does not hold it. The adapter as it was put
        or in :func:`to_wire` form (its tensors as numpy arrays where numpy has their dtype)."""
        record = self.records.get(version)
        if record is None:
            return None
        adapter = self._cache.get(version)
        if adapter is None:
            d = self._dir(version)
            adapter = {
                "config": json.loads(self.storage.read_bytes(f"{d}/adapter_config.json")),
                "tensors": load_adapter_bytes(self.storage.read_bytes(f"{d}/adapter_model.safetensors")),
            }
        return adapter, record


# a run's store, in its run directory
STORE_DIR = "adapter_store"
# named actors are per namespace: one known to every process of a run and its services
STORE_NAMESPACE = "polyray"


def store_root(root: str | Path) -> str:
    """``root`` as the store names it: a URI as it is, a path made absolute."""
    return str(root).rstrip("/") if "://" in str(root) else str(Path(root).resolve())


def store_actor_name(root: str | Path) -> str:
    """The store's actor name: one per run directory (or storage location)."""
    return "polyray-adapter-store-" + hashlib.blake2b(store_root(root).encode(), digest_size=6).hexdigest()


def open_store(root: str | Path, keep: int = 8, detached: bool = False, name: str | None = None):
    """The run's store actor (created, or the live one for this run directory). Ray restarts it
    if its process dies; the new one reads the directory back, and calls in flight are retried.
    ``detached``: it outlives its creator (a service that opened a finished run's store). ``name``: the
    actor's name instead of the directory's (a rollout pool a sweep's trials share finds each trial's store
    by it); the last run's store of that name must be gone, which this waits for."""
    import time

    import ray

    options = dict(
        namespace=STORE_NAMESPACE,
        num_cpus=0,
        max_restarts=-1,
        max_task_retries=-1,
        lifetime="detached" if detached else None,
        # outside a Tune trial's placement group, like the workers
        scheduling_strategy="DEFAULT",
    )
    actor = ray.remote(AdapterStore)
    if name is None:
        return actor.options(name=store_actor_name(root), get_if_exists=True, **options).remote(
            store_root(root), keep, preload=True
        )
    deadline = time.monotonic() + STORE_NAME_WAIT_S
    while True:
        try:
            return actor.options(name=name, **options).remote(store_root(root), keep, preload=True)
        # the name is still held by the last run's store, being stopped
        except ValueError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"adapter store name {name!r} still held after {STORE_NAME_WAIT_S:g} s") from None
            time.sleep(0.1)


# for a stopped store to release its name
STORE_NAME_WAIT_S = 60.0
