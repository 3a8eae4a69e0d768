"""What the evaluation job has finished, on disk as it finishes: a crash loses nothing, a rerun resumes.

Each unit (task x model) is appended to ``<out>/units.jsonl`` twice: once generated (its
samples) and once judged (its judgements). A unit is keyed by a fingerprint of everything
that determines its samples and judgements (task config, model and adapter files, sampling,
inputs, ``n_samples``, seeds, the reward model's files), so a rerun of the same job with the same output directory restores
the units it already has (skipping generation, and judging too when that finished) and a
changed config recomputes. A torn last line (a kill mid-write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from polyray.config.eval_job import EvalJobConfig
from polyray.drivers.evaluate.plan import EvalUnit
from polyray.io import append_jsonl, read_log_jsonl
from polyray.rollout.sampling import JudgedGroups
from polyray.rollout.worker import Sample
from polyray.tasks import Judgement, Task


def _files(directory: Path) -> list:
    """(name, size, mtime) of a directory's files: a changed adapter or reward model changes the key."""
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file()]


def unit_key(unit: EvalUnit, task_cfg, cfg: EvalJobConfig) -> str:
    """Fingerprint of what determines a unit's samples and judgements."""
    adapter = _files(Path(unit.model.adapter)) if unit.model.adapter is not None else None
    spec = {
        "task": task_cfg.model_dump(mode="json"),
        "model": [unit.model.name, unit.model.kind, unit.model.few_shot, adapter],
        "base": cfg.model.model_dump(mode="json"),
        "sampling": unit.sampling.model_dump(mode="json"),
        "inputs": unit.inputs,
        "n_samples": cfg.n_samples,
        "seed": cfg.seed,
        "rollout": cfg.rollout.model_dump(mode="json", include={"seed", "gpus_per_worker", "logprobs_mode"}),
        "reward_model": _files(Path(cfg.reward_model)) if cfg.reward_model else None,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


class UnitStore:
    def __init__(self, out: Path):
        self.path = Path(out) / "units.jsonl"
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        for row in read_log_jsonl(self.path):
            self.records[(row["key"], row["stage"])] = row

    def restore(self, unit: EvalUnit, key: str, task: Task) -> str | None:
        """Fill ``unit`` from the store: "judged", "generated", or None when nothing matches."""
        generated = self.records.get((key, "generated"))
        if generated is None:
            return None
        unit.samples = [[Sample(**s) for s in g] for g in generated["samples"]]
        judged = self.records.get((key, "judged"))
        if judged is None:
            return "generated"
        judgements = [[Judgement(**j) for j in g] for g in judged["judgements"]]
        unit.judged = JudgedGroups(unit.prompts, unit.samples, judgements, task)
        return "judged"

    def save_generated(self, unit: EvalUnit, key: str) -> None:
        append_jsonl(
            self.path,
            {
                "key": key,
                "stage": "generated",
                "task": unit.task_name,
                "model": unit.model.name,
                "samples": [[s.to_dict() for s in g] for g in unit.samples],
            },
        )

    def save_judged(self, unit: EvalUnit, key: str) -> None:
        append_jsonl(
            self.path,
            {
                "key": key,
                "stage": "judged",
                "task": unit.task_name,
                "model": unit.model.name,
                "judgements": [[asdict(j) for j in g] for g in unit.judged.judgements],
            },
        )
