"""Training phases as stage functions: each step is generate -> score -> advantages -> update.

A phase object owns what a step needs (data; for sampling phases, its rollouts on rank 0)
and exposes ``step(step_index, version) -> (loss, metrics)``, where ``version`` is the
adapter version the learner holds, the one fresh samples are drawn under. The optimizer
step, DDP, publishing and checkpointing live in :mod:`polyray.learner.loop`; the math
lives in :mod:`polyray.objectives`.

Every rank sees the same step data: rank 0 draws it (for GRPO, rolls out and scores)
and broadcasts it as a :class:`~polyray.learner.batch.TrainBatch`; each rank then trains on
its shard of sequences (shard ``rank::world``).
Each shard's loss is normalised by the *whole* batch's counts (tokens, sequences, groups)
and multiplied by the world size, so after DDP averages the gradients the step equals the
one-rank full-batch step, whatever the number of learner workers or an uneven split
(docs/algorithms.md §2). A rank whose shard is empty contributes a zero loss that still
touches every parameter, so DDP's all-reduce matches across ranks. Every tensor a phase
builds is created on the model's device.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from polyray.config import GRPOPhaseConfig, PolychromicSFTPhaseConfig, SFTPhaseConfig
from polyray.learner.batch import Sequences, TrainBatch
from polyray.models.batching import gather_logprobs, next_token_logits, pack_sequences, token_logprobs
from polyray.objectives.advantages import AdvantageInputs, compute_advantages, dynamic_sampling_mask
from polyray.objectives.grpo import compute_grpo_loss
from polyray.objectives.polychromic import (
    compute_loo_advantages,
    compute_polychromic_sft_loss,
    compute_subset_advantage_scale,
    compute_subset_marginals,
    enumerate_subsets,
)
from polyray.objectives.sft import compute_sft_loss
from polyray.rollout.sampling import request_seeds, task_sampling
from polyray.tasks.base import Prompt, Task


@dataclass
class StepContext:
    model: Any  # DDP-wrapped peft model
    tokenizer: Any
    rank: int
    world: int
    seed: int
    reward_fn: Any = None  # (prompts, (B, G) texts) -> (B, G) rewards; rank 0 only (it scores rollouts)
    reference_adapter: str | None = None  # peft adapter name of the frozen KL reference (None: adapter disabled)
    rollout_log: Any = None  # RolloutLog: rank 0 writes every scored rollout (learner.log_rollouts)

    @property
    def peft_model(self):
        return getattr(self.model, "module", self.model)

    @property
    def device(self) -> torch.device:
        return next(self.peft_model.parameters()).device

    def global_sum(self, *values: float) -> list[float]:
        """Sum of each value over the learner ranks (the whole batch's counts)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def for_backward(self, shard_loss: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(loss to differentiate, the whole batch's loss for logging) from a shard's share of the batch loss.

        DDP averages gradients over ranks, so the shard loss is multiplied by the world size.
        """
        return shard_loss * self.world, self.global_sum(float(shard_loss.detach()))[0]

    def zero_loss(self) -> torch.Tensor:
        """A loss of 0 through the DDP forward (a rank with nothing to train on still joins the all-reduce)."""
        token = torch.full((1, 1), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        return self.model(input_ids=token).logits.float().sum() * 0.0


@dataclass
class RolloutLog:
    """Appends each scored rollout to ``path`` (JSONL): the reward's item as sent, and the reward the
    learner used, so anyone can score the same items again and compare."""

    path: Path
    phase: str
    task: Task

    def __call__(self, step: int, version: int, prompts: list[Prompt], texts: list[list[str]], rewards) -> None:
        from polyray.io import append_jsonl

        for b, (prompt, group) in enumerate(zip(prompts, texts)):
            for g, text in enumerate(group):
                append_jsonl(self.path, {"phase": self.phase, "step": step + 1, "version": version,
                                         "item": self.task.reward_item(prompt, text), "reward": float(rewards[b, g])})


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
    uses_rewards = False  # whether rank 0 needs ctx.reward_fn

    @staticmethod
    def reference_adapter_dir(cfg, init_adapter: str | None) -> str | None:
        """The adapter to load as the frozen KL reference (None: this phase has no KL term)."""
        return None

    def __init__(self, cfg: SFTPhaseConfig, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx = cfg, ctx
        self.data = encode_references(task.prompts("train", n_train), ctx.tokenizer)

    def reference_batch(self, step: int) -> Sequences:
        """This rank's shard of the step's references; the same draw on every rank. The draw is keyed
        by the phase's name, so two phases of one run never replay each other's batches."""
        rng = random.Random(f"{self.cfg.name}:{self.ctx.seed}:{step}")
        batch_idx = [rng.randrange(len(self.data)) for _ in range(self.cfg.batch_size)]
        pairs = [self.data[i] for i in batch_idx[self.ctx.rank :: self.ctx.world]]
        return Sequences([prompt for prompt, _ in pairs], [completion for _, completion in pairs])

    def reference_tokens(self, refs: Sequences) -> float:
        """Completion tokens of the whole step's references (every rank's shard)."""
        return self.ctx.global_sum(refs.num_tokens())[0]

    def step(self, step: int, version: int) -> tuple[torch.Tensor, dict[str, float]]:
        refs = self.reference_batch(step)
        logp, mask = token_logprobs(self.ctx.model, refs.pack(self.ctx.tokenizer.pad_token_id, self.ctx.device))
        shard, metrics = compute_sft_loss(logp, mask, num_tokens=self.reference_tokens(refs))
        loss, metrics["loss"] = self.ctx.for_backward(shard)
        metrics["nll"] = metrics["loss"]
        return loss, metrics


def compute_diversity_advantages(name: str, groups: list[list[str]], estimator: str, k: int) -> torch.Tensor:
    """(B, n) per-sample diversity marginals of each group (docs/algorithms.md §1): leave-one-out or k-subset.

    All the sets of all groups go through one ``compute_diversity_batch`` call, so an
    embedding-based diversity embeds every text once.
    """
    from polyray.diversity import compute_diversity_batch

    n = len(groups[0])
    if estimator == "loo":
        subsets = [tuple(range(n))] + [tuple(j for j in range(n) if j != i) for i in range(n)]
    else:
        subsets = enumerate_subsets(n, k)
    values = compute_diversity_batch(name, [[g[i] for i in s] for g in groups for s in subsets])
    table = torch.tensor(values, dtype=torch.float64).view(len(groups), len(subsets))  # (B, S)
    if estimator == "loo":
        return compute_loo_advantages(table[:, 0], table[:, 1:])
    return compute_subset_advantage_scale(n, k) * compute_subset_marginals(table, n, subsets)


class RolloutPrefetch:
    """Rank 0's rollouts, step by step. ``submit(step, version)`` starts a step's generation under
    adapter ``version`` and returns (prompts, pending).

    Synchronous (``ahead=False``): submit and wait at the step itself (samples lag 0).
    Ahead: step t+1 is submitted when step t starts, so its generation overlaps step t's
    update and its samples are one version stale (lag 1; importance ratios correct for it).
    """

    def __init__(self, submit, ahead: bool, steps: int):
        self.submit, self.ahead, self.steps = submit, ahead, steps
        self.pending: dict[int, tuple[list[Prompt], Any]] = {}

    def get(self, step: int, version: int) -> tuple[list[Prompt], list]:
        prompts, pending = self.pending.pop(step, None) or self.submit(step, version)
        if self.ahead and step + 1 < self.steps:
            self.pending[step + 1] = self.submit(step + 1, version)
        return prompts, pending.result()


def check_lag(groups, version: int, max_lag: int) -> int:
    """The largest version lag of the samples; error past ``max_lag``."""
    lag = max(version - s.version for g in groups for s in g)
    if lag > max_lag:
        raise RuntimeError(f"rollout samples lag {lag} versions behind the learner (max_lag={max_lag})")
    return lag


class SamplingPhase:
    """Base of the phases that sample from the pool: owns the training prompts and rank 0's rollouts.

    Subclasses set ``samples_per_prompt``. Prompt draws and request seeds are keyed by the phase's
    name (unique in a run), so two phases of one type draw different prompts and samples.
    """

    publishes_every_step = True
    uses_rewards = False
    reference_adapter_dir = staticmethod(SFTPhase.reference_adapter_dir)

    def _init_rollouts(self, cfg, task: Task, n_train: int, pool) -> None:
        self.pool, self.prompts = pool, task.prompts("train", n_train)
        self.sampling = task_sampling(cfg.sampling, task)
        self.rollouts = RolloutPrefetch(self._submit, cfg.async_rollouts, cfg.steps)

    samples_per_prompt: int  # each subclass provides it: completions drawn per prompt

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
        pending = self.pool.submit([p.text for p in prompts], self.samples_per_prompt, self.sampling, version, seeds=seeds)
        return prompts, pending


class PolychromicSFTPhase(SamplingPhase, SFTPhase):
    """NLL of the references minus lambda times the score-function diversity surrogate of fresh samples.

    Rank 0 samples ``n_samples`` completions for ``prompts_per_step`` training prompts under
    the adapter the learner holds, scores each set's diversity and computes per-sample
    marginals; every rank then trains on its share of references and sample groups in one
    forward pass. The samples' vLLM logprobs are pi_old for the (clipped) importance weight.
    """

    def __init__(self, cfg: PolychromicSFTPhaseConfig, task: Task, n_train: int, ctx: StepContext, pool=None):
        SFTPhase.__init__(self, cfg, task, n_train, ctx, pool)
        self._init_rollouts(cfg, task, n_train, pool)

    @property
    def rollout_draw(self) -> str:
        return f"{self.cfg.name}/samples"  # its reference batches are drawn under the bare name

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.n_samples

    def _rollout(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float]]:
        """Rank 0: the step's (B, n) samples with their diversity marginals, and the rollout's metrics."""
        cfg = self.cfg
        t0 = time.perf_counter()
        prompts, groups = self.rollouts.get(step, version)  # rollout_s: the generation time the step waits for
        t1 = time.perf_counter()
        lag = check_lag(groups, version, cfg.max_lag)
        adv = compute_diversity_advantages(cfg.diversity, [[s.text for s in g] for g in groups], cfg.estimator, cfg.subset_k)
        return TrainBatch.from_groups(groups, adv), {
            "adv_abs_mean": float(adv.abs().mean()), "max_lag": lag,
            "rollout_s": t1 - t0, "diversity_s": time.perf_counter() - t1,
            "rollout_tokens_per_s": sum(len(s.token_ids) for g in groups for s in g) / max(t1 - t0, 1e-6),
        }  # fmt: skip

    def step(self, step: int, version: int) -> tuple[torch.Tensor, dict[str, float]]:
        ctx, cfg = self.ctx, self.cfg
        batch, info = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        refs = self.reference_batch(step)
        mine = batch.shard(ctx.rank, ctx.world, whole_groups=True)  # (B_r, n): a group's marginals are relative
        packed = pack_sequences(refs.prompt_ids + mine.prompt_ids, refs.completion_ids + mine.completion_ids,
                                ctx.tokenizer.pad_token_id, ctx.device)
        logits = next_token_logits(ctx.model, packed)  # one forward for references and samples
        mask = packed.completion_mask[:, 1:]
        ref_logp = gather_logprobs(logits[: len(refs)], packed.rows(0, len(refs)))  # NLL at T = 1
        nll, _ = compute_sft_loss(ref_logp, mask[: len(refs)], num_tokens=self.reference_tokens(refs))
        shape, temperature = (mine.num_groups, mine.group_size), cfg.sampling.temperature
        logp = gather_logprobs(logits[len(refs) :], packed.rows(len(refs), len(refs) + len(mine)), temperature)
        sample_logp = torch.where(mask[len(refs) :] > 0, logp, torch.zeros_like(logp)).sum(-1).view(shape)
        old_logp = torch.tensor(mine.sequence_logprobs(), dtype=logp.dtype, device=ctx.device).view(shape)
        adv = mine.advantages.to(dtype=logp.dtype, device=ctx.device).view(shape)
        shard, metrics = compute_polychromic_sft_loss(
            nll, sample_logp, adv, cfg.lam, old_logp, cfg.ratio_clip, num_groups=batch.num_groups
        )
        loss, metrics["loss"] = ctx.for_backward(shard)
        # nll and the surrogate are normalised by whole-batch counts: their sums over ranks are the batch's
        metrics["nll"], metrics["diversity_surrogate"] = ctx.global_sum(metrics["nll"], metrics["diversity_surrogate"])
        metrics.update(info)
        return loss, metrics


class GRPOPhase(SamplingPhase):
    """Group-relative policy optimisation on fresh rollouts from the pool (lag 0 by default)."""

    uses_rewards = True

    @staticmethod
    def reference_adapter_dir(cfg: GRPOPhaseConfig, init_adapter: str | None) -> str | None:
        """``phase_start``: the incoming adapter. A phase that starts from a fresh LoRA (B = 0) starts
        at the base model, so the adapter-disabled base *is* its phase-start policy."""
        if cfg.kl_beta and cfg.kl_reference == "phase_start" and init_adapter:
            return init_adapter
        return None

    def __init__(self, cfg: GRPOPhaseConfig, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx, self.task = cfg, ctx, task
        self._init_rollouts(cfg, task, n_train, pool)

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.group_size

    def _rollout(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float]]:
        """Rank 0: sample prompts, generate G each under adapter ``version``, score, compute advantages;
        returns the kept groups' batch and the rollout's metrics."""
        t0 = time.perf_counter()
        prompts, groups = self.rollouts.get(step, version)
        rollout_s = time.perf_counter() - t0
        lag = check_lag(groups, version, self.cfg.max_lag)
        texts = [[s.text for s in g] for g in groups]
        rewards = self.ctx.reward_fn(prompts, texts)  # (B, G): reward service handle or in-process scorer
        if self.ctx.rollout_log is not None:
            self.ctx.rollout_log(step, version, prompts, texts, rewards)
        logprobs = [[s.logprobs for s in g] for g in groups]
        inputs = AdvantageInputs(rewards, texts, logprobs, progress=step / self.cfg.steps, step=step)
        adv = compute_advantages(self.cfg.advantage, inputs)
        keep = dynamic_sampling_mask(adv) if self.cfg.dynamic_sampling else torch.ones(len(groups), dtype=torch.bool)
        if not keep.any():  # no group carries an advantage: nothing to learn from but the KL term; keep them all
            keep[:] = True
        batch = TrainBatch.from_groups(groups, adv, keep)
        return batch, {
            "reward_mean": float(rewards.mean()),
            "solved_frac": float((rewards.max(dim=1).values > 0).double().mean()),
            "completion_len": batch.num_tokens() / len(batch),
            "max_lag": lag,
            "kept_groups": int(keep.sum()),
            "rollout_s": rollout_s,
            "rollout_tokens_per_s": sum(len(s.token_ids) for g in groups for s in g) / max(rollout_s, 1e-6),
        }

    def step(self, step: int, version: int) -> tuple[torch.Tensor, dict[str, float]]:
        ctx, cfg = self.ctx, self.cfg
        batch, info = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        mine = batch.shard(ctx.rank, ctx.world)
        n_seq, n_tok = ctx.global_sum(len(mine), mine.num_tokens())
        if not len(mine):  # fewer kept sequences than ranks: this rank has nothing to train on
            # same collectives, in the same order, as the other ranks: DDP forward, then the loss sum
            zero = ctx.zero_loss()
            _, loss_value = ctx.for_backward(zero)
            return zero, {"loss": loss_value, **info}
        packed = mine.pack(ctx.tokenizer.pad_token_id, ctx.device)
        temperature = cfg.sampling.temperature
        logp, mask = token_logprobs(ctx.model, packed, temperature)
        old_logp = mine.target_logprobs(logp.shape[1], logp.dtype).to(ctx.device)
        ref_logp = self.reference_logprobs(packed, temperature) if cfg.kl_beta else None
        advantages = mine.advantages.to(dtype=logp.dtype, device=ctx.device)
        shard, metrics = compute_grpo_loss(
            logp, old_logp, ref_logp, advantages, mask,
            clip_eps_low=cfg.clip_eps_low, clip_eps_high=cfg.clip_eps_high, kl_beta=cfg.kl_beta,
            aggregation=cfg.aggregation, max_len=cfg.sampling.max_tokens, num_sequences=n_seq, num_tokens=n_tok,
        )  # fmt: skip
        loss, metrics["loss"] = ctx.for_backward(shard)
        metrics.update(info)
        return loss, metrics

    def reference_logprobs(self, batch, temperature: float) -> torch.Tensor:
        """log pi_ref of the batch's tokens, no grad: the frozen phase-start adapter, or the adapter-disabled base."""
        peft = self.ctx.peft_model
        with torch.no_grad():
            if self.ctx.reference_adapter is None:
                with peft.disable_adapter():
                    return token_logprobs(peft, batch, temperature)[0]
            peft.set_adapter(self.ctx.reference_adapter, inference_mode=True)
            try:
                return token_logprobs(peft, batch, temperature)[0]
            finally:
                peft.set_adapter("default")  # also makes the policy adapter trainable again


PHASES = {"sft": SFTPhase, "polychromic_sft": PolychromicSFTPhase, "grpo": GRPOPhase}
