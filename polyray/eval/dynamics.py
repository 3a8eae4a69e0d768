"""Diversity dynamics: diversity and pass@k of a fixed validation set, measured during training.

Every ``dynamics.every`` steps the learner's rank 0 samples ``n_samples`` completions for
the same ``n_prompts`` validation prompts under the adapter it just published and appends
one record to ``runs/<name>/dynamics.jsonl``. Fixed prompts and a fixed sampling seed make
consecutive records comparable: what changes is the policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from polyray.config import DynamicsConfig, SamplingConfig
from polyray.eval.passk import mean_pass_at_k
from polyray.tasks.base import Prompt, Task


def measure_dynamics(pool, task: Task, prompts: list[Prompt], cfg: DynamicsConfig, version: int | None) -> dict[str, Any]:
    """{"pass@k", "reward_mean", "diversity/<name>"...} of ``n_samples`` samples per prompt under ``version``."""
    from polyray.diversity import compute_diversity_batch

    groups = pool.generate([p.text for p in prompts], cfg.n_samples, SamplingConfig(), version=version, seed=0)
    texts = [[s.text for s in g] for g in groups]
    rewards = [[task.judge(p, t).reward for t in g] for p, g in zip(prompts, texts)]
    counts = [(len(r), sum(1 for x in r if x >= 1.0)) for r in rewards]
    record: dict[str, Any] = {f"pass@{k}": mean_pass_at_k(counts, k) for k in cfg.ks}
    record["reward_mean"] = float(np.mean(rewards))
    for name in cfg.metrics:
        record[f"diversity/{name}"] = float(np.mean(compute_diversity_batch(name, texts)))
    return record


def append_record(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
