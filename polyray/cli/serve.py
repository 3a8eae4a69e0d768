"""``polyray serve reward``: run the reward service on a local Ray instance until Ctrl-C.

The Serve config file (``services/serve_config.yaml``) supplies the application's
``args``; ``--host``/``--port`` override its ``http_options``. Heavy imports (ray,
fastapi) happen inside the command so ``polyray --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

serve_app = typer.Typer(no_args_is_help=True, help="Ray Serve services (reward endpoint).")

DEFAULT_CONFIG = Path("services/serve_config.yaml")


@serve_app.callback()
def _group() -> None:
    """Ray Serve services (reward endpoint)."""  # a callback keeps `reward` a named subcommand


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _reward_args(config: Path) -> dict:
    """The ``args`` of the application named "reward" in a Serve config file (validated by Serve's schema)."""
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    if not config.is_file():
        _fail(f"no Serve config at {config}")
    try:
        schema = ServeDeploySchema.model_validate(yaml.safe_load(config.read_text()) or {})
    except (ValidationError, yaml.YAMLError) as exc:
        _fail(f"{config} is not a valid Serve config: {exc}")
    for application in schema.applications:
        if application.name == "reward":
            return dict(application.args or {})
    _fail(f"{config} has no application named 'reward'")


@serve_app.command("reward")
def reward(
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="HTTP host (0.0.0.0 to listen on every interface)."),
    config: Path = typer.Option(
        DEFAULT_CONFIG, "--config", help="Serve config YAML whose 'reward' application args to use."
    ),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start a local one)."),
):
    """Start the reward service (POST /v1/rewards, GET /v1/rewards, /healthz, /docs) and block until Ctrl-C."""
    args = _reward_args(config)
    import time

    import ray
    from ray import serve

    from polyray.io import ConfigError
    from polyray.reward.deployment import build_reward_app as build_app

    try:
        application = build_app(args)
    except (ConfigError, ValueError) as exc:
        _fail(str(exc))
    ray.init(address=address, include_dashboard=False)
    try:  # Ctrl-C during startup must clean up too
        serve.start(http_options={"host": host, "port": port})
        serve.run(application, name="reward", route_prefix="/")
        url = f"http://{host}:{port}"
        typer.secho(f"reward service ready at {url}  (docs: {url}/docs, Ctrl-C to stop)", fg=typer.colors.GREEN)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("shutting down")
    finally:
        serve.shutdown()
        ray.shutdown()
