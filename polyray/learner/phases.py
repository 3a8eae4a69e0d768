"""Training phases as stage functions: each step is generate -> score -> advantages -> update.

A phase object owns what a step needs (data, the pool handle on rank 0) and exposes
``step(step_index) -> metrics``. The optimizer step, DDP and checkpointing live in
:mod:`polyray.learner.loop`; the math lives in :mod:`polyray.objectives`.

Every rank sees the same step data: rank 0 draws it (for GRPO, rolls out and scores)
and broadcasts it; each rank then trains on its shard of sequences (shard ``rank::world``)
and DDP averages the gradients.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from polyray.config import GRPOPhaseConfig, SFTPhaseConfig
from polyray.learner.batching import pack_sequences, token_logprobs
from polyray.objectives.grpo import compute_grpo_loss, compute_group_advantages
from polyray.objectives.sft import compute_sft_loss
from polyray.tasks.base import Prompt, Task


@dataclass
class StepContext:
    model: Any  # DDP-wrapped peft model
    tokenizer: Any
    rank: int
    world: int
    seed: int

    @property
    def peft_model(self):
        return getattr(self.model, "module", self.model)


def broadcast_from_rank0(obj: Any, ctx: StepContext) -> Any:
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def encode_references(prompts: list[Prompt], tokenizer) -> list[tuple[list[int], list[int]]]:
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [(enc(p.text), enc(p.reference) + [tokenizer.eos_token_id]) for p in prompts]


class SFTPhase:
    """NLL of the canonical references; publishes its adapter only at the end (nothing samples mid-phase)."""

    publishes_every_step = False

    def __init__(self, cfg: SFTPhaseConfig, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx = cfg, ctx
        self.data = encode_references(task.prompts("train", n_train), ctx.tokenizer)

    def step(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rng = random.Random(f"sft:{self.ctx.seed}:{step}")  # same draw on every rank
        batch_idx = [rng.randrange(len(self.data)) for _ in range(self.cfg.batch_size)]
        mine = batch_idx[self.ctx.rank :: self.ctx.world]
        batch = pack_sequences([self.data[i][0] for i in mine], [self.data[i][1] for i in mine], self.ctx.tokenizer.pad_token_id)
        logp, mask = token_logprobs(self.ctx.model, batch)
        return compute_sft_loss(logp, mask)


def score_groups(task: Task, prompts: list[Prompt], groups) -> torch.Tensor:
    """(B, G) rewards from the task's judge."""
    return torch.tensor(
        [[task.judge(p, s.text).reward for s in group] for p, group in zip(prompts, groups)], dtype=torch.float64
    )


class GRPOPhase:
    """Group-relative policy optimisation on fresh rollouts from the pool (lag 0 by default)."""

    publishes_every_step = True

    def __init__(self, cfg: GRPOPhaseConfig, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx, self.task, self.pool = cfg, ctx, task, pool
        self.prompts = task.prompts("train", n_train)
        self.version = 0  # set by the loop: the adapter version the learner currently holds

    def _rollout(self, step: int) -> dict[str, Any]:
        """Rank 0: sample prompts, generate G each under the current adapter, score, compute advantages."""
        rng = random.Random(f"grpo:{self.ctx.seed}:{step}")
        prompts = rng.sample(self.prompts, min(self.cfg.prompts_per_step, len(self.prompts)))
        groups = self.pool.generate([p.text for p in prompts], self.cfg.group_size, self.cfg.sampling, version=self.version)
        lags = [self.version - s.version for g in groups for s in g]
        if max(lags) > self.cfg.max_lag:
            raise RuntimeError(f"rollout samples lag {max(lags)} versions behind the learner (max_lag={self.cfg.max_lag})")
        rewards = score_groups(self.task, prompts, groups)
        adv = compute_group_advantages(rewards, scale_by_std=self.cfg.scale_by_std)
        seqs = [
            (s.prompt_token_ids, s.token_ids, s.logprobs, float(adv[b, g]))
            for b, group in enumerate(groups)
            for g, s in enumerate(group)
        ]
        return {
            "seqs": seqs,
            "reward_mean": float(rewards.mean()),
            "solved_frac": float((rewards.max(dim=1).values > 0).double().mean()),
            "completion_len": sum(len(s[1]) for s in seqs) / len(seqs),
            "max_lag": max(lags),
        }

    def step(self, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        data = broadcast_from_rank0(self._rollout(step) if self.ctx.rank == 0 else None, self.ctx)
        mine = data["seqs"][self.ctx.rank :: self.ctx.world]
        batch = pack_sequences([s[0] for s in mine], [s[1] for s in mine], self.ctx.tokenizer.pad_token_id)
        logp, mask = token_logprobs(self.ctx.model, batch)
        old_logp = torch.zeros_like(logp)
        for i, (p_ids, c_ids, c_logp, _) in enumerate(mine):
            start = len(p_ids) - 1  # target index of the first completion token
            old_logp[i, start : start + len(c_ids)] = torch.tensor(c_logp, dtype=old_logp.dtype)
        ref_logp = None
        if self.cfg.kl_beta:
            with torch.no_grad(), self.ctx.peft_model.disable_adapter():
                ref_logp, _ = token_logprobs(self.ctx.peft_model, batch)
        advantages = torch.tensor([s[3] for s in mine], dtype=logp.dtype)
        loss, metrics = compute_grpo_loss(
            logp,
            old_logp,
            ref_logp,
            advantages,
            mask,
            clip_eps_low=self.cfg.clip_eps_low,
            clip_eps_high=self.cfg.clip_eps_high,
            kl_beta=self.cfg.kl_beta,
        )
        metrics.update({k: v for k, v in data.items() if k != "seqs"})
        return loss, metrics


PHASES = {"sft": SFTPhase, "grpo": GRPOPhase}
