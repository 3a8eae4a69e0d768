"""Evaluate one policy on held-out prompts: pass@k, USQ@k, mean reward and set diversity.

Used after every training phase; the result is an :class:`~polyray.eval.record.EvalRecord`
(a run's ``results.json`` holds one per stage). Few-shot evaluation (``few_shot`` > 0) prepends that
many training prompts with their references, one per line, and stops each completion
at the end of its line, so a base model is judged on its answer to the last prompt only.
"""

from __future__ import annotations

import numpy as np

from polyray.config import EvalConfig
from polyray.eval.metrics import compute_usq_at_k
from polyray.eval.passk import mean_pass_at_k
from polyray.eval.record import Estimate, EvalRecord, PromptRow
from polyray.rollout.sampling import request_seeds, sample_and_judge, task_sampling
from polyray.tasks.base import Prompt, Task


def few_shot_prefix(task: Task, k: int) -> str:
    """``k`` training examples, one per line (a fixed draw: every model sees the same examples)."""
    return "".join(f"{p.text}{p.reference}\n" for p in task.prompts("train", k)) if k else ""


def evaluate_policy(
    pool,
    task: Task,
    prompts: list[Prompt],
    cfg: EvalConfig,
    version: int | None = None,
    seed: int = 0,
    *,
    env=None,
    tokenizer=None,
) -> EvalRecord:
    """pass@k, USQ@k (k > 1), mean reward, counts, distinct samples, diversity and per-prompt rows
    of one adapter version.

    Each prompt's samples come from its own request seed, derived from (``seed``, "eval", prompt): the
    same for every model evaluated in a run (paired comparisons), independent across prompts.

    ``env`` (a multi-turn environment's config; ``tokenizer``: the model's): each sample is an episode,
    judged by its environment's final reward, its text the final answer; the record's ``extra`` adds
    pass@k after each turn (``turn<t>/pass@<k>``), the turns used and the model's tokens per episode."""
    from polyray.diversity import compute_diversity_batch

    sampling = task_sampling(cfg.sampling, task)
    if env is not None:
        texts, rewards, counts, logprob, extra = _episodes(
            pool, task, prompts, cfg, sampling=sampling, version=version, seed=seed, env=env, tokenizer=tokenizer
        )
    else:
        if cfg.few_shot and "\n" not in sampling.stop:
            sampling = sampling.model_copy(update={"stop": [*sampling.stop, "\n"]})
        judged = sample_and_judge(
            pool,
            task,
            prompts,
            n=cfg.n_samples,
            sampling=sampling,
            prefix=few_shot_prefix(task, cfg.few_shot),
            version=version,
            seed=(seed, "eval"),
        )
        texts, rewards, counts, extra = judged.texts, judged.rewards, judged.counts, {}
        logprob = [np.array([np.mean(s.logprobs) if s.logprobs else -1e9 for s in g]) for g in judged.samples]
    # USQ@k: the quality of the candidate a likelihood-ranking selector picks out of k (docs/algorithms.md §5)
    diversity = {name: compute_diversity_batch(name, texts) for name in cfg.diversity}
    return EvalRecord(
        pass_at_k={k: Estimate(mean_pass_at_k(counts, k)) for k in cfg.ks},
        usq_at_k={k: Estimate(compute_usq_at_k(rewards, logprob, k, selector="logprob").usq) for k in cfg.ks if k > 1},
        reward_mean=Estimate(float(np.mean([np.mean(r) for r in rewards]))),
        n_prompts=len(prompts),
        n_samples=cfg.n_samples,
        few_shot=cfg.few_shot,
        distinct_samples=Estimate(float(np.mean([len({t.strip() for t in g}) / len(g) for g in texts]))),
        diversity={name: Estimate(float(np.mean(v))) for name, v in diversity.items()},
        per_prompt=[
            PromptRow(n=n, c=c, rewards=r.tolist(), prompt=p.text, diversity={k: v[i] for k, v in diversity.items()})
            for i, (p, (n, c), r) in enumerate(zip(prompts, counts, rewards))
        ],
        extra=extra,
    )


def _episodes(
    pool, task: Task, prompts: list[Prompt], cfg: EvalConfig, *, sampling, version, seed: int, env, tokenizer
):
    """(final answers, rewards, counts, mean log-prob of the model's tokens, the multi-turn measures) of
    ``n_samples`` episodes per prompt; a failed episode scores 0."""
    from polyray.rollout.episodes import submit_episodes

    seeds = request_seeds(seed, "eval", [f"{i}:{p.text}" for i, p in enumerate(prompts)])
    groups = submit_episodes(
        pool,
        task,
        prompts,
        cfg.n_samples,
        env=env,
        sampling=sampling,
        version=version,
        seeds=seeds,
        tokenizer=tokenizer,
    ).result()
    texts = [[s.text for s in g] for g in groups]
    rewards = [np.array([0.0 if s.reward is None else s.reward for s in g], dtype=np.float64) for g in groups]
    counts = [(len(r), int(sum(map(task.is_correct, r)))) for r in rewards]

    def mean_logprob(s) -> float:
        own = [lp for lp, m in zip(s.logprobs, s.loss_mask) if m]
        return float(np.mean(own)) if own else -1e9

    logprob = [np.array([mean_logprob(s) for s in g]) for g in groups]
    episodes = [s for g in groups for s in g]
    extra: dict[str, float] = {}
    for turn in range(env.max_turns):
        by_turn = [
            (len(g), int(sum(task.is_correct(s.rewards_by_turn[turn]) for s in g if s.error is None))) for g in groups
        ]
        extra.update({f"turn{turn + 1}/pass@{k}": mean_pass_at_k(by_turn, k) for k in cfg.ks})
    extra.update(
        turns_mean=float(np.mean([s.turns for s in episodes])),
        model_tokens_per_episode=float(np.mean([sum(s.loss_mask) for s in episodes])),
        episode_errors=sum(s.error is not None for s in episodes),
    )
    return texts, rewards, counts, logprob, extra


def build_eval_task(run, model_dir) -> Task:
    """The run's task as its evaluations see it: prompts formatted for the model, and for quality
    ``engagement`` the task's engagement model (the driver trains it before anything else)."""
    from polyray.models.source import format_for_model
    from polyray.reward.plan import quality_model
    from polyray.tasks import build_task

    task = build_task(run.task)
    judge_model = quality_model(run, task)
    if judge_model is not None:
        from polyray.reward.engagement import EngagementModel

        task.engagement_model = EngagementModel.load(judge_model)
    return format_for_model(task, run.model, model_dir)
