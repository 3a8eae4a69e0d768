"""polyray's Ray Serve applications, assembled from the library, and their Serve configs.

``reward_app`` and ``generation_app`` are ``import_path`` targets, like ``jobs/`` run from a
checkout or an image that holds it (the images put it on ``PYTHONPATH``)::

    serve run services.reward_app:build_app
    serve deploy services/reward.yaml          # onto a running cluster; KubeRay's RayService: deploy/
    serve deploy services/generation.yaml

``polyray serve reward|generation`` needs neither: it builds the same applications from the library
with the settings' defaults (or a Serve config's ``args``, ``--config``), from any directory. The
library never imports this folder (``tests/unit/project/test_layering.py``).
"""
