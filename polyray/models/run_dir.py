"""A run directory as ``polyray run`` leaves it, read back: its phases, adapters and base model.

``polyray run`` writes ``config.resolved.yaml`` (the phases in order), ``results.json`` (with
``model_dir``, the base model it trained on) and ``adapters/<phase>/`` (standard peft format) as
soon as each exists (:mod:`polyray.drivers.run`). The evaluation job and ``polyray export`` read
run directories through these functions; a missing piece is a ``ValueError`` naming its path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import yaml

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def run_phase_order(run_dir: Path) -> list[str]:
    """The run's phase names in training order (from ``config.resolved.yaml``; [] when unreadable)."""
    cfg = Path(run_dir) / "config.resolved.yaml"
    try:
        data = yaml.safe_load(cfg.read_text()) if cfg.is_file() else {}
        return [str(p.get("name") or p.get("type")) for p in (data or {}).get("phases", [])]
    except (yaml.YAMLError, AttributeError, TypeError):
        return []


def check_adapter_weights(adapter: Path) -> None:
    if not any((adapter / f).is_file() for f in ADAPTER_WEIGHTS):
        raise ValueError(f"{adapter} has adapter_config.json but no adapter_model.safetensors/.bin")


def resolve_adapter_dirs(path: str | Path, phases: Sequence[str] | None = None) -> list[tuple[str | None, Path]]:
    """(phase, adapter dir) pairs: [(None, path)] for a peft adapter dir, one per phase for a run dir.

    Raises ValueError (the caller adds the config field) when ``path`` is neither.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if (path / "adapter_config.json").is_file():
        check_adapter_weights(path)
        if phases:
            raise ValueError(f"{path} is a single adapter directory; phases only apply to a run directory")
        return [(None, path.resolve())]
    root = path / "adapters"
    found = {d.name: d for d in sorted(root.iterdir()) if not d.name.startswith(".")} if root.is_dir() else {}
    found = {k: d for k, d in found.items() if (d / "adapter_config.json").is_file()}
    if not found:
        raise ValueError(
            f"{path} is neither a peft adapter directory (adapter_config.json) nor a run directory"
            " (adapters/<phase>/adapter_config.json)"
        )
    order = run_phase_order(path)
    names = sorted(found, key=lambda p: (order.index(p) if p in order else len(order), p))
    if phases:
        missing = [p for p in phases if p not in found]
        if missing:
            raise ValueError(f"{path}: no adapters for phases {missing} (found {names})")
        names = list(phases)
    for p in names:
        check_adapter_weights(found[p])
    return [(p, found[p].resolve()) for p in names]


def phase_adapter(run_dir: str | Path, phase: str | None = None) -> tuple[str, Path]:
    """(phase, adapter directory) of one phase of the run in ``run_dir``: ``phase``, else the run's
    last phase. Raises ValueError naming the path when the run directory, the phase or its adapter
    is missing."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run directory")
    order = run_phase_order(run_dir)
    trained = sorted(d.name for d in (run_dir / "adapters").glob("*") if (d / "adapter_config.json").is_file())
    if not order and not trained:
        raise ValueError(
            f"{run_dir} is not a polyray run directory (no config.resolved.yaml, no adapters/<phase>/adapter_config.json)"
        )
    if phase is None:
        phase = order[-1] if order else trained[-1]
    elif order and phase not in order:
        raise ValueError(f"{run_dir}: the run has no phase {phase!r} (its phases: {', '.join(order)})")
    adapter = run_dir / "adapters" / phase
    if not (adapter / "adapter_config.json").is_file():
        have = f"trained: {', '.join(trained)}" if trained else "no phase has one yet"
        raise ValueError(f"{adapter}: phase {phase!r} has no saved adapter (adapter_config.json; {have})")
    check_adapter_weights(adapter)
    return phase, adapter.resolve()


def run_base_model(run_dir: str | Path, adapter: Path) -> Path:
    """The base model the run trained on: ``results.json``'s ``model_dir``, else the adapter's
    ``base_model_name_or_path`` when that is a local model directory. Raises ValueError naming
    the file to look at when neither is at hand (e.g. the embedded model's cache was cleared)."""
    run_dir = Path(run_dir)
    results = run_dir / "results.json"
    named = []
    try:
        named.append(json.loads(results.read_text()).get("model_dir"))
    except (OSError, ValueError, AttributeError):
        pass
    try:
        named.append(json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path"))
    except (OSError, ValueError, AttributeError):
        pass
    for candidate in filter(None, named):
        if (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    if any(named):
        raise ValueError(
            f"{results}: the run's base model {next(filter(None, named))} is gone; build it again with"
            f" polyray model build-tiny --config {run_dir / 'config.resolved.yaml'} (embedded model), or fetch it"
        )
    raise ValueError(f"{results}: names no base model (model_dir), nor does {adapter / 'adapter_config.json'}")
