"""The reward service as a Serve application, for ``serve run`` / ``serve deploy``.

    serve run polyray.services.reward_app:build_app
    serve deploy polyray/services/serve_config.yaml      # args: polyray.config.services.RewardServiceConfig

The deployment lives in the library (:mod:`polyray.reward.deployment`); this file only assembles.
"""

from polyray.reward.deployment import build_reward_app as build_app

__all__ = ["build_app"]
