"""Whether a config may continue a run (``--resume``): the same settings and the same input content,
wherever the inputs now lie.

A run directory holds the resolved config it started with (``config.resolved.yaml``) and, beside
it, ``inputs.json``: the working directory it started in and a digest of each input the config
names by path (the data file, ``init_adapter``, a local ``model.source``). A resume compares the
configs field by field (but :data:`EXECUTION_FIELDS`), with two allowances, so it works from a new Ray session and working
directory (``ray job submit --working-dir`` unpacks a fresh copy each time, and relative data paths
resolve into it):

* a path under the working directory is compared relative to it (``/tmp/A/data/x.jsonl`` started
  in ``/tmp/A`` equals ``/tmp/B/data/x.jsonl`` resumed from ``/tmp/B``);
* an input with a recorded digest is compared by content only: the same bytes elsewhere are the
  same input, and changed bytes at the same path are refused.

A directory's digest covers every file's name and size, and the bytes of those up to
:data:`HASHED_BYTES` (configs, tokenizers, adapters): a base model's weight shards are compared by
size, which keeps a resume from reading tens of gigabytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from polyray.io import file_sha256

INPUTS_FILE = "inputs.json"
PATH_FIELDS = ("model.source", "task.path", "task.engagement_model", "task.eval_engagement_model", "init_adapter")
"""Fields that may name a local path (dotted, in the resolved config)."""
CONTENT_FIELDS = ("model.source", "task.path", "init_adapter")
"""Path fields compared by content. Not the engagement models: a run trains those directories itself."""
EXECUTION_FIELDS = ("learner.keep_ranks", "rollout.share_across_trials")
"""Fields that choose how a run executes, not what it computes: a resume may change them (or find them
missing from a run started before they existed)."""
# files in a directory up to this size are hashed; larger ones by size
HASHED_BYTES = 256 << 20


def _get(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.get(key) if isinstance(config, dict) else None
    if isinstance(config, dict) and last in config:
        config[last] = value


def path_digest(path: str | Path) -> str | None:
    """``sha256:<hex>`` of a local file, or of a directory's listing (names, sizes, small files' bytes);
    None when ``path`` is no local file or directory (a hub id, ``embedded``, a missing path)."""
    path = Path(path).expanduser()
    if path.is_file():
        return "sha256:" + file_sha256(path)
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        digest.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        digest.update((file_sha256(f) if size <= HASHED_BYTES else "-").encode() + b"\n")
    return "sha256:" + digest.hexdigest()


def input_digests(config: dict[str, Any]) -> dict[str, str]:
    """Digest of each content field of the resolved ``config`` (a mapping) that names a local path."""
    digests = {}
    for field in CONTENT_FIELDS:
        value = _get(config, field)
        digest = path_digest(value) if isinstance(value, str) and value else None
        if digest is not None:
            digests[field] = digest
    return digests


def record_inputs(run_dir: Path, config: dict[str, Any]) -> None:
    """Write ``inputs.json`` for a run starting in ``run_dir`` from the working directory."""
    inputs = {"cwd": str(Path.cwd()), "digests": input_digests(config)}
    (Path(run_dir) / INPUTS_FILE).write_text(json.dumps(inputs, indent=2) + "\n")


def read_inputs(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``inputs.json`` (None for a run started before polyray wrote it)."""
    path = Path(run_dir) / INPUTS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _relative(value: Any, cwd: str | None) -> Any:
    """``value`` relative to ``cwd`` when it is an absolute path under it."""
    if not isinstance(value, str) or cwd is None or not value.startswith("/"):
        return value
    try:
        return Path(value).relative_to(cwd).as_posix()
    except ValueError:
        return value


def _normalise(config: dict[str, Any], cwd: str | None, digests: dict[str, str]) -> dict[str, Any]:
    # a copy
    config = json.loads(json.dumps(config))
    for field in PATH_FIELDS:
        _set(config, field, _relative(_get(config, field), cwd))
    for field, digest in digests.items():
        _set(config, field, digest)
    return config


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves where ``old`` and ``new`` (plain YAML data) differ; a list of another
    length, or a value of another kind, is one difference at its own name."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted({*old, *new}, key=str) for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{prefix}{i}.")]
    return [] if old == new else [prefix.rstrip(".")]


def resume_differences(old: dict[str, Any], new: dict[str, Any], inputs: dict[str, Any] | None) -> list[str]:
    """What keeps ``new`` (the resolved config now) from continuing the run that started with ``old``
    and recorded ``inputs`` (:func:`record_inputs`): dotted field names, an input whose content
    changed as ``<field> (content)``; empty when it may continue."""
    inputs = inputs or {}
    recorded = inputs.get("digests", {})
    current = {f: d for f, d in input_digests(new).items() if f in recorded}
    old_n = _normalise(old, inputs.get("cwd"), {f: recorded[f] for f in current})
    new_n = _normalise(new, str(Path.cwd()) if "cwd" in inputs else None, current)
    changed = [d for d in differences(old_n, new_n) if d not in EXECUTION_FIELDS]
    return [f"{d} (content)" if d in current else d for d in changed]
