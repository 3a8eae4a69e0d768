"""Sample n completions per held-out prompt through the rollout pool and score pass@k."""

from __future__ import annotations

from typing import Any

import numpy as np

from polyray.config import EvalConfig
from polyray.eval.passk import mean_pass_at_k
from polyray.tasks.base import Prompt, Task


def evaluate_policy(
    pool, task: Task, prompts: list[Prompt], cfg: EvalConfig, version: int | None = None, seed: int | None = None
) -> dict[str, Any]:
    """{"pass@k": ..., "reward_mean", "n_prompts", "n_samples", "per_prompt": [...]} for one adapter version."""
    groups = pool.generate([p.text for p in prompts], cfg.n_samples, cfg.sampling, version=version, seed=seed)
    rewards = [[task.judge(p, s.text).reward for s in group] for p, group in zip(prompts, groups)]
    counts = [(len(r), sum(1 for x in r if x >= 1.0)) for r in rewards]
    result: dict[str, Any] = {f"pass@{k}": mean_pass_at_k(counts, k) for k in cfg.ks}
    result.update(
        reward_mean=float(np.mean([np.mean(r) for r in rewards])),
        n_prompts=len(prompts),
        n_samples=cfg.n_samples,
        distinct_frac=float(np.mean([len({s.text.strip() for s in g}) / len(g) for g in groups])),
        per_prompt=[{"prompt": p.text, "n": n, "c": c} for p, (n, c) in zip(prompts, counts)],
    )
    return result
