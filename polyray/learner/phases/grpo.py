"""GRPO: the clipped policy-ratio loss with a k3 KL to a reference (``compute_grpo_loss``; docs/algorithms.md §2-3),
on groups of fresh rollouts scored by the reward; with ``rehearsal``, plus γ × the NLL of the incoming
policy's buffered correct samples (:mod:`.rehearsal`)."""

from __future__ import annotations

import math
import random
from contextlib import contextmanager

import torch

from polyray.config import GRPOPhaseConfig
from polyray.learner.batch import Sequences, TrainBatch
from polyray.learner.phases.context import StepContext, broadcast_from_rank0
from polyray.learner.phases.rehearsal import SampleBuffer, nll_parts, phase_buffer
from polyray.learner.phases.sampling import SamplingPhase, check_lag
from polyray.objectives.advantages import (
    AdvantageInputs,
    compute_advantages,
    dynamic_sampling_mask,
    mix_magnitude_shares,
)
from polyray.objectives.grpo import compute_grpo_loss
from polyray.objectives.off_policy import compute_is_weights, mismatch_sums
from polyray.rollout.prefetch import rollout_rate
from polyray.tasks.base import Prompt, Task


# GRPO metrics averaged over completion tokens
TOKEN_MEANS = ("kl", "clip_frac", "ratio_mean")
# the engine's disagreement with the learner, averaged over the tokens the learner's own old log-probs cover
MISMATCH_MEANS = ("mismatch_k3", "mismatch_abs", "mismatch_out_frac", "is_weight_mean")


class GRPOPhase(SamplingPhase):
    """Group-relative policy optimisation on fresh rollouts from the pool (lag 0 by default)."""

    config_type = GRPOPhaseConfig
    uses_rewards = True

    def __init__(self, cfg: GRPOPhaseConfig, *, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx, self.task = cfg, ctx, task
        self._init_rollouts(cfg, task, n_train, pool)
        if cfg.kl_beta and cfg.kl_reference_logprobs == "rollouts" and ctx.rank == 0 and pool is not None:
            self.rollout_reference = self.reference_on_rollouts(pool)
        # rank 0's: only it draws each step's rehearsal batch
        self.buffer: SampleBuffer | None = None
        if cfg.rehearsal is not None and ctx.rank == 0:
            self.buffer = phase_buffer(self, cfg.rehearsal, task=task, n_train=n_train, pool=pool)
        # version -> the LoRA weights it was: the learner's pi_old of samples drawn before the last update
        self._weights_at: dict[int, dict[str, torch.Tensor]] = {}

    def reference_on_rollouts(self, pool) -> str:
        """Register the KL reference on the rollout workers (the base model needs none); returns what a
        request names it by. The workers then score each sample under it right after drawing it."""
        from polyray.rollout.worker import BASE_MODEL

        if self.ctx.reference_adapter is None:
            return BASE_MODEL
        name = f"{self.cfg.name}/kl-reference"
        pool.add_named_adapter(name, self.ctx.reference_source)
        return name

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.group_size

    def _score(self, prompts: list[Prompt], groups: list) -> torch.Tensor:
        """(B, G) rewards: through the reward service's handle or the in-process scorer, ahead of the step when
        prefetched; a multi-turn episode's are its environment's (NaN where the episode failed)."""
        if self.ctx.env is not None:
            return torch.tensor([[math.nan if s.reward is None else s.reward for s in g] for g in groups])
        return self.ctx.reward_fn(prompts, [[s.text for s in g] for g in groups])

    @property
    def _max_len(self) -> int:
        """The most tokens a sample's loss can cover (a constant normaliser's length): a multi-turn episode's
        model turns together."""
        env = self.ctx.env
        return self.cfg.sampling.max_tokens if env is None else env.max_turns * env.max_tokens

    def _rehearsal_batch(self, step: int, prompts: list[Prompt]) -> Sequences | None:
        """Rank 0: the step's buffered samples, one for each of its prompts the buffer holds first."""
        if self.buffer is None:
            return None
        rng = random.Random(f"{self.cfg.name}/rehearsal:{self.ctx.seed}:{step}")
        return self.buffer.draw([p.text for p in prompts], self.cfg.rehearsal_batch, rng)

    def _rollout(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float], Sequences | None]:
        """Rank 0: sample prompts, generate G each under adapter ``version``, score, compute advantages;
        returns the kept groups' batch, the rollout's metrics and the step's rehearsal batch."""
        got = self.rollouts.get(step, version)
        prompts, groups, rewards = got.prompts, got.groups, got.scored
        lag = check_lag(groups, version, self.cfg.max_lag)
        texts = [[s.text for s in g] for g in groups]
        if self.ctx.rollout_log is not None:
            self.ctx.rollout_log(step, prompts, groups, rewards)
        # a multi-turn episode's: its model tokens' (the observations carry no log-prob of the policy)
        logprobs = [[model_logprobs(s) for s in g] for g in groups]
        inputs = AdvantageInputs(rewards, texts, logprobs, progress=step / self.cfg.steps, step=step)
        adv = compute_advantages(self.cfg.advantage, inputs)
        keep = dynamic_sampling_mask(adv) if self.cfg.dynamic_sampling else torch.ones(len(groups), dtype=torch.bool)
        # no group carries an advantage: nothing to learn from but the KL term; keep them all
        if not keep.any():
            keep[:] = True
        batch = TrainBatch.from_groups(groups, adv, keep)
        shares = {}
        mix = self.cfg.advantage.as_mix() if self.cfg.advantage.type == "anneal" else self.cfg.advantage
        # each component's weight by magnitude (docs/algorithms.md §3)
        if mix.type == "mix":
            shares = dict(zip(("mix_early_share", "mix_late_share"), mix_magnitude_shares(mix, inputs)))
        # NaN: the reward had no score for the sample (left out of the advantages)
        scored = ~rewards.isnan()
        metrics = {
            "reward_mean": float(rewards[scored].mean()) if scored.any() else math.nan,
            "unscored": int((~scored).sum()),
            # the step size the estimator asks for
            "adv_abs_mean": float(adv.abs().mean()),
            **shares,
            "solved_frac": float((rewards.nan_to_num(-math.inf).max(dim=1).values > 0).double().mean()),
            "completion_len": batch.num_tokens() / len(batch),
            "max_lag": lag,
            "kept_groups": int(keep.sum()),
            **(episode_metrics(groups, self.task.is_correct) if self.ctx.env is not None else {}),
            "rollout_s": got.rollout_s,
            "reward_s": got.score_s,
            **rollout_rate(got),
            **(self.buffer.stats() if self.buffer is not None else {}),
        }
        return batch, metrics, self._rehearsal_batch(step, prompts)

    def step(self, step: int, version: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.cfg
        batch, info, rehearsal = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        # whole groups per rank, each group's prompt through the model once
        # (a custom environment may open a prompt's episodes differently: then sequences run whole)
        share = ctx.share_prompts and batch.groups_share_prompts()
        mine = batch.shard(ctx.rank, ctx.world, whole_groups=share)
        n_seq, n_tok = ctx.global_sum(len(mine), mine.num_tokens())
        temperature = cfg.sampling.temperature
        off = cfg.off_policy
        self._keep_weights(version)
        # pi_learner,old of samples drawn before the last update: for pi_old, or on the steps that measure
        score_older = off.old_logprobs == "learner" or bool(off.measure_every and step % off.measure_every == 0)
        seq_max = [0.0]

        def loss_of(part: TrainBatch):
            # log-probs with column j = completion token j
            if share:
                packed = part.pack_groups(ctx.tokenizer.pad_token_id, ctx.device)
                # weights swap: first
                older = self._older_logprobs(part, packed, version) if score_older else {}
                logp, mask = ctx.logprobs(ctx.model, packed, temperature)
                mask = part.masked(mask, targets=False)
                engine_logp = part.completion_logprobs(logp.shape[1], logp.dtype).to(ctx.device)
            # aligned with the whole sequence's next-token targets
            else:
                packed = part.pack(ctx.tokenizer.pad_token_id, ctx.device)
                older = self._older_logprobs(part, packed, version) if score_older else {}
                logp, mask = ctx.logprobs(ctx.model, packed, temperature)
                mask = part.masked(mask, targets=True)
                engine_logp = part.target_logprobs(logp.shape[1], logp.dtype).to(ctx.device)
            learner_old = self._learner_old(part, logp, older, version)
            old_logp = learner_old if off.old_logprobs == "learner" else engine_logp
            is_weights = None
            if off.correction != "none":
                is_weights = compute_is_weights(learner_old, engine_logp, mask, correction=off.correction, cap=off.cap)
            ref_logp = None
            # as the rollout workers scored them, else a forward here
            if cfg.kl_beta:
                ref_logp = part.reference_columns(logp.shape[1], logp.dtype, targets=not share)
                ref_logp = ctx.reference_logprobs(packed, temperature) if ref_logp is None else ref_logp.to(ctx.device)
            loss, metrics = compute_grpo_loss(
                logp,
                old_logp,
                ref_logp,
                advantages=part.advantages.to(dtype=logp.dtype, device=ctx.device),
                mask=mask,
                clip_eps_low=cfg.clip_eps_low,
                clip_eps_high=cfg.clip_eps_high,
                kl_beta=cfg.kl_beta,
                aggregation=cfg.aggregation,
                max_len=self._max_len,
                num_sequences=n_seq,
                num_tokens=n_tok,
                is_weights=is_weights,
            )
            # the metrics are means over the part's tokens: back to sums
            tokens = float(mask.sum())
            sums = {"tokens": tokens, **{k: metrics[k] * tokens for k in TOKEN_MEANS}}
            # what the engine's log-probs are off by, when the learner's are here
            if learner_old is not None:
                mismatch, part_max = mismatch_sums(learner_old, engine_logp, mask, off.cap)
                seq_max[0] = max(seq_max[0], part_max)
                weight_sum = float(is_weights.sum()) if is_weights is not None else tokens
                sums.update(mismatch, mismatch_tokens=tokens, is_weight_mean=weight_sum)
            return loss, sums

        if share:
            parts = [mine.select(i, mine.group_size) for i in mine.group_micro_batches(ctx.micro_batch_tokens)]
        else:
            parts = [mine.select(i) for i in ctx.micro_batches(mine.lengths())]
        parts = [(loss_of, p) for p in parts]
        # one accumulation: DDP all-reduces once, on the last part
        if rehearsal is not None and len(rehearsal):
            rehearsal_parts, rehearsal_loss = nll_parts(ctx, rehearsal, cfg.rehearsal.gamma)
            parts += [(rehearsal_loss, p) for p in rehearsal_parts]
        sums = ctx.accumulate(parts, lambda part: part[0](part[1]))
        keys = ("loss", "tokens", "nll", *TOKEN_MEANS, "mismatch_tokens", *MISMATCH_MEANS)
        total = dict(zip(keys, ctx.global_sum(*(sums.get(k, 0.0) for k in keys))))
        metrics = {"loss": total["loss"]}
        if rehearsal is not None:
            metrics["rehearsal_nll"] = total["nll"] if len(rehearsal) else math.nan
        # means over the whole batch's completion tokens (every rank's)
        if total["tokens"]:
            metrics.update({k: total[k] / total["tokens"] for k in TOKEN_MEANS})
        if total["mismatch_tokens"]:
            metrics.update({k: total[k] / total["mismatch_tokens"] for k in MISMATCH_MEANS})
            metrics["mismatch_seq_max"] = ctx.global_max(seq_max[0])
        metrics.update(info)
        return metrics

    def _keep_weights(self, version: int) -> None:
        """With rollouts drawn ahead, for the learner's pi_old or the mismatch measures: keep the LoRA weights of
        ``version`` (the learner's at this step's start) while a later step's samples may have been drawn with them."""
        off = self.cfg.off_policy
        if not (self.cfg.async_rollouts and (off.old_logprobs == "learner" or off.measure_every)):
            return
        peft = self.ctx.peft_model
        self._weights_at[version] = {n: p.detach().clone() for n, p in peft.named_parameters() if p.requires_grad}
        for old in [v for v in self._weights_at if v < version - self.cfg.max_lag]:
            del self._weights_at[old]

    def _older_logprobs(self, part: TrainBatch, packed, version: int) -> dict[int, torch.Tensor]:
        """Each older version's log-probs of the part's tokens (no grad), for the samples drawn before the
        learner's last update; empty when all are fresh."""
        if part.versions is None:
            return {}
        out = {}
        for v in sorted(set(part.versions) - {version}):
            if v not in self._weights_at:
                raise RuntimeError(
                    f"{self.cfg.name}: samples of adapter version {v} reached the learner at version {version},"
                    " whose weights it no longer holds for their learner log-probs (off_policy)"
                )
            with torch.no_grad(), _swapped(self.ctx.peft_model, self._weights_at[v]):
                out[v] = self.ctx.logprobs(self.ctx.peft_model, packed, self.cfg.sampling.temperature)[0]
        return out

    def _learner_old(self, part: TrainBatch, logp: torch.Tensor, older: dict[int, torch.Tensor], version: int):
        """(N, T) log pi_learner,old of the part's tokens at the version each was sampled with: the step's own
        forward (detached) for fresh samples, ``older``'s for the rest; None when that takes a forward this step
        does not take (drawn ahead, pi_old from the engine, a step that does not measure)."""
        fresh = part.versions is None or all(v == version for v in part.versions)
        if fresh:
            return logp.detach()
        if not older:
            return None
        out = logp.detach()
        for v, logp_v in older.items():
            rows = torch.tensor([x == v for x in part.versions], device=logp.device)
            out = torch.where(rows.unsqueeze(-1), logp_v.to(logp.dtype), out)
        return out


def model_logprobs(sample) -> list[float]:
    """The sample's tokens' sampling log-probs where it carries loss (a multi-turn episode's model turns);
    an episode without a turn: one 0.0, as the masked token it keeps."""
    if sample.loss_mask is None:
        return sample.logprobs
    return [lp for lp, m in zip(sample.logprobs, sample.loss_mask) if m] or [0.0]


def episode_metrics(groups: list, is_correct) -> dict[str, float]:
    """A step's multi-turn episodes: turns used, how many failed, and the share right after each turn."""
    episodes = [s for g in groups for s in g]
    by_turn = list(zip(*(s.rewards_by_turn for s in episodes)))
    return {
        "turns_mean": sum(s.turns for s in episodes) / len(episodes),
        "episode_errors": sum(s.error is not None for s in episodes),
        **{
            f"solved_turn{t + 1}_frac": sum(map(is_correct, rewards)) / len(episodes)
            for t, rewards in enumerate(by_turn)
        },
    }


@contextmanager
def _swapped(peft, weights: dict[str, torch.Tensor]):
    """The trainable (LoRA) parameters set to ``weights`` inside the block, their own values after it."""
    params = {n: p for n, p in peft.named_parameters() if p.requires_grad}
    own = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    try:
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(own[n])
