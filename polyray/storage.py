"""Storage every node of a run's cluster reaches, and node-local copies of what is in it.

``cluster.storage`` names one location: a shared path (NFS, a ReadWriteMany volume) or a
``pyarrow.fs`` URI (``s3://``, ``gs://``), the convention of Ray Train's ``storage_path``
(URIs through :func:`pyarrow.fs.FileSystem.from_uri`, paths as a ``LocalFileSystem``).

The driver puts a directory (the base model, an engagement model, a phase's adapter) into
storage with :meth:`Storage.put_dir`: its files, then ``polyray_manifest.json`` listing each file's
SHA-256, written last (a directory without its manifest is a torn write). What crosses a process
boundary is a :class:`StoredDir` (storage URI, relative key, the manifest's SHA-256), never a path
on the driver's disk. A worker turns it into a directory on its own node with :func:`local_dir`:
copied once per node into ``<POLYRAY_CACHE_DIR>/storage/`` (a file lock serialises the processes of
one node), every file hash-checked against the manifest, and the manifest against the reference.

A plain path handed to :func:`local_dir` is returned as it is: without ``cluster.storage`` a run
keeps handing out paths, as on one node.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyray.io import ConfigError, cache_root

MANIFEST = "polyray_manifest.json"
# StoredDir's string form: storage:<sha256>:<key>@<uri>
REF_PREFIX = "storage:"


class StorageError(RuntimeError):
    """A stored directory is missing, torn, or its bytes do not match its manifest."""


class NotOnThisNode(ConfigError):
    """A path the driver handed out is not on the node of the process given it: the nodes share no disk
    and the run has no ``cluster.storage`` (a user's setting to fix, named in one line)."""


@dataclass(frozen=True)
class StoredDir:
    """A directory in storage: the location's URI, its key there, the SHA-256 of its manifest; ``file``:
    the reference is to that one file of the directory (a data file)."""

    uri: str
    key: str
    sha256: str
    file: str = ""

    def __str__(self) -> str:
        return f"{REF_PREFIX}{self.sha256}:{self.key}@{self.uri}" + (f"#{self.file}" if self.file else "")

    @classmethod
    def parse(cls, value: str) -> "StoredDir":
        """The reference :meth:`__str__` wrote."""
        sha, _, rest = value[len(REF_PREFIX) :].partition(":")
        key, sep, uri = rest.partition("@")
        uri, _, file = uri.partition("#")
        if not value.startswith(REF_PREFIX) or len(sha) != 64 or not sep or not key or not uri:
            raise StorageError(f"not a stored-directory reference: {value!r}")
        return cls(uri, key, sha, file)


def is_stored(value) -> bool:
    return isinstance(value, StoredDir) or (isinstance(value, str) and value.startswith(REF_PREFIX))


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_bytes(files: dict[str, dict]) -> bytes:
    return json.dumps({"files": files}, sort_keys=True, indent=1).encode()


def _files(local: str | Path) -> dict[str, Path]:
    """{relative path: path} of every file under directory ``local`` except a manifest (a file: itself)."""
    local = Path(local)
    if local.is_file():
        return {local.name: local}
    return {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file() and p.name != MANIFEST}


def directory_manifest(local: str | Path) -> dict[str, dict]:
    """{relative path: {"sha256", "size"}} of every file under ``local`` except a manifest (a file: itself)."""
    from polyray.io import file_sha256

    return {rel: {"sha256": file_sha256(p), "size": p.stat().st_size} for rel, p in _files(local).items()}


def write_manifest(local: str | Path) -> None:
    """Write directory ``local``'s manifest into it (last, so a copy cut off before it is told from a whole one)."""
    (Path(local) / MANIFEST).write_bytes(_manifest_bytes(directory_manifest(local)))


class Storage:
    """One storage location (a path or a ``pyarrow.fs`` URI); keys are ``/``-separated relative paths."""

    def __init__(self, uri: str | Path):
        from pyarrow import fs

        uri = str(uri)
        if "://" in uri:
            try:
                self.fs, self.base = fs.FileSystem.from_uri(uri)
            # unknown scheme, no credentials: one line
            except Exception as exc:
                raise StorageError(f"cluster.storage: cannot open {uri!r} ({str(exc).splitlines()[0]})") from None
            self.uri = uri.rstrip("/")
        else:
            self.fs, self.base = fs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
            self.uri = self.base
        self.base = self.base.rstrip("/")
        self.local = isinstance(self.fs, fs.LocalFileSystem)

    def path(self, key: str) -> str:
        """``key``'s path in the file system (what ``self.fs`` takes)."""
        return f"{self.base}/{key.strip('/')}" if key.strip("/") else self.base

    def location(self, key: str) -> str:
        """``key`` as a location another process opens: a local path, or a URI (Ray Train's ``storage_path``)."""
        return self.path(key) if self.local else f"{self.uri}/{key.strip('/')}"

    # ---- files -------------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self.path(key)).type != fs.FileType.NotFound

    def read_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(key)) as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.location(key)}: not in storage") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        """Write ``key`` whole: through a temporary file and a rename on a file system (an object
        store's put is atomic by itself)."""
        path = self.path(key)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        target = f"{path}.{uuid.uuid4().hex[:8]}.tmp" if self.local else path
        with self.fs.open_output_stream(target) as f:
            f.write(data)
        if target != path:
            self.fs.move(target, path)

    def list_dirs(self, key: str) -> list[str]:
        """Names of the directories directly under ``key`` (none when it does not exist)."""
        from pyarrow import fs

        selector = fs.FileSelector(self.path(key), allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(selector) if i.type == fs.FileType.Directory)

    def delete_dir(self, key: str) -> None:
        if self.exists(key):
            self.fs.delete_dir(self.path(key))

    # ---- directories -------------------------------------------------------------------------
    def put_dir(self, local: str | Path, key: str, content_addressed: bool = False) -> StoredDir:
        """Copy directory ``local`` to ``key`` with its manifest, written last; a ``key`` that already
        holds the same manifest is left as it is. ``content_addressed``: under
        ``<key>/<directory name>-<manifest hash>`` instead (a model shared by runs, never overwritten).
        ``local`` may be one file: it is put as a directory holding it, and the reference names it.
        Returns the reference a worker resolves."""
        files = directory_manifest(local)
        if not files:
            raise StorageError(f"{local}: no files to put into storage")
        manifest = _manifest_bytes(files)
        sha = _sha256_bytes(manifest)
        name = Path(local).stem if Path(local).is_file() else Path(local).name
        key = f"{key.strip('/')}/{name}-{sha[:16]}" if content_addressed else key
        ref = StoredDir(self.uri, key.strip("/"), sha, Path(local).name if Path(local).is_file() else "")
        try:
            if self.read_bytes(f"{ref.key}/{MANIFEST}") == manifest:
                return ref
        except StorageError:
            pass
        self.delete_dir(ref.key)
        for rel, path in _files(local).items():
            self.fs.create_dir(self.path(f"{ref.key}/{rel}").rsplit("/", 1)[0], recursive=True)
            with open(path, "rb") as src, self.fs.open_output_stream(self.path(f"{ref.key}/{rel}")) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        self.write_bytes(f"{ref.key}/{MANIFEST}", manifest)
        return ref

    def ref(self, key: str) -> StoredDir:
        """The reference of the directory at ``key`` as it is in storage now (its manifest's hash)."""
        return StoredDir(self.uri, key.strip("/"), _sha256_bytes(self.read_bytes(f"{key.strip('/')}/{MANIFEST}")))

    def get_dir(self, ref: StoredDir, dest: str | Path) -> None:
        """Copy ``ref`` into the (new or empty) directory ``dest``, checking every file's SHA-256."""
        manifest = self.read_bytes(f"{ref.key}/{MANIFEST}")
        if _sha256_bytes(manifest) != ref.sha256:
            got = _sha256_bytes(manifest)[:12]
            raise StorageError(
                f"{self.location(ref.key)}: manifest hash {got} != {ref.sha256[:12]}"
                " (the directory was replaced after the reference was made)"
            )
        dest = Path(dest)
        for rel, entry in json.loads(manifest)["files"].items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as dst:
                digest = self.file_sha256(f"{ref.key}/{rel}", dst.write)
            if digest != entry["sha256"]:
                raise StorageError(
                    f"{self.location(ref.key)}/{rel}: content hash {digest[:12]} != manifest {entry['sha256'][:12]}"
                )
        (dest / MANIFEST).write_bytes(manifest)

    def file_sha256(self, key: str, write: Callable[[bytes], Any] | None = None) -> str:
        """The SHA-256 of the file at ``key``, read in blocks, each also handed to ``write`` when given."""
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(key)) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                if write is not None:
                    write(block)
        return digest.hexdigest()


def node_copy_dir(ref: StoredDir) -> Path:
    """Where :func:`local_dir` keeps ``ref`` on this node."""
    return cache_root() / "storage" / f"{Path(ref.key).name}-{ref.sha256[:16]}"


def _complete(path: Path, ref: StoredDir) -> bool:
    manifest = path / MANIFEST
    return manifest.is_file() and _sha256_bytes(manifest.read_bytes()) == ref.sha256


def local_dir(value: StoredDir | str | Path) -> Path:
    """A directory on this node: a :class:`StoredDir` (or its string form) copied from storage into
    this node's cache once (:func:`node_copy_dir`, under a file lock), a plain path as it is."""
    if not is_stored(value):
        return Path(value)
    ref = value if isinstance(value, StoredDir) else StoredDir.parse(value)
    dest = node_copy_dir(ref)
    if _complete(dest, ref):
        return dest
    from filelock import FileLock

    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        # another process of this node copied it while this one waited
        if _complete(dest, ref):
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
        try:
            Storage(ref.uri).get_dir(ref, staging)
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest


def local_path(value: StoredDir | str | Path | None) -> str | None:
    """:func:`local_dir` as a string (None stays None): what a worker passes on to transformers, vLLM, peft;
    a reference to one file (:attr:`StoredDir.file`): that file in this node's copy."""
    if value is None:
        return None
    ref = StoredDir.parse(value) if isinstance(value, str) and is_stored(value) else value
    return str(local_dir(ref) / ref.file) if isinstance(ref, StoredDir) and ref.file else str(local_dir(ref))


def node_path(value: StoredDir | str | Path) -> str:
    """:func:`local_path` for what must already be on this node (a model, an adapter): a plain path that is
    not here is a path on the driver's node only, refused in one line naming ``cluster.storage``."""
    local = local_path(value)
    if not is_stored(value) and not Path(local).exists():
        import socket

        raise NotOnThisNode(
            f"{local}: not on node {socket.gethostname()}, which shares no disk with the driver's: set"
            " cluster.storage to a location every node reaches (a shared volume or s3://, gs://), or keep"
            " the model on a volume every node mounts at that path (HF_HOME there)"
        )
    return local


@dataclass(frozen=True)
class RunStorage:
    """A run's place in ``cluster.storage``: ``<storage>/runs/<run name>-<hash of its output directory>``
    (the same place again when the run is resumed from that directory). Picklable: the learner's ranks
    get it and put their outputs there."""

    uri: str
    key: str

    @classmethod
    def of(cls, storage: str | None, name: str, out: str | Path) -> "RunStorage | None":
        """None without ``cluster.storage``: the run keeps everything in its output directory."""
        if storage is None:
            return None
        digest = hashlib.blake2b(str(Path(out).resolve()).encode(), digest_size=4).hexdigest()
        return cls(Storage(storage).uri, f"runs/{name}-{digest}")

    def storage(self) -> Storage:
        return Storage(self.uri)

    def location(self, *parts: str) -> str:
        """A path or URI under the run's key (Ray Train's ``storage_path``, the adapter store's root)."""
        return self.storage().location("/".join((self.key, *parts)))

    def put_dir(self, local: str | Path, *parts: str) -> StoredDir:
        return self.storage().put_dir(local, "/".join((self.key, *parts)))

    def get_dir(self, dest: str | Path, *parts: str) -> StoredDir:
        """Copy the run's directory at ``parts`` into ``dest`` (replaced whole); its reference."""
        storage = self.storage()
        ref = storage.ref("/".join((self.key, *parts)))
        dest = Path(dest)
        staging = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent if dest.parent.exists() else None))
        try:
            storage.get_dir(ref, staging)
            shutil.rmtree(dest, ignore_errors=True)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ref


def share_model(storage: str | None, model_dir: str | Path, prefix: str = "models") -> StoredDir | str:
    """What a run hands its workers for ``model_dir`` (or a data file): a reference to it in ``storage``
    (put there once, under ``<prefix>/<name>-<manifest hash>``, shared by every run using it), else the path."""
    if storage is None:
        return str(model_dir)
    return Storage(storage).put_dir(model_dir, prefix, content_addressed=True)
