"""``polyray serve reward`` / ``polyray serve generation``: run a service on Ray until Ctrl-C.

The application's settings are its config model's defaults (:mod:`polyray.config.services`, the
values ``services/reward.yaml`` spells out), so the command works from any directory; ``--config``
takes the ``args`` of a Serve config file instead. ``--host``/``--port`` set the HTTP address; ``serve generation --run runs/<name>`` fills in a finished run's
model, adapter store and phase adapters. Heavy imports (ray, fastapi, vllm) happen inside the
commands so ``polyray --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from polyray.cli.common import bounded_interrupt, fail

serve_app = typer.Typer(no_args_is_help=True, help="Ray Serve services (reward and generation endpoints).")


# the options every service's command takes (an option's default and help, once)
_port = typer.Option(8000, "--port", help="HTTP port.")
_host = typer.Option("127.0.0.1", "--host", help="HTTP host (0.0.0.0 to listen on every interface).")
_address = typer.Option(None, "--address", help="Ray cluster address (default: start a local one).")
_resource_wait = typer.Option(
    600.0,
    "--resource-wait-s",
    help="How long the app's replicas may wait for the cluster's resources before the"
    " command stops, naming them (a run's cluster.resource_wait_s).",
)


def _config(name: str, more: str):
    """``--config``: the Serve config file whose application ``name``'s args to use; ``more`` ends the help."""
    return typer.Option(None, "--config", help=f"Serve config YAML whose {name!r} application args to use{more}")


# a callback keeps subcommands named
@serve_app.callback()
def _group() -> None:
    """Ray Serve services (reward and generation endpoints)."""


def _app_args(config: Path | None, name: str) -> dict:
    """The ``args`` of the application ``name`` in a Serve config file (validated by Serve's schema);
    none (the settings' defaults) without a file."""
    if config is None:
        return {}
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not config.is_file():
        fail(f"no Serve config at {config}")
    try:
        schema = ServeDeploySchema.model_validate(yaml.safe_load(config.read_text()) or {})
    except (ValidationError, yaml.YAMLError) as exc:
        fail(f"{config} is not a valid Serve config: {exc}")
    for application in schema.applications:
        if application.name == name:
            return dict(application.args or {})
    fail(f"{config} has no application named {name!r}")


@serve_app.command("reward")
def reward(
    port: int = _port,
    host: str = _host,
    config: Path | None = _config("reward", " (default: the settings' defaults, as services/reward.yaml spells them)."),
    address: str | None = _address,
    resource_wait_s: float = _resource_wait,
):
    """Start the reward service (POST /v1/rewards, GET /v1/rewards, /healthz, /docs) and block until Ctrl-C."""
    args = _app_args(config, "reward")
    from ray import serve

    from polyray.io import ConfigError
    from polyray.reward.deployment import build_reward_app as build_app

    try:
        # a bad setting fails before Ray starts
        build_app(args)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))

    def start() -> str:
        from polyray.cluster import run_serve_apps

        serve.start(http_options={"host": host, "port": port})
        # connected: custom reward code is uploaded
        run_serve_apps([(build_app(args), "reward", "/")], resource_wait_s)
        url = f"http://{host}:{port}"
        return f"reward service ready at {url}  (docs: {url}/docs, Ctrl-C to stop)"

    _serve_until_interrupted(address, start)


def _serve_until_interrupted(address: str | None, start) -> None:
    """Join or start Ray, ``start()`` the service (it returns the line to print), block until Ctrl-C."""
    import time

    import ray
    from ray import serve

    # Serve's and Ray's shutdown may stall under load: Ctrl-C ends within a bound
    with bounded_interrupt():
        ray.init(address=address, include_dashboard=False)
        from polyray.io import ConfigError

        error = None
        # Ctrl-C during startup must clean up too
        try:
            typer.secho(start(), fg=typer.colors.GREEN)
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("shutting down")
        # the app failed or the cluster cannot place it: said in one line, after cleanup
        except ConfigError as exc:
            error = str(exc)
        finally:
            serve.shutdown()
            ray.shutdown()
    if error is not None:
        fail(error)


def _finished_run(run_dir: Path):
    """(run config, base model directory) of the run in ``run_dir``."""
    import json

    from polyray.config import load_config
    from polyray.io import ConfigError

    resolved = run_dir / "config.resolved.yaml"
    if not resolved.is_file():
        fail(f"--run {run_dir}: no config.resolved.yaml (not a polyray run directory)")
    try:
        run = load_config(resolved)
    except ConfigError as exc:
        fail(str(exc))
    try:
        model_dir = json.loads((run_dir / "results.json").read_text())["model_dir"]
    except (OSError, ValueError, KeyError):
        from polyray.models.source import resolve_model_dir

        model_dir = resolve_model_dir(run.model, run.task)
    return run, Path(model_dir)


@serve_app.command("generation")
def generation(
    run_dir: Path | None = typer.Option(
        None,
        "--run",
        help="A run directory: serve its base model, every version in its adapter store and its phases' adapters.",
    ),
    port: int = _port,
    host: str = _host,
    config: Path | None = _config(
        "generation", " (e.g. services/generation.yaml); --run fills in the model and adapters."
    ),
    address: str | None = _address,
    resource_wait_s: float = _resource_wait,
):
    """Start the OpenAI-compatible generation service (/v1/models, /v1/completions, /v1/chat/completions)."""
    if run_dir is None and config is None:
        fail("name the model to serve: --run runs/<name> (a finished run) or --config services/generation.yaml")
    args = _app_args(config, "generation")
    run = None
    if run_dir is not None:
        from polyray.generation.service import run_generation_args

        run, model_dir = _finished_run(run_dir)
        if run.cluster.storage:
            from polyray.storage import StorageError, share_model

            # the run's model is on the driver's node only: replicas elsewhere copy it from storage
            try:
                model_dir = share_model(run.cluster.storage, model_dir)
            except StorageError as exc:
                fail(f"cluster.storage of the run in {run_dir}: {exc}")
        args = {**args, **run_generation_args(run, run_dir, model_dir, named=True)}
    from polyray.generation.deployment import build_generation_app
    from polyray.generation.service import deploy_generation
    from polyray.io import ConfigError

    try:
        # a bad setting fails before Ray starts
        build_generation_app(args)
    except ConfigError as exc:
        fail(str(exc))

    def start() -> str:
        if run is not None and args.get("store_root"):
            from polyray.rollout.store import open_store

            # the replicas pull versions from it
            open_store(Path(args["store_root"]), run.rollout.store_keep)
        typer.echo("starting the generation service (each replica loads the engine and the newest version)")
        return f"generation service ready: base_url={deploy_generation(args, host, port, wait_s=resource_wait_s)}  (Ctrl-C to stop)"

    _serve_until_interrupted(address, start)
