"""Diversity dynamics: diversity and pass@k of a fixed validation set, measured during training.

Every ``dynamics.every`` steps the learner's rank 0 calls a :class:`DynamicsProbe`
(built by the driver and handed to the learner, which never imports this module): it
samples ``n_samples`` completions for the same ``n_prompts`` validation prompts under
the adapter just published and returns one row (an :class:`~polyray.eval.record.EvalRecord`'s
JSON: ``pass@k``, ``reward_mean``, ``diversity/<name>``), which rank 0 appends to
``runs/<name>/dynamics.jsonl``.
Fixed prompts and a fixed sampling seed make consecutive records comparable: what
changes is the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from polyray.config import DynamicsConfig, RunConfig, SamplingConfig
from polyray.eval.passk import mean_pass_at_k
from polyray.eval.record import Estimate, EvalRecord
from polyray.rollout.sampling import sample_and_judge, task_sampling
from polyray.tasks import Prompt, Task


def measure_dynamics(
    pool,
    task: Task,
    prompts: list[Prompt],
    cfg: DynamicsConfig,
    version: int | None,
    run_seed: int = 0,
    sampling: SamplingConfig | None = None,
) -> EvalRecord:
    """pass@k, mean reward and each diversity of ``n_samples`` samples per prompt under ``version``.

    Request seeds depend on (run seed, prompt) only, so consecutive measurements share them."""
    from polyray.diversity import compute_diversity_batch

    judged = sample_and_judge(
        pool,
        task,
        prompts,
        cfg.n_samples,
        task_sampling(sampling or SamplingConfig(), task),
        version=version,
        seed=(run_seed, "dynamics"),
    )
    return EvalRecord(
        pass_at_k={k: Estimate(mean_pass_at_k(judged.counts, k)) for k in cfg.ks},
        reward_mean=Estimate(float(np.mean(judged.rewards))),
        diversity={name: Estimate(float(np.mean(compute_diversity_batch(name, judged.texts)))) for name in cfg.metrics},
    )


class DynamicsProbe:
    """One phase's dynamics measurements; ``due(step, last)`` says when, ``probe(step, version)`` measures
    and returns the log row."""

    def __init__(self, run: RunConfig, phase_index: int, pool, model_dir: str | Path):
        self.run, self.cfg, self.pool, self.model_dir = run, run.dynamics, pool, str(model_dir)
        self.phase = run.phases[phase_index].name
        # global step of this phase's step 0
        self.offset = sum(p.steps for p in run.phases[:phase_index])
        self._task: Task | None = None

    def due(self, step: int, last: bool) -> bool:
        return bool(self.cfg.every) and (last or step % self.cfg.every == 0)

    def __call__(self, step: int, version: int) -> dict[str, Any] | None:
        if not self.cfg.every or self.pool is None:
            return None
        if self._task is None:
            from polyray.eval.policy_eval import build_eval_task

            from polyray.storage import node_path

            # on a learner rank's node
            self._task = build_eval_task(self.run, node_path(self.model_dir))
            self._prompts = self._task.prompts("val", self.cfg.n_prompts)
        # sampled as the phase evaluations sample (eval.sampling: length, temperature)
        record = measure_dynamics(
            self.pool, self._task, self._prompts, self.cfg, version, self.run.seed, self.run.eval.sampling
        )
        return {
            "phase": self.phase,
            "step": step,
            "global_step": self.offset + step,
            "version": version,
            **record.to_json(),
        }
