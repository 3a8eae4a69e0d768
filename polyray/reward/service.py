"""Starting the reward service with a run, and scoring rollouts through it (or in-process).

A run with ``reward.endpoint: true`` scores every GRPO group from the learner's rank 0 through
the ``DeploymentHandle`` of an application of its own, ``<reward.app_name>-learner``, deployed
with ``route_prefix=None``: Serve's proxy has no route to it, so no HTTP caller can fill its
replicas' batch slots or queue (Serve has no request priority; separate replicas are the only way
the learner's calls never wait behind a caller's). With ``reward.http_port`` the run also deploys
the public HTTP application ``<reward.app_name>`` at ``/``, on replicas of its own. An application
already running under either name (``serve deploy``, ``polyray serve reward``) is reused; a public
one running alone still gets a learner application beside it, built from the public one's Serve
config where Serve keeps it (:func:`plan_reward_apps`). Without an endpoint the same registry
reward runs in-process. Either way the reward is ``reward.name`` (default: the task's own, e.g.
``code_exec`` for code, ``engagement`` for replies), or a ``weighted_sum`` of several.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from polyray.config import RewardConfig
from polyray.tasks.base import Prompt, Task

# prompts, (B, G) texts -> (B, G) rewards (NaN: no score)
RewardFn = Callable[[list[Prompt], list[list[str]]], torch.Tensor]

# a Serve config's import_path for polyray's reward app (services/reward.yaml's, and the library's builder)
REWARD_IMPORT_PATHS = ("services.reward_app:build_app", "polyray.reward.deployment:build_reward_app")
# a public app's settings the learner's copy does not take: handle calls never pass the HTTP key check
# (and the run's driver may not hold the key), and the run reserves CPUs for one learner replica
NOT_FOR_THE_LEARNER = ("api_key_env", "api_key_file", "num_replicas")


def learner_app_name(app_name: str) -> str:
    """The handle-only application a run's learner scores through, beside the public app ``app_name``."""
    return f"{app_name}-learner"


@dataclass(frozen=True)
class RewardApp:
    """One Serve application to deploy: ``route_prefix`` None is reachable through handles only."""

    name: str
    route_prefix: str | None
    args: dict[str, Any]


def plan_reward_apps(
    cfg: RewardConfig, run_args: dict[str, Any], running: Collection[str], public_args: dict[str, Any] | None = None
) -> tuple[list[RewardApp], str | None]:
    """The applications a run deploys, and a warning line or None.

    ``run_args``: the run's own service args (``num_cpus``, ``functions``, ``resources``); ``running``:
    the names of the applications on the cluster; ``public_args``: the args of a running public app
    ``cfg.app_name`` as its Serve config gave them (None: unknown, e.g. deployed by ``serve.run``).
    The learner's app is reused when it runs; else, beside an operator's public app, it is built from
    that app's args (its reward defaults, sandbox policy, limits and batching are the operator's
    choices the learner scored with before) over the run's placement, so the learner keeps scoring as
    the operator's service would, on its own replicas; when those args are unknown, from the run's."""
    learner = learner_app_name(cfg.app_name)
    apps: list[RewardApp] = []
    warning = None
    if cfg.http_port is not None and cfg.app_name not in running:
        apps.append(RewardApp(cfg.app_name, "/", run_args))
    if learner not in running:
        args = run_args
        if cfg.app_name in running and public_args is None:
            warning = (
                f"reward.app_name: the running app {cfg.app_name!r} has no polyray Serve config to copy, so the"
                f" learner's own app {learner!r} is deployed with this run's reward settings (deploy"
                f" {learner!r} with route_prefix null yourself to choose its args)"
            )
        elif cfg.app_name in running:
            args = learner_args(public_args, run_args)
        apps.append(RewardApp(learner, None, args))
    return apps, warning


def learner_args(public_args: dict[str, Any], run_args: dict[str, Any]) -> dict[str, Any]:
    """A public app's args made the learner's: without its API key and replica count, with the run's
    ``num_cpus`` and ``resources`` (when it has any), and the run's custom functions added to its own."""
    args = {k: v for k, v in public_args.items() if k not in NOT_FOR_THE_LEARNER}
    functions = list(args.get("functions") or [])
    args["functions"] = functions + [f for f in run_args.get("functions", []) if f not in functions]
    args["num_cpus"] = run_args["num_cpus"]
    if run_args.get("resources"):
        args["resources"] = run_args["resources"]
    return args


def ensure_reward_service(
    cfg: RewardConfig,
    functions: Iterable[str] = (),
    resources: dict[str, float] | None = None,
    wait_s: float = 600.0,
    wait: bool = True,
) -> list[str]:
    """Deploy the learner's handle-only reward application (and with ``http_port`` the public one) on the
    connected cluster where it is not running yet (:func:`plan_reward_apps`), their replicas given the
    code of the custom reward ``functions`` (:func:`~polyray.config.run.custom_reward_functions`);
    ``resources``: custom Ray resources per replica (``cluster.worker_resources``). ``wait_s``: how long the
    apps may take to run (``cluster.resource_wait_s``) before :class:`~polyray.cluster.ClusterShortfall`;
    ``wait`` False returns once they are deployed, with the names to wait on
    (:func:`polyray.cluster.wait_serve_apps`)."""
    from ray import serve

    from polyray.io import ConfigError, warn
    from polyray.reward.deployment import build_reward_app as build_app

    running = set(serve.status().applications)
    run_args = {"num_cpus": cfg.num_cpus, "functions": list(functions), "resources": resources or {}}
    public_args = _config_args(cfg.app_name) if cfg.app_name in running else None
    apps, warning = plan_reward_apps(cfg, run_args, running, public_args)
    if not apps:
        return []
    built = []
    for app in apps:
        try:
            built.append((app, build_app(app.args)))
        # a copied config that does not build here (paths of its own working_dir)
        except ConfigError as exc:
            if app.args is run_args:
                raise
            warning = (
                f"reward.app_name: the learner's own app {app.name!r} cannot copy the args of"
                f" {cfg.app_name!r} ({exc}); it is deployed with this run's reward settings"
            )
            built.append((app, build_app(run_args)))
    if warning:
        warn(warning)
    if cfg.http_port is not None:
        from polyray.http import REQUEST_TIMEOUT_S

        serve.start(http_options={"host": "127.0.0.1", "port": cfg.http_port, "request_timeout_s": REQUEST_TIMEOUT_S})
    else:
        serve.start(proxy_location="Disabled")
    from polyray.cluster import run_serve_apps

    return run_serve_apps([(application, app.name, app.route_prefix) for app, application in built], wait_s, wait=wait)


def _config_args(app_name: str) -> dict[str, Any] | None:
    """The args of the running app ``app_name`` as the Serve config that deployed it gave them (``serve
    deploy``), if that config imports polyray's reward app; None for one deployed by ``serve.run``, whose
    arguments Serve does not keep (Serve's controller client: no public API returns a config's args)."""
    from ray.serve.context import _get_global_client

    app = _get_global_client().get_serve_details().get("applications", {}).get(app_name) or {}
    config = app.get("deployed_app_config") or {}
    if config.get("import_path") not in REWARD_IMPORT_PATHS:
        return None
    return dict(config.get("args") or {})


def resolve_reward(cfg: RewardConfig, task: Task) -> tuple[str, dict[str, Any]]:
    """The reward's name (the config's, else the task's own) and its parameters: the task's
    defaults (e.g. the engagement model of its file) overlaid with the config's, for a
    ``weighted_sum`` per component."""
    name = cfg.name or task.reward_name
    defaults = task.reward_defaults()
    params = {**defaults.get(name, {}), **cfg.params}
    if name == "weighted_sum" and isinstance(params.get("components"), list):
        params["components"] = [
            {**c, "params": {**defaults.get(c.get("name"), {}), **(c.get("params") or {})}}
            if isinstance(c, dict)
            else c
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

        # never the HTTP app's replicas
        handle = get_reward_handle(learner_app_name(cfg.app_name))

        def score(items):
            return score_via_handle(handle, name, items, params, timeout_s=cfg.timeout_s, retries=cfg.retries, run=run)
    else:
        from polyray.reward.scorer import RewardScorer

        scorer = RewardScorer()

        def score(items):
            return scorer.score(name, items, params)

    def rewards(prompts: list[Prompt], texts: list[list[str]]) -> torch.Tensor:
        items = [task.reward_item(p, t) for p, g in zip(prompts, texts) for t in g]
        # NaN: no score
        scores = [math.nan if r.score is None else r.score for r in score(items)]
        width = len(texts[0]) if texts else 0
        return torch.tensor(scores, dtype=torch.float64).view(len(texts), width)

    return rewards
