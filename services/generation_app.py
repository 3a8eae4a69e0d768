"""The generation service as a Serve application, for ``serve run`` / ``serve deploy``.

    serve run services.generation_app:build_app model_dir=<model directory>
    serve deploy services/generation.yaml   # args: polyray.config.services.GenerationServiceConfig

The deployment lives in the library (:mod:`polyray.generation.deployment`); this file only assembles.
"""

from polyray.generation.deployment import build_generation_app as build_app

__all__ = ["build_app"]
