"""The one sample -> judge -> per-prompt counts path.

Phase evaluations, the diversity-dynamics probe and the evaluation job all go through
here: :func:`sample_groups` draws ``n`` completions per input from the rollout pool
(under an adapter version or a named adapter), :func:`judge_groups` judges them with the
task (batched or parallel where the task supports it) and returns :class:`JudgedGroups`,
whose ``counts`` apply the task's one correctness rule (:meth:`polyray.tasks.Task.is_correct`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from polyray.config import SamplingConfig
from polyray.rollout.request import GenerationRequest
from polyray.rollout.worker import Sample
from polyray.tasks.base import Judgement, Prompt, Task


@dataclass
class JudgedGroups:
    """Samples of P prompts and their judgements: ``samples[i][j]`` is prompt i's j-th completion."""

    prompts: list[Prompt]
    samples: list[list[Sample]]
    judgements: list[list[Judgement]]
    task: Task

    @property
    def texts(self) -> list[list[str]]:
        return [[s.text for s in g] for g in self.samples]

    @property
    def rewards(self) -> list[np.ndarray]:
        """P arrays (n_i,) float64."""
        return [np.array([j.reward for j in g], dtype=np.float64) for g in self.judgements]

    @property
    def counts(self) -> list[tuple[int, int]]:
        """(n, c) per prompt: samples and correct samples, the input of pass@k."""
        return [(len(g), sum(1 for j in g if self.task.is_correct(j.reward))) for g in self.judgements]


def request_seeds(run_seed: int, purpose: str, keys: Sequence[str]) -> list[int]:
    """One sampling seed per request, from (run seed, purpose, key): independent across prompts and
    purposes (evaluation, dynamics, each training step), identical for the same run seed."""
    out = []
    for key in keys:
        digest = hashlib.blake2b(f"{run_seed}:{purpose}:{key}".encode(), digest_size=4).digest()
        out.append(int.from_bytes(digest, "big") & 0x7FFFFFFF)
    return out


def task_sampling(sampling: SamplingConfig, task: Task) -> SamplingConfig:
    """``sampling`` with the task's stop sequences added: generation ends where its answers end."""
    extra = [s for s in task.stop_sequences if s not in sampling.stop]
    return sampling.model_copy(update={"stop": [*sampling.stop, *extra]}) if extra else sampling


def sample_groups(
    pool,
    inputs: Sequence[str],
    n: int,
    sampling: SamplingConfig,
    *,
    version: int | None = None,
    adapter_name: str | None = None,
    seeds: Sequence[int] | None = None,
    chunk_size: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[list[Sample]]:
    """``n`` samples per input text (``seeds``: one per input, or None for the engine's stream);
    ``chunk_size`` inputs per pool call (progress granularity), all at once when None."""
    size = chunk_size or max(len(inputs), 1)
    samples: list[list[Sample]] = []
    for start in range(0, len(inputs), size):
        request = GenerationRequest(
            prompts=list(inputs[start : start + size]),
            n=n,
            sampling=sampling,
            version=version,
            adapter_name=adapter_name,
            seeds=None if seeds is None else list(seeds[start : start + size]),
        )
        samples.extend(pool.generate(request))
        if on_progress:
            on_progress(len(request.prompts))
    return samples


def judge_groups(
    task: Task, prompts: Sequence[Prompt], samples: list[list[Sample]], on_done: Callable[[int], None] | None = None
) -> JudgedGroups:
    judgements = task.judge_groups(prompts, [[s.text for s in g] for g in samples], on_done)
    return JudgedGroups(list(prompts), samples, judgements, task)


def sample_and_judge(
    pool,
    task: Task,
    prompts: Sequence[Prompt],
    n: int,
    sampling: SamplingConfig,
    prefix: str = "",
    seed: tuple[int, str] | None = None,
    **kwargs,
) -> JudgedGroups:
    """Sample ``n`` completions of ``prefix + prompt.text`` per prompt and judge them (kwargs: :func:`sample_groups`).

    ``seed``: (run seed, purpose) -> per-prompt request seeds keyed by position and prompt text.
    """
    if seed is not None:
        kwargs["seeds"] = request_seeds(seed[0], seed[1], [f"{i}:{p.text}" for i, p in enumerate(prompts)])
    samples = sample_groups(pool, [prefix + p.text for p in prompts], n, sampling, **kwargs)
    return judge_groups(task, prompts, samples)
