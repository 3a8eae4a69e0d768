"""Serving a run's policy: the generation app's settings from a run, and deploying it.

- :func:`run_generation_args`: a run's model, engine settings (as its rollout workers') and adapter
  store; with ``named=True`` (a finished run) also each phase's saved adapter as ``<run>/<phase>``.
- :func:`deploy_generation`: start Serve's HTTP proxy (if not running) and the application.
- :func:`stop_generation`: delete it, letting replicas answer the requests they hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polyray.config import RunConfig
from polyray.rollout.store import STORE_DIR


def run_generation_args(run: RunConfig, run_dir: Path, model_dir, named: bool) -> dict[str, Any]:
    """Generation service args serving ``run`` (in ``run_dir``) on its base model ``model_dir`` (a path, or
    its reference in ``cluster.storage``)."""
    args: dict[str, Any] = {
        "model_dir": str(model_dir),
        "run": run.name,
        # served as the run's engines sampled and were evaluated
        "dtype": run.engine_dtype,
        "max_model_len": run.rollout.max_model_len,
        "max_lora_rank": run.rollout.max_lora_rank,
        "kv_cache_gib": run.rollout.kv_cache_gib,
        "threads": run.rollout.threads,
        "gpus": run.rollout.gpus_per_worker,
        "gpu_memory_utilization": run.rollout.gpu_memory_utilization,
        "enforce_eager": run.rollout.enforce_eager,
        # a chat request is rendered as the run's prompts were (Qwen3: thinking off)
        "chat_template_kwargs": dict(run.model.chat_template_kwargs),
    }
    if (run_dir / STORE_DIR).is_dir() or not named:
        args["store_root"] = str((run_dir / STORE_DIR).resolve())
    if named:
        args["adapters"] = {
            f"{run.name}/{phase.name}": str((run_dir / "adapters" / phase.name).resolve())
            for phase in run.phases
            if (run_dir / "adapters" / phase.name / "adapter_config.json").is_file()
        }
    return args


# the generation service's Serve app
GENERATION_APP = "generation"


def deploy_generation(
    args: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = GENERATION_APP,
    wait_s: float = 600.0,
    wait: bool = True,
) -> str:
    """Deploy the generation app (Serve app ``name``) on the connected cluster and (``wait``) wait up to
    ``wait_s`` for it to run (:func:`polyray.cluster.run_serve_apps`); returns its base URL."""
    from ray import serve

    from polyray.config.services import GenerationServiceConfig
    from polyray.generation.deployment import build_generation_app

    # a bad setting fails here, naming the field
    application = build_generation_app(args)
    prefix = GenerationServiceConfig.model_validate(args).route_prefix
    from polyray.http import REQUEST_TIMEOUT_S

    serve.start(http_options={"host": host, "port": port, "request_timeout_s": REQUEST_TIMEOUT_S})
    from polyray.cluster import run_serve_apps

    run_serve_apps([(application, name, prefix)], wait_s, wait=wait)
    return f"http://{host}:{port}{prefix.rstrip('/')}/v1"


def stop_generation(name: str = GENERATION_APP) -> None:
    """Delete the app ``name`` and wait until it is gone: Serve stops routing to its replicas, and each
    answers the requests it holds before it stops (the deployment's graceful shutdown)."""
    from ray import serve

    serve.delete(name)
