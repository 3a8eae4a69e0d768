"""The drivers: what assembles the library into a job, top floor of ``polyray/``.

| module        | drives                                                                  |
|---------------|-------------------------------------------------------------------------|
| ``run``       | ``polyray run``: model -> Ray -> rollout pool -> per phase fit, evaluate |
| ``evaluate``  | ``polyray eval``: models x tasks -> pass@k, USQ, statistics, report       |
| ``sweep``     | ``polyray sweep``: Ray Tune trials of ``run`` over a search space         |
| ``experiment``| ``polyray experiment``: runs x seeds as Tune trials, statistics over seeds |
| ``bench``     | ``polyray bench``: ratios measured side by side in one run                |

The library never imports this package (``tests/unit/project/test_layering.py``); the command line
(``polyray/cli/``) and the Ray job and Serve entrypoints (``jobs/``, ``services/``) sit above it.
"""
