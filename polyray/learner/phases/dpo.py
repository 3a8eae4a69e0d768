"""DPO on the policy's own samples (``compute_dpo_loss``; docs/algorithms.md §10): each prompt's best- and
worst-rewarded samples make a preference pair, trained against a frozen reference."""

from __future__ import annotations

import math

import torch

from polyray.config.phases import DPOPhaseConfig
from polyray.learner.batch import TrainBatch
from polyray.learner.phases.context import StepContext, broadcast_from_rank0
from polyray.learner.phases.sampling import SamplingPhase, check_lag
from polyray.objectives.dpo import compute_dpo_loss
from polyray.rollout.prefetch import rollout_rate
from polyray.tasks.base import Prompt, Task

PAIR_SUMS = ("margin", "accuracy", "chosen_reward", "rejected_reward")


def preference_pairs(groups: list, rewards: torch.Tensor) -> TrainBatch:
    """The (chosen, rejected) pairs of the step as groups of two: per prompt its best-rewarded sample and its
    worst (the first of equals), where they differ; unscored (NaN) samples take no part. ``advantages`` are
    +1 on the chosen side and -1 on the rejected."""
    pairs = []
    for group, row in zip(groups, rewards.tolist()):
        scored = [g for g, r in enumerate(row) if not math.isnan(r)]
        if not scored:
            continue
        best = max(scored, key=lambda g: row[g])
        worst = min(scored, key=lambda g: row[g])
        if row[best] > row[worst]:
            pairs.append([group[best], group[worst]])
    sides = torch.tensor([1.0, -1.0] * len(pairs), dtype=torch.float64).view(len(pairs), 2)
    if not pairs:
        return TrainBatch(prompt_ids=[], completion_ids=[], sample_logprobs=[], advantages=sides.view(-1), group_size=2)
    return TrainBatch.from_groups(pairs, sides)


class DPOPhase(SamplingPhase):
    """Online DPO: rank 0 samples and scores, pairs the best with the worst of each prompt and broadcasts the
    pairs; every rank trains on its share of whole pairs."""

    config_type = DPOPhaseConfig
    uses_rewards = True

    def __init__(self, cfg: DPOPhaseConfig, *, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx = cfg, ctx
        self._init_rollouts(cfg, task, n_train, pool)

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.group_size

    def _score(self, prompts: list[Prompt], groups: list) -> torch.Tensor:
        """(B, G) rewards, ahead of the step when prefetched."""
        return self.ctx.reward_fn(prompts, [[s.text for s in g] for g in groups])

    def _rollout(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float]]:
        """Rank 0: the step's pairs and the rollout's metrics."""
        got = self.rollouts.get(step, version)
        lag = check_lag(got.groups, version, self.cfg.max_lag)
        rewards = got.scored
        if self.ctx.rollout_log is not None:
            self.ctx.rollout_log(step, got.prompts, got.groups, rewards)
        batch = preference_pairs(got.groups, rewards)
        scored = ~rewards.isnan()
        metrics = {
            "reward_mean": float(rewards[scored].mean()) if scored.any() else math.nan,
            "pairs": batch.num_groups,
            "max_lag": lag,
            "rollout_s": got.rollout_s,
            "reward_s": got.score_s,
            **rollout_rate(got),
        }
        return batch, metrics

    def _parts(self, mine: TrainBatch) -> list[TrainBatch]:
        """This rank's pairs in micro-batches, both sides of a pair in one."""
        # the pair's prompt through the model once
        if self.ctx.share_prompts:
            return [mine.select(i, 2) for i in mine.group_micro_batches(self.ctx.micro_batch_tokens)]
        lengths = mine.lengths()
        pair_rows = [2 * max(lengths[2 * p], lengths[2 * p + 1]) for p in range(mine.num_groups)]
        return [mine.select([2 * p + s for p in part for s in (0, 1)], 2) for part in self.ctx.micro_batches(pair_rows)]

    def step(self, step: int, version: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.cfg
        batch, info = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        mine = batch.shard(ctx.rank, ctx.world, whole_groups=True)
        num_pairs = batch.num_groups

        def loss_of(part: TrainBatch):
            if ctx.share_prompts:
                packed = part.pack_groups(ctx.tokenizer.pad_token_id, ctx.device)
            else:
                packed = part.pack(ctx.tokenizer.pad_token_id, ctx.device)
            logp, mask = ctx.logprobs(ctx.model, packed)
            seq = torch.where(mask > 0, logp, torch.zeros_like(logp)).sum(-1)
            ref_logp = ctx.reference_logprobs(packed)
            ref = torch.where(mask > 0, ref_logp, torch.zeros_like(ref_logp)).sum(-1)
            return compute_dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=cfg.beta, num_pairs=num_pairs)

        sums = ctx.accumulate(self._parts(mine) if num_pairs else [], loss_of)
        keys = ("loss", *PAIR_SUMS)
        total = dict(zip(keys, ctx.global_sum(*(sums.get(k, 0.0) for k in keys))))
        metrics = {"loss": total["loss"]}
        # means over the whole batch's pairs (every rank's)
        if num_pairs:
            metrics.update({k: total[k] / num_pairs for k in PAIR_SUMS})
        metrics.update(info)
        return metrics
