"""Which models the evaluation job samples: base zero-/few-shot, peft adapters, run directories.

``kind: adapter`` takes a ``path`` that is either a peft adapter directory
(``adapter_config.json``) or a run directory, whose ``adapters/<phase>/`` become models
``<name>/<phase>`` (phase order from the run's ``config.resolved.yaml``; ``phases`` picks
some). Relative paths resolve against the working directory. Every reference is checked
before anything starts, and errors name the config field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from polyray.config.eval_job import EvalJobConfig
from polyray.io import ConfigError, warn
from polyray.models.run_dir import resolve_adapter_dirs
from polyray.models.source import prepare_model_dir
from polyray.tasks import embedded_model_task


@dataclass(frozen=True)
class ResolvedModel:
    """A concrete model to sample from."""

    name: str
    kind: str
    few_shot: int = 0
    adapter: Path | None = None
    run_dir: Path | None = None
    spec_index: int = 0


def _adapter_rank(adapter: Path) -> int:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    return max([int(cfg.get("r", 0))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])


def resolve_models(cfg: EvalJobConfig) -> list[ResolvedModel]:
    """Expand model specs (run directories -> one model per phase) and check every reference."""
    models: list[ResolvedModel] = []
    for i, spec in enumerate(cfg.models):
        if spec.kind != "adapter":
            models.append(ResolvedModel(spec.name, spec.kind, spec.shots, spec_index=i))
            continue
        try:
            dirs = resolve_adapter_dirs(spec.path, spec.phases)
        except ValueError as exc:
            raise ConfigError(f"models.{i}.path: {exc}") from None
        for phase, adapter in dirs:
            rank = _adapter_rank(adapter)
            if rank > cfg.rollout.max_lora_rank:
                limit = cfg.rollout.max_lora_rank
                raise ConfigError(f"models.{i}.path: adapter {adapter} has rank {rank} > rollout.max_lora_rank {limit}")
            run_dir = adapter.parent.parent if phase is not None else None
            name = spec.name if phase is None else f"{spec.name}/{phase}"
            models.append(ResolvedModel(name, "adapter", 0, adapter, run_dir, i))
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"models: names collide after expanding run directories: {dup}")
    for j, pair in enumerate(cfg.compare or []):
        for name in pair:
            if name not in names:
                raise ConfigError(f"compare.{j}: unknown model {name!r} (models: {names})")
    adapters = [m.name for m in models if m.adapter is not None]
    for j, pair in enumerate(cfg.lora or []):
        for name in pair:
            if name not in adapters:
                raise ConfigError(f"lora.{j}: {name!r} is not an adapter model (adapters: {adapters})")
    for j, p in enumerate(cfg.dynamics):
        if dynamics_file(Path(p)) is None:
            raise ConfigError(f"dynamics.{j}: no dynamics.jsonl at {p}")
    if cfg.reward_model and not Path(cfg.reward_model).is_dir():
        raise ConfigError(f"reward_model: {cfg.reward_model} is not a directory")
    return models


def dynamics_file(p: Path) -> Path | None:
    if p.is_file():
        return p
    return p / "dynamics.jsonl" if (p / "dynamics.jsonl").is_file() else None


def prepare_base_model(cfg: EvalJobConfig) -> Path:
    """The base model directory (the embedded model is built for the job's tasks)."""
    return prepare_model_dir(cfg.model, embedded_model_task(cfg.tasks))


def warn_other_base(cfg: EvalJobConfig, models: list[ResolvedModel]) -> None:
    """Warn when a run directory's resolved config names another base model than this job."""
    for run_dir in dict.fromkeys(m.run_dir for m in models if m.run_dir):
        f = run_dir / "config.resolved.yaml"
        if not f.is_file():
            continue
        try:
            theirs = (yaml.safe_load(f.read_text()) or {}).get("model") or {}
        except yaml.YAMLError:
            continue
        ours = cfg.model.model_dump(mode="json")
        if theirs and any(theirs.get(k) != ours.get(k) for k in ("source", "tiny") if k in theirs):
            warn(f"{run_dir} was trained on model {theirs.get('source')!r}, this job evaluates on {ours['source']!r}")


def load_reward_model(cfg: EvalJobConfig):
    """The engagement model named by ``reward_model`` (or None); a bad directory is a ConfigError."""
    if not cfg.reward_model:
        return None
    from polyray.reward.base import RewardError
    from polyray.reward.engagement import EngagementModel

    try:
        return EngagementModel.load(cfg.reward_model)
    except RewardError as exc:
        raise ConfigError(f"reward_model: {exc}") from None
