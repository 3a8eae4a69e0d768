"""The base of the phases that sample from the rollout pool: training prompts, rank 0's rollouts
(:class:`~polyray.rollout.prefetch.RolloutPrefetch`), and the samples' version lag."""

from __future__ import annotations

import random
from abc import abstractmethod
from typing import Any

from polyray.learner.phases.base import Phase
from polyray.rollout.prefetch import RolloutPrefetch
from polyray.rollout.request import GenerationRequest
from polyray.rollout.sampling import request_seeds, task_sampling
from polyray.tasks.base import Prompt, Task


def check_lag(groups, version: int, max_lag: int) -> int:
    """The largest version lag of the samples; error past ``max_lag``."""
    lag = max(version - s.version for g in groups for s in g)
    if lag > max_lag:
        raise RuntimeError(f"rollout samples lag {lag} versions behind the learner (max_lag={max_lag})")
    return lag


class SamplingPhase(Phase):
    """Base of the phases that sample from the pool: owns the training prompts and rank 0's rollouts.

    Subclasses set ``samples_per_prompt``. Prompt draws and request seeds are keyed by the phase's
    name (unique in a run), so two phases of one type draw different prompts and samples.
    """

    publishes_every_step = True

    @property
    def samples_ahead(self) -> bool:
        """Rollouts one step ahead: the next step's samples are drawn under the version a step publishes
        only once that step is over, so its publish need not wait for the workers' loads."""
        return self.cfg.async_rollouts

    def _init_rollouts(self, cfg, task: Task, n_train: int, pool) -> None:
        self.pool, self.task, self.prompts = pool, task, task.prompts("train", n_train)
        self.sampling = task_sampling(cfg.sampling, task)
        self.rollouts = RolloutPrefetch(self._submit, cfg.async_rollouts, cfg.steps, self._score)

    # each subclass provides it: completions drawn per prompt
    samples_per_prompt: int
    # what the rollout workers score the samples' KL reference log-probs under
    rollout_reference: str | None = None

    @abstractmethod
    def _score(self, prompts: list[Prompt], groups: list) -> Any:
        """Rank 0: score a step's samples (possibly in the prefetch's thread, ahead of the step)."""

    @property
    def rollout_draw(self) -> str:
        """The key of this phase's prompt draws and request seeds: the phase's name."""
        return self.cfg.name

    def _submit(self, step: int, version: int):
        """Draw the step's training prompts (same draw for a given seed and step) and start generating
        ``samples_per_prompt`` samples each under adapter ``version``; returns (prompts, pending).

        Each prompt's request has its own sampling seed from (run seed, phase, step, position), so
        a prompt drawn twice gets different samples, and a run with the same seed the same ones."""
        rng = random.Random(f"{self.rollout_draw}:{self.ctx.seed}:{step}")
        prompts = rng.sample(self.prompts, min(self.cfg.prompts_per_step, len(self.prompts)))
        seeds = request_seeds(self.ctx.seed, f"{self.rollout_draw}:{step}", [str(i) for i in range(len(prompts))])
        if self.ctx.env is not None:
            return prompts, self._submit_episodes(prompts, seeds, version)
        request = GenerationRequest(
            prompts=[p.text for p in prompts],
            n=self.samples_per_prompt,
            sampling=self.sampling,
            version=version,
            seeds=seeds,
            reference=self.rollout_reference,
        )
        pending = self.pool.submit(request)
        return prompts, pending

    def _submit_episodes(self, prompts: list[Prompt], seeds: list[int], version: int):
        """``samples_per_prompt`` episodes of the run's environment on each prompt, started under adapter
        ``version`` (every turn sampled by it): their groups, as samples, when the result is asked for."""
        from polyray.rollout.episodes import submit_episodes

        return submit_episodes(
            self.pool,
            self.task,
            prompts,
            self.samples_per_prompt,
            env=self.ctx.env,
            sampling=self.sampling,
            version=version,
            seeds=seeds,
            tokenizer=self.ctx.tokenizer,
        )
