"""Starting the reward service with a run, and scoring rollouts through it (or in-process).

A run with ``reward.endpoint: true`` deploys the Serve application (unless one with that
name is already running on the cluster, e.g. from ``serve deploy``) and the learner's
rank 0 scores every GRPO group through its ``DeploymentHandle``: the same batched code
path HTTP users hit, minus HTTP. Without an endpoint the same registry reward runs
in-process. Either way the reward is ``reward.name`` (default: the task's own, e.g.
``code_exec`` for code, ``engagement`` for replies), or a ``weighted_sum`` of several.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from polyray.config import RewardConfig
from polyray.tasks.base import Prompt, Task

# prompts, (B, G) texts -> (B, G) rewards (NaN: no score)
RewardFn = Callable[[list[Prompt], list[list[str]]], torch.Tensor]


def ensure_reward_service(cfg: RewardConfig, functions: Iterable[str] = (),
                          resources: dict[str, float] | None = None) -> None:  # fmt: skip
    """Deploy the reward application on the connected cluster if it is not running yet, its replicas
    given the code of the custom reward ``functions`` (:func:`~polyray.config.run.custom_reward_functions`);
    ``resources``: custom Ray resources per replica (``cluster.worker_resources``)."""
    from ray import serve

    from polyray.reward.deployment import build_reward_app as build_app

    if cfg.app_name in serve.status().applications:
        return
    if cfg.http_port is not None:
        from polyray.http import REQUEST_TIMEOUT_S

        serve.start(http_options={"host": "127.0.0.1", "port": cfg.http_port, "request_timeout_s": REQUEST_TIMEOUT_S})
    else:
        serve.start(proxy_location="Disabled")
    args = {"num_cpus": cfg.num_cpus, "functions": list(functions), "resources": resources or {}}
    serve.run(build_app(args), name=cfg.app_name, route_prefix="/", blocking=False)


def resolve_reward(cfg: RewardConfig, task: Task) -> tuple[str, dict[str, Any]]:
    """The reward's name (the config's, else the task's own) and its parameters: the task's
    defaults (e.g. the engagement model of its file) overlaid with the config's, for a
    ``weighted_sum`` per component."""
    name = cfg.name or task.reward_name
    defaults = task.reward_defaults()
    params = {**defaults.get(name, {}), **cfg.params}
    if name == "weighted_sum" and isinstance(params.get("components"), list):
        params["components"] = [
            {**c, "params": {**defaults.get(c.get("name"), {}), **(c.get("params") or {})}} if isinstance(c, dict) else c
            for c in params["components"]
        ]
    return name, params


def build_reward_fn(cfg: RewardConfig, task: Task, run: str = "") -> RewardFn:
    """(B, G) float64 rewards of completions from the registry reward :func:`resolve_reward` names:
    through the reward service's handle (``endpoint``), else scored in-process by a
    :class:`~polyray.reward.scorer.RewardScorer` (same functions, same parameters). An item with no
    score (``RewardResult.score`` None) is NaN, which :func:`~polyray.objectives.advantages.compute_advantages`
    leaves out of its group."""
    name, params = resolve_reward(cfg, task)
    if cfg.endpoint:
        from polyray.reward.client import get_reward_handle, score_via_handle

        handle = get_reward_handle(cfg.app_name)

        def score(items):
            return score_via_handle(handle, name, items, params, timeout_s=cfg.timeout_s, retries=cfg.retries, run=run)
    else:
        from polyray.reward.scorer import RewardScorer

        scorer = RewardScorer()

        def score(items):
            return scorer.score(name, items, params)

    def rewards(prompts: list[Prompt], texts: list[list[str]]) -> torch.Tensor:
        items = [task.reward_item(p, t) for p, g in zip(prompts, texts) for t in g]
        scores = [math.nan if r.score is None else r.score for r in score(items)]  # NaN: no score
        width = len(texts[0]) if texts else 0
        return torch.tensor(scores, dtype=torch.float64).view(len(texts), width)

    return rewards
