"""Polychromic SFT: the references' NLL minus lambda times the diversity surrogate of fresh samples
(``compute_polychromic_sft_loss``; docs/algorithms.md §1)."""

from __future__ import annotations

import torch

from polyray.config import PolychromicSFTPhaseConfig
from polyray.learner.batch import Sequences, TrainBatch
from polyray.learner.phases.context import StepContext, broadcast_from_rank0
from polyray.learner.phases.sampling import SamplingPhase, check_lag
from polyray.learner.phases.sft import SFTPhase
from polyray.models.batching import pack_sequences
from polyray.objectives.polychromic import compute_diversity_advantages, compute_polychromic_sft_loss
from polyray.objectives.sft import compute_sft_loss
from polyray.rollout.diversity_scorer import embedding_dtype_of, start_diversity_scorer
from polyray.rollout.prefetch import rollout_rate
from polyray.tasks.base import Prompt, Task


class PolychromicSFTPhase(SamplingPhase, SFTPhase):
    """NLL of the references minus lambda times the score-function diversity surrogate of fresh samples.

    Rank 0 samples ``n_samples`` completions for ``prompts_per_step`` training prompts under
    the adapter the learner holds, scores each set's diversity and computes per-sample
    marginals; every rank then trains on its share of references and sample groups in one
    forward pass. The samples' vLLM logprobs are pi_old for the (clipped) importance weight.
    """

    config_type = PolychromicSFTPhaseConfig

    def __init__(self, cfg: PolychromicSFTPhaseConfig, *, task: Task, n_train: int, ctx: StepContext, pool=None):
        SFTPhase.__init__(self, cfg, task=task, n_train=n_train, ctx=ctx)
        self._init_rollouts(cfg, task, n_train, pool)
        # rank 0 alone scores the samples
        self.embedding_dtype = self.scorer = None
        if ctx.rank == 0:
            # "auto" resolved where rank 0 runs
            self.embedding_dtype = embedding_dtype_of(cfg)
            self.scorer = start_diversity_scorer(cfg, torch.get_num_threads(), self.embedding_dtype)

    @property
    def rollout_draw(self) -> str:
        # its reference batches are drawn under the bare name
        return f"{self.cfg.name}/samples"

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.n_samples

    def _score(self, prompts: list[Prompt], groups: list) -> torch.Tensor:
        """The samples' diversity advantages: in the scorer's process when there is one, else here."""
        cfg, texts = self.cfg, [[s.text for s in g] for g in groups]
        if self.scorer is not None:
            import ray

            return ray.get(
                self.scorer.advantages.remote(
                    cfg.diversity, texts, cfg.estimator, k=cfg.subset_k, embedding_dtype=self.embedding_dtype
                )
            )
        return compute_diversity_advantages(
            cfg.diversity, texts, cfg.estimator, k=cfg.subset_k, embedding_dtype=self.embedding_dtype
        )

    def _rollout(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float]]:
        """Rank 0: the step's (B, n) samples with their diversity marginals, and the rollout's metrics."""
        # rollout_s / diversity_s: what the step waited for
        got = self.rollouts.get(step, version)
        lag = check_lag(got.groups, version, self.cfg.max_lag)
        adv = got.scored
        return TrainBatch.from_groups(got.groups, adv), {
            "adv_abs_mean": float(adv.abs().mean()),
            "max_lag": lag,
            "rollout_s": got.rollout_s,
            "diversity_s": got.score_s,
            **rollout_rate(got),
        }

    def step(self, step: int, version: int) -> dict[str, float]:
        """References and samples share micro-batches (one forward each: references at T = 1, samples
        at the sampling temperature); the NLL divides by the whole step's reference tokens and the
        surrogate by its number of groups, so micro-batch shares add up to the batch's loss."""
        ctx, cfg = self.ctx, self.cfg
        batch, info = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        refs = self.reference_batch(step)
        mine = batch.shard(ctx.rank, ctx.world, whole_groups=True)
        num_tokens = self.reference_tokens(refs)
        parts = [
            (
                refs.select([i for i in part if i < len(refs)]),
                mine.select([i - len(refs) for i in part if i >= len(refs)]),
            )
            for part in ctx.micro_batches(refs.lengths() + mine.lengths())
        ]

        def loss_of(part: tuple[Sequences, TrainBatch]):
            part_refs, samples = part
            packed = pack_sequences(
                part_refs.prompt_ids + samples.prompt_ids,
                part_refs.completion_ids + samples.completion_ids,
                ctx.tokenizer.pad_token_id,
                ctx.device,
            )
            n_refs = len(part_refs)
            temperature = torch.tensor([1.0] * n_refs + [cfg.sampling.temperature] * len(samples))
            logp, mask = ctx.logprobs(ctx.model, packed, temperature if len(samples) else 1.0)
            nll = compute_sft_loss(logp[:n_refs], mask[:n_refs], num_tokens=num_tokens)[0] if n_refs else None
            sample_logp = old_logp = advantages = None
            if len(samples):
                # a multi-turn episode's log-prob: its model turns' tokens only
                sample_mask = samples.masked(mask[n_refs:], targets=True)
                sample_logp = torch.where(sample_mask > 0, logp[n_refs:], torch.zeros_like(logp[n_refs:])).sum(-1)
                old_logp = torch.tensor(samples.sequence_logprobs(), dtype=logp.dtype, device=ctx.device)
                advantages = samples.advantages.to(ctx.device)
            loss, metrics = compute_polychromic_sft_loss(
                nll,
                sample_logp,
                advantages,
                lam=cfg.lam,
                old_logp=old_logp,
                ratio_clip=cfg.ratio_clip,
                num_groups=batch.num_groups,
            )
            sums = {k: metrics[k] for k in ("nll", "diversity_surrogate", "weight_sum", "adv_sum") if k in metrics}
            if len(samples):
                sums["samples"] = len(samples)
            return loss, sums

        sums = ctx.accumulate(parts, loss_of)
        keys = ("loss", "nll", "diversity_surrogate", "weight_sum", "adv_sum", "samples")
        total = dict(zip(keys, ctx.global_sum(*(sums.get(k, 0.0) for k in keys))))
        metrics = {k: total[k] for k in ("loss", "nll", "diversity_surrogate")}
        # means over the whole batch's samples (every rank's)
        if total["samples"]:
            metrics.update(
                adv_mean=total["adv_sum"] / total["samples"], weight_mean=total["weight_sum"] / total["samples"]
            )
        metrics.update(info)
        return metrics
