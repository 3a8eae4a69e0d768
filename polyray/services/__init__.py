"""The Serve applications assembled from the library, and their default Serve configs (package data).

``reward_app`` and ``generation_app`` are ``import_path`` targets (``serve run`` / ``serve deploy``,
KubeRay's RayService); ``serve_config.yaml`` and ``generation_serve_config.yaml`` are the configs
``polyray serve reward|generation`` read by default from any directory. Like ``jobs/`` this is a
driver folder: the library never imports it (``tests/unit/test_layering.py``).
"""
