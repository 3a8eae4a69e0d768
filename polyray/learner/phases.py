"""Training phases as stage functions: each step is generate -> score -> advantages -> update.

A phase object owns what a step needs (data; for sampling phases, its rollouts on rank 0)
and exposes ``step(step_index, version) -> (loss, metrics)``, where ``version`` is the
adapter version the learner holds, the one fresh samples are drawn under. The optimizer
step, DDP, publishing and checkpointing live in :mod:`polyray.learner.loop`; the math
lives in :mod:`polyray.objectives`.

Every rank sees the same step data: rank 0 draws it (for GRPO, rolls out and scores)
and broadcasts it; each rank then trains on its shard of sequences (shard ``rank::world``).
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

    def reference_batch(self, step: int) -> list[tuple[list[int], list[int]]]:
        """This rank's shard of the step's reference (prompt, completion) pairs; the same draw on every rank."""
        rng = random.Random(f"sft:{self.ctx.seed}:{step}")
        batch_idx = [rng.randrange(len(self.data)) for _ in range(self.cfg.batch_size)]
        return [self.data[i] for i in batch_idx[self.ctx.rank :: self.ctx.world]]

    def reference_tokens(self, refs) -> float:
        """Completion tokens of the whole step's references (every rank's shard)."""
        return self.ctx.global_sum(sum(len(c) for _, c in refs))[0]

    def step(self, step: int, version: int) -> tuple[torch.Tensor, dict[str, float]]:
        refs = self.reference_batch(step)
        batch = pack_sequences([r[0] for r in refs], [r[1] for r in refs], self.ctx.tokenizer.pad_token_id, self.ctx.device)
        logp, mask = token_logprobs(self.ctx.model, batch)
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

    Subclasses set ``rollout_tag`` (the prompt-draw stream) and ``samples_per_prompt``.
    """

    publishes_every_step = True
    uses_rewards = False
    rollout_tag = "sampling"
    reference_adapter_dir = staticmethod(SFTPhase.reference_adapter_dir)

    def _init_rollouts(self, cfg, task: Task, n_train: int, pool) -> None:
        self.pool, self.prompts = pool, task.prompts("train", n_train)
        self.sampling = task_sampling(cfg.sampling, task)
        self.rollouts = RolloutPrefetch(self._submit, cfg.async_rollouts, cfg.steps)

    samples_per_prompt: int  # each subclass provides it: completions drawn per prompt

    def _submit(self, step: int, version: int):
        """Draw the step's training prompts (same draw for a given seed and step) and start generating
        ``samples_per_prompt`` samples each under adapter ``version``; returns (prompts, pending).

        Each prompt's request has its own sampling seed from (run seed, phase, step, position), so
        a prompt drawn twice gets different samples, and a run with the same seed the same ones."""
        rng = random.Random(f"{self.rollout_tag}:{self.ctx.seed}:{step}")
        prompts = rng.sample(self.prompts, min(self.cfg.prompts_per_step, len(self.prompts)))
        seeds = request_seeds(self.ctx.seed, f"{self.rollout_tag}:{step}", [str(i) for i in range(len(prompts))])
        pending = self.pool.submit([p.text for p in prompts], self.samples_per_prompt, self.sampling, version, seeds=seeds)
        return prompts, pending


class PolychromicSFTPhase(SamplingPhase, SFTPhase):
    """NLL of the references minus lambda times the score-function diversity surrogate of fresh samples.

    Rank 0 samples ``n_samples`` completions for ``prompts_per_step`` training prompts under
    the adapter the learner holds, scores each set's diversity and computes per-sample
    marginals; every rank then trains on its share of references and sample groups in one
    forward pass. The samples' vLLM logprobs are pi_old for the (clipped) importance weight.
    """

    rollout_tag = "polychromic"

    def __init__(self, cfg: PolychromicSFTPhaseConfig, task: Task, n_train: int, ctx: StepContext, pool=None):
        SFTPhase.__init__(self, cfg, task, n_train, ctx, pool)
        self._init_rollouts(cfg, task, n_train, pool)

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.n_samples

    def _rollout(self, step: int, version: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        prompts, groups = self.rollouts.get(step, version)  # rollout_s: the generation time the step waits for
        t1 = time.perf_counter()
        lag = check_lag(groups, version, cfg.max_lag)
        adv = compute_diversity_advantages(cfg.diversity, [[s.text for s in g] for g in groups], cfg.estimator, cfg.subset_k)
        full = [[(s.prompt_token_ids, s.token_ids, sum(s.logprobs)) for s in g] for g in groups]
        return {"groups": full, "adv": adv.tolist(), "adv_abs_mean": float(adv.abs().mean()), "max_lag": lag,
                "rollout_s": t1 - t0, "diversity_s": time.perf_counter() - t1,
                "rollout_tokens_per_s": sum(len(s.token_ids) for g in groups for s in g) / max(t1 - t0, 1e-6)}

    def step(self, step: int, version: int) -> tuple[torch.Tensor, dict[str, float]]:
        ctx, cfg = self.ctx, self.cfg
        data = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        refs = self.reference_batch(step)
        groups = data["groups"][ctx.rank :: ctx.world]  # whole groups per rank: (B_r, n)
        samples = [s for g in groups for s in g]
        prompts = [r[0] for r in refs] + [s[0] for s in samples]
        completions = [r[1] for r in refs] + [s[1] for s in samples]
        batch = pack_sequences(prompts, completions, ctx.tokenizer.pad_token_id, ctx.device)
        logits = next_token_logits(ctx.model, batch)  # one forward for references and samples
        mask = batch.completion_mask[:, 1:]
        ref_logp = gather_logprobs(logits[: len(refs)], _rows(batch, 0, len(refs)))  # NLL at T = 1
        nll, _ = compute_sft_loss(ref_logp, mask[: len(refs)], num_tokens=self.reference_tokens(refs))
        n, temperature = cfg.n_samples, cfg.sampling.temperature
        logp = gather_logprobs(logits[len(refs) :], _rows(batch, len(refs), len(prompts)), temperature)
        sample_logp = torch.where(mask[len(refs) :] > 0, logp, torch.zeros_like(logp)).sum(-1).view(len(groups), n)
        old_logp = torch.tensor([[s[2] for s in g] for g in groups], dtype=logp.dtype, device=ctx.device).view(len(groups), n)
        adv = torch.tensor(data["adv"], dtype=logp.dtype, device=ctx.device)[ctx.rank :: ctx.world]
        shard, metrics = compute_polychromic_sft_loss(
            nll, sample_logp, adv, cfg.lam, old_logp, cfg.ratio_clip, num_groups=len(data["groups"])
        )
        loss, metrics["loss"] = ctx.for_backward(shard)
        # nll and the surrogate are normalised by whole-batch counts: their sums over ranks are the batch's
        metrics["nll"], metrics["diversity_surrogate"] = ctx.global_sum(metrics["nll"], metrics["diversity_surrogate"])
        metrics.update({k: v for k, v in data.items() if k not in ("groups", "adv")})
        return loss, metrics


class GRPOPhase(SamplingPhase):
    """Group-relative policy optimisation on fresh rollouts from the pool (lag 0 by default)."""

    uses_rewards = True
    rollout_tag = "grpo"

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

    def _rollout(self, step: int, version: int) -> dict[str, Any]:
        """Rank 0: sample prompts, generate G each under adapter ``version``, score, compute advantages."""
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
        seqs = [
            (s.prompt_token_ids, s.token_ids, s.logprobs, float(adv[b, g]))
            for b, group in enumerate(groups)
            if keep[b]
            for g, s in enumerate(group)
        ]
        return {
            "seqs": seqs,
            "reward_mean": float(rewards.mean()),
            "solved_frac": float((rewards.max(dim=1).values > 0).double().mean()),
            "completion_len": sum(len(s[1]) for s in seqs) / len(seqs),
            "max_lag": lag,
            "kept_groups": int(keep.sum()),
            "rollout_s": rollout_s,
            "rollout_tokens_per_s": sum(len(s.token_ids) for g in groups for s in g) / max(rollout_s, 1e-6),
        }

    def step(self, step: int, version: int) -> tuple[torch.Tensor, dict[str, float]]:
        ctx, cfg = self.ctx, self.cfg
        data = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        mine = data["seqs"][ctx.rank :: ctx.world]
        n_seq, n_tok = ctx.global_sum(len(mine), sum(len(s[1]) for s in mine))
        info = {k: v for k, v in data.items() if k != "seqs"}
        if not mine:  # fewer kept sequences than ranks: this rank has nothing to train on
            # same collectives, in the same order, as the other ranks: DDP forward, then the loss sum
            zero = ctx.zero_loss()
            _, loss_value = ctx.for_backward(zero)
            return zero, {"loss": loss_value, **info}
        batch = pack_sequences([s[0] for s in mine], [s[1] for s in mine], ctx.tokenizer.pad_token_id, ctx.device)
        temperature = cfg.sampling.temperature
        logp, mask = token_logprobs(ctx.model, batch, temperature)
        old_logp = torch.zeros(logp.shape, dtype=logp.dtype)
        for i, (p_ids, c_ids, c_logp, _) in enumerate(mine):
            start = len(p_ids) - 1  # target index of the first completion token
            old_logp[i, start : start + len(c_ids)] = torch.tensor(c_logp, dtype=old_logp.dtype)
        old_logp = old_logp.to(ctx.device)
        ref_logp = self.reference_logprobs(batch, temperature) if cfg.kl_beta else None
        advantages = torch.tensor([s[3] for s in mine], dtype=logp.dtype, device=ctx.device)
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


def _rows(batch, start: int, end: int):
    """The rows [start, end) of a packed batch."""
    return type(batch)(batch.input_ids[start:end], batch.attention_mask[start:end], batch.completion_mask[start:end])


PHASES = {"sft": SFTPhase, "polychromic_sft": PolychromicSFTPhase, "grpo": GRPOPhase}
