"""Evaluation: what a model's samples measure, the statistics over them, and the report.

One module per concept, each the only place to import it from (this package re-exports nothing):

| module        | holds                                                                           |
|---------------|---------------------------------------------------------------------------------|
| ``passk``     | unbiased pass@k (Chen et al. 2021): per prompt, mean, matrix, curve              |
| ``metrics``   | USQ@k and its selectors, DER@k, the collapse point, ``PromptResult`` (samples.jsonl) |
| ``record``    | ``EvalRecord``: what one evaluation measured, one type and one JSON form         |
| ``stats``     | every statistic: over prompts, over seeds, within seeds, Holm                    |
| ``analysis``  | Pareto frontier, dynamics logs, LoRA parameter analysis                          |
| ``policy_eval``| a run's evaluation of one adapter version (an ``EvalRecord``)                   |
| ``dynamics``  | the diversity-dynamics probe the learner calls (an ``EvalRecord`` per measurement) |
| ``figures``, ``report`` | the HTML report's figures; the report and LaTeX tables                 |

The evaluation job that drives these over models x tasks is a driver: :mod:`polyray.drivers.evaluate`.
"""
