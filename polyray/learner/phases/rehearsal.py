"""The phase-start policy's own correct samples: a buffer drawn once when a phase starts, and the two
phases that train on it (docs/algorithms.md §3, "Rehearsal and expert iteration").

GRPO gives no gradient to a prompt whose group holds no correct sample, so a prompt the incoming
(SFT) policy solves rarely can be lost for good once GRPO stops sampling its answer. The buffer keeps
what the incoming policy could do: ``samples_per_prompt`` draws per training prompt from the incoming
adapter, scored by the phase's reward, correct ones kept. GRPO with ``rehearsal`` adds γ × their NLL
to every step (a forward KL to the incoming policy restricted to its correct answers); the
``expert_iteration`` phase trains on the buffer alone, its control.

Rank 0 draws and scores the buffer through the rollout pool under the incoming adapter (registered on
the workers as a named adapter, so a resumed phase rebuilds the same buffer from the same seeds,
whatever version the workers serve by then).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from polyray.config import ExpertIterationPhaseConfig, SamplingConfig
from polyray.config.phases import SelfSamplesConfig
from polyray.learner.batch import Sequences
from polyray.learner.phases.base import Phase
from polyray.learner.phases.context import StepContext, broadcast_from_rank0
from polyray.objectives.sft import compute_sft_loss
from polyray.rollout.request import GenerationRequest
from polyray.rollout.sampling import request_seeds, task_sampling
from polyray.tasks.base import Prompt, Task

# prompts per generate-and-score round: the reward service's batches stay small
CHUNK_PROMPTS = 64


@dataclass
class SampleBuffer:
    """Correct samples per prompt text: (prompt token ids, completion token ids) as the policy drew them."""

    samples: dict[str, list[tuple[list[int], list[int]]]] = field(default_factory=dict)
    # samples drawn to fill it (correct or not)
    drawn: int = 0
    # prompts sampled
    prompts: int = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.samples.values())

    def stats(self) -> dict[str, float]:
        return {
            "buffer_samples": len(self),
            "buffer_prompts": len(self.samples),
            "buffer_prompt_frac": len(self.samples) / max(self.prompts, 1),
        }

    def draw(self, first: list[str], size: int, rng: random.Random) -> Sequences:
        """``size`` buffered samples: one of each prompt in ``first`` the buffer holds (in order, at most
        ``size``), the rest uniformly over the buffer's prompts, then uniformly over a prompt's samples.
        Empty when the buffer is."""
        if not self.samples:
            return Sequences([], [])
        picked = [p for p in dict.fromkeys(first) if p in self.samples][:size]
        keys = sorted(self.samples)
        picked += rng.choices(keys, k=size - len(picked))
        pairs = [rng.choice(self.samples[p]) for p in picked]
        return Sequences([list(p) for p, _ in pairs], [list(c) for _, c in pairs])


def build_buffer(
    pool,
    prompts: list[Prompt],
    *,
    cfg: SelfSamplesConfig,
    sampling: SamplingConfig,
    reward_fn,
    source: str | None,
    key: str,
    seed: int,
) -> SampleBuffer:
    """Draw ``cfg.samples_per_prompt`` samples per prompt from adapter ``source`` (None: the base model),
    score them, keep those whose reward is >= ``cfg.threshold`` and that ended on their own (one cut off
    at max_tokens would teach the policy not to stop). Seeds come from (``seed``, ``key``, the
    prompt's position), so the same phase and seed rebuild the same buffer."""
    name = None
    if source is not None:
        name = f"{key}/buffer-source"
        pool.add_named_adapter(name, source)
    draws = sampling.model_copy(update={"temperature": cfg.temperature})
    seeds = request_seeds(seed, f"{key}/buffer", [str(i) for i in range(len(prompts))])
    buffer = SampleBuffer(prompts=len(prompts))
    for start in range(0, len(prompts), CHUNK_PROMPTS):
        chunk = prompts[start : start + CHUNK_PROMPTS]
        # the base model, or the named incoming adapter
        version = 0 if name is None else None
        request = GenerationRequest(
            prompts=[p.text for p in chunk],
            n=cfg.samples_per_prompt,
            sampling=draws,
            version=version,
            adapter_name=name,
            seeds=seeds[start : start + len(chunk)],
        )
        groups = pool.generate(request)
        rewards = reward_fn(chunk, [[s.text for s in g] for g in groups])
        for prompt, group, row in zip(chunk, groups, rewards.tolist()):
            buffer.drawn += len(group)
            kept = [
                (s.prompt_token_ids, s.token_ids)
                for s, r in zip(group, row)
                if not math.isnan(r) and r >= cfg.threshold and s.finished and s.token_ids
            ]
            if kept:
                buffer.samples[prompt.text] = kept
    return buffer


def phase_buffer(phase: Phase, cfg: SelfSamplesConfig, *, task: Task, n_train: int, pool) -> SampleBuffer:
    """Rank 0: the phase's buffer from its incoming adapter, with one line saying what it holds."""
    ctx = phase.ctx
    if pool is None:
        raise RuntimeError(f"{phase.cfg.name}: the buffer of the incoming policy's samples needs the rollout pool")
    started = time.perf_counter()
    prompts = task.prompts("train", n_train)
    sampling = task_sampling(phase.cfg.sampling, task)
    buffer = build_buffer(
        pool,
        prompts,
        cfg=cfg,
        sampling=sampling,
        reward_fn=ctx.reward_fn,
        source=ctx.init_source,
        key=phase.cfg.name,
        seed=ctx.seed,
    )
    print(
        f"{phase.cfg.name}: buffer of {len(buffer)} correct samples of {buffer.drawn} drawn, on"
        f" {len(buffer.samples)} of {len(prompts)} training prompts ({time.perf_counter() - started:.1f} s)"
    )
    if not buffer.samples:
        print(f"{phase.cfg.name}: the incoming policy solved no training prompt; the buffer is empty")
    return buffer


def nll_parts(ctx: StepContext, seqs: Sequences, weight: float):
    """(parts, loss_of) for :meth:`StepContext.accumulate`: ``weight`` × the token-mean NLL of ``seqs``,
    this rank's shard (``rank::world``) over the whole batch's tokens; its metric ``nll`` sums to the
    batch's token-mean NLL over the ranks."""
    mine = seqs.select(list(range(ctx.rank, len(seqs), ctx.world)))
    # every rank holds the whole batch
    num_tokens = seqs.num_tokens()

    def loss_of(part: Sequences):
        logp, mask = ctx.logprobs(ctx.model, part.pack(ctx.tokenizer.pad_token_id, ctx.device))
        nll = compute_sft_loss(logp, mask, num_tokens=max(num_tokens, 1.0))[0]
        return weight * nll, {"nll": float(nll.detach())}

    return [mine.select(i) for i in ctx.micro_batches(mine.lengths())], loss_of


class ExpertIterationPhase(Phase):
    """SFT on the buffer of the incoming policy's correct samples; publishes its adapter at the end."""

    config_type = ExpertIterationPhaseConfig
    # rank 0 scores the buffer's draws
    uses_rewards = True

    def __init__(self, cfg: ExpertIterationPhaseConfig, *, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx = cfg, ctx
        buffer = phase_buffer(self, cfg.buffer, task=task, n_train=n_train, pool=pool) if ctx.rank == 0 else None
        self.buffer: SampleBuffer = broadcast_from_rank0(buffer, ctx)
        # every rank: nothing to train on
        if not self.buffer.samples:
            raise RuntimeError(
                f"{cfg.name}: the incoming policy solved none of {self.buffer.prompts} training prompts in"
                f" {self.buffer.drawn} draws, so the buffer is empty: raise buffer.samples_per_prompt or lower"
                " buffer.threshold"
            )

    def step(self, step: int, version: int) -> dict[str, float]:
        ctx = self.ctx
        rng = random.Random(f"{self.cfg.name}:{ctx.seed}:{step}")
        batch = self.buffer.draw([], self.cfg.batch_size, rng)
        parts, loss_of = nll_parts(ctx, batch, 1.0)
        sums = ctx.accumulate(parts, loss_of)
        loss = ctx.global_sum(sums["loss"])[0]
        return {"loss": loss, "nll": loss, **self.buffer.stats()}
