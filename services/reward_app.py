"""The reward service as a Serve application, for ``serve run`` / ``serve deploy``.

    serve run services.reward_app:build_app
    serve deploy services/reward.yaml      # args: polyray.config.services.RewardServiceConfig

The deployment lives in the library (:mod:`polyray.reward.deployment`); this file only assembles.
"""

from polyray.reward.deployment import build_reward_app as build_app

__all__ = ["build_app"]
