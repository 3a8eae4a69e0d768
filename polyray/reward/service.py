"""Starting the reward service with a run, and scoring rollouts through it (or in-process).

A run with ``reward.endpoint: true`` deploys the Serve application (unless one with that
name is already running on the cluster, e.g. from ``serve deploy``) and the learner's
rank 0 scores every GRPO group through its ``DeploymentHandle``: the same batched code
path HTTP users hit, minus HTTP. Without an endpoint the task's judge runs in-process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from polyray.config import RewardConfig
from polyray.tasks.base import Prompt, Task

RewardFn = Callable[[list[Prompt], list[list[str]]], torch.Tensor]  # prompts, (B, G) texts -> (B, G) rewards


def ensure_reward_service(cfg: RewardConfig) -> None:
    """Deploy the reward application on the connected cluster if it is not running yet."""
    from ray import serve

    from polyray.reward.deployment import build_reward_app as build_app

    if cfg.app_name in serve.status().applications:
        return
    if cfg.http_port is not None:
        serve.start(http_options={"host": "127.0.0.1", "port": cfg.http_port})
    else:
        serve.start(proxy_location="Disabled")
    serve.run(build_app({"num_cpus": cfg.num_cpus}), name=cfg.app_name, route_prefix="/", blocking=False)


def build_reward_fn(cfg: RewardConfig, task: Task) -> RewardFn:
    """(B, G) float64 rewards of completions, through the service's handle or the task's judge."""
    if not cfg.endpoint:
        return lambda prompts, texts: torch.tensor(
            [[task.judge(p, t).reward for t in group] for p, group in zip(prompts, texts)], dtype=torch.float64
        )
    from polyray.reward.client import get_reward_handle, score_via_handle

    handle = get_reward_handle(cfg.app_name)

    def via_service(prompts: list[Prompt], texts: list[list[str]]) -> torch.Tensor:
        items = [{"prompt": p.text, "completion": t, "metadata": dict(p.meta)} for p, g in zip(prompts, texts) for t in g]
        scores = [r.score for r in score_via_handle(handle, cfg.name, items, timeout_s=cfg.timeout_s, retries=cfg.retries)]
        width = len(texts[0]) if texts else 0
        return torch.tensor(scores, dtype=torch.float64).view(len(texts), width)

    return via_service
