"""Training phases as stage functions: each step is generate -> score -> advantages -> update.

A phase object owns what a step needs (data; for sampling phases, its rollouts on rank 0)
and exposes ``step(step_index, version) -> metrics``, which leaves the step's gradient in the
parameters; ``version`` is the adapter version the learner holds, the one fresh samples are
drawn under. The optimizer step, DDP, publishing and checkpointing live in
:mod:`polyray.learner.loop`; the math lives in :mod:`polyray.objectives`.

Every rank sees the same step data: rank 0 draws it (for GRPO, rolls out and scores)
and broadcasts it as a :class:`~polyray.learner.batch.TrainBatch`; each rank then trains on
its shard of sequences (shard ``rank::world``).
Each shard's loss is normalised by the *whole* batch's counts (tokens, sequences, groups)
and multiplied by the world size, so after DDP averages the gradients the step equals the
one-rank full-batch step, whatever the number of learner workers or an uneven split
(docs/algorithms.md §2). A rank's shard goes through the model in micro-batches of at most
``learner.micro_batch_tokens`` padded tokens (:meth:`StepContext.accumulate`); every loss is a
sum of per-sequence terms over whole-batch counts, so the accumulated gradient is the shard's,
and DDP all-reduces once, on the last micro-batch. A rank whose shard is empty contributes a
zero loss that still touches every parameter, so DDP's all-reduce matches across ranks. Every
tensor a phase builds is created on the model's device.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, wait
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist

from polyray.config import GRPOPhaseConfig, PolychromicSFTPhaseConfig, SFTPhaseConfig
from polyray.learner.batch import Sequences, TrainBatch, micro_batches
from polyray.models.batching import (
    DEFAULT_CHUNK_MIB,
    PromptGroups,
    pack_sequences,
    shared_prompt_logprobs,
    token_logprobs,
)
from polyray.objectives.advantages import (
    AdvantageInputs,
    compute_advantages,
    dynamic_sampling_mask,
    mix_magnitude_shares,
)
from polyray.objectives.grpo import compute_grpo_loss
from polyray.objectives.polychromic import (
    compute_diversity_surrogate,
    compute_loo_advantages,
    compute_subset_advantage_scale,
    compute_subset_marginals,
    enumerate_subsets,
)
from polyray.objectives.sft import compute_sft_loss
from polyray.rollout.sampling import request_seeds, task_sampling
from polyray.tasks.base import Prompt, Task

if TYPE_CHECKING:
    from polyray.rollout.worker import Sample


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
    micro_batch_tokens: int | None = None  # padded tokens per forward/backward (None: the shard in one pass)
    logits_chunk_mib: float = DEFAULT_CHUNK_MIB  # logits computed at once for token log-probs (0: all)
    share_prompts: bool = False  # GRPO: each group's prompt through the model once (learner.share_prompts)
    pack_samples: bool = True  # with share_prompts: a prompt's samples share rows (learner.pack_samples)
    # the KL reference adapter as a rollout worker loads it (a path, or a cluster.storage reference; None: the base)
    reference_source: str | None = None

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

    def logprobs(self, model, batch, temperature=1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`~polyray.models.batching.token_logprobs` (a :class:`PromptGroups` batch:
        :func:`~polyray.models.batching.shared_prompt_logprobs`) with this learner's logits chunk."""
        if isinstance(batch, PromptGroups):
            return shared_prompt_logprobs(model, batch, temperature, self.logits_chunk_mib, self.pack_samples)
        return token_logprobs(model, batch, temperature, self.logits_chunk_mib)

    def micro_batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices of this rank's sequences (of these lengths), one list per micro-batch."""
        return micro_batches(lengths, self.micro_batch_tokens)

    def accumulate(self, parts: list, loss_of) -> dict[str, float]:
        """Forward and backward each micro-batch in ``parts``; returns the sums over them of their
        ``loss`` and of the metric sums ``loss_of(part) -> (loss, {name: sum})`` gives.

        Each part's loss is its share of the whole batch's loss (whole-batch counts), times the
        world size because DDP averages gradients over ranks: the gradients add up to the batch's.
        DDP all-reduces on the last part's backward only (``no_sync`` before it). No parts: a zero
        loss, so the rank still joins the all-reduce."""
        sums: dict[str, float] = defaultdict(float)
        if not parts:
            (self.zero_loss() * self.world).backward()
            sums["loss"] = 0.0
            return sums
        no_sync = getattr(self.model, "no_sync", None)
        for i, part in enumerate(parts):
            with no_sync() if no_sync is not None and i < len(parts) - 1 else nullcontext():
                loss, metrics = loss_of(part)
                (loss * self.world).backward()
            sums["loss"] += float(loss.detach())
            for name, value in metrics.items():
                sums[name] += float(value)
        return sums

    def zero_loss(self) -> torch.Tensor:
        """A loss of 0 through the DDP forward (a rank with nothing to train on still joins the all-reduce)."""
        token = torch.full((1, 1), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        return self.model(input_ids=token).logits.float().sum() * 0.0


@dataclass
class RolloutLog:
    """Appends each scored rollout to ``rollouts.jsonl`` (through ``logs``, a
    :class:`~polyray.learner.logs.StepLogs`): the reward's item as sent, and the reward the learner
    used, so anyone can score the same items again and compare."""

    logs: Any
    phase: str
    task: Task

    def __call__(self, step: int, prompts: list[Prompt], groups: list[list[Sample]], rewards) -> None:
        """Rank 0, step ``step`` (0-based): each sample with the adapter version it was drawn under
        (with rollouts ahead, one older than the version the learner holds at the step)."""
        rows = [{"phase": self.phase, "step": step + 1, "version": sample.version,
                 "item": self.task.reward_item(prompt, sample.text), "reward": _reward(rewards[b, g])}
                for b, (prompt, group) in enumerate(zip(prompts, groups)) for g, sample in enumerate(group)]  # fmt: skip
        self.logs.append("rollouts.jsonl", *rows)


def _reward(value) -> float | None:
    """A reward as rollouts.jsonl records it: None where the reward had no score (NaN is no JSON)."""
    value = float(value)
    return None if math.isnan(value) else value


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
    samples_ahead = False  # no rollouts: nothing samples a publish behind the next step
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

    def step(self, step: int, version: int) -> dict[str, float]:
        ctx, refs = self.ctx, self.reference_batch(step)
        num_tokens = self.reference_tokens(refs)

        def loss_of(part: Sequences):
            logp, mask = ctx.logprobs(ctx.model, part.pack(ctx.tokenizer.pad_token_id, ctx.device))
            return compute_sft_loss(logp, mask, num_tokens=num_tokens)[0], {}

        sums = ctx.accumulate([refs.select(i) for i in ctx.micro_batches(refs.lengths())], loss_of)
        loss = ctx.global_sum(sums["loss"])[0]
        return {"loss": loss, "nll": loss}


def compute_diversity_advantages(
    name: str, groups: list[list[str]], estimator: str, k: int, embedding_dtype: str = "float32"
) -> torch.Tensor:
    """(B, n) per-sample diversity marginals of each group (docs/algorithms.md §1): leave-one-out or k-subset.

    All the sets of all groups go through one ``compute_diversity_batch`` call, so an
    embedding-based diversity embeds every text once (its encoder's weights in ``embedding_dtype``).
    """
    from polyray.diversity import compute_diversity_batch

    n = len(groups[0])
    if estimator == "loo":
        subsets = [tuple(range(n))] + [tuple(j for j in range(n) if j != i) for i in range(n)]
    else:
        subsets = enumerate_subsets(n, k)
    values = compute_diversity_batch(name, [[g[i] for i in s] for g in groups for s in subsets], embedding_dtype=embedding_dtype)
    table = torch.tensor(values, dtype=torch.float64).view(len(groups), len(subsets))  # (B, S)
    if estimator == "loo":
        return compute_loo_advantages(table[:, 0], table[:, 1:])
    return compute_subset_advantage_scale(n, k) * compute_subset_marginals(table, n, subsets)


class DiversityScorer:
    """:func:`compute_diversity_advantages` in a process of its own, a Ray actor rank 0 starts for a
    phase that samples one step ahead with an embedding diversity: the embedding model then runs
    beside the update instead of in rank 0's process, where its Python would hold the interpreter
    lock the update's own Python needs (docs/benchmarks.md, "Polychromic SFT"). The same function
    on the same texts: the same advantages."""

    def __init__(self, threads: int, embedding_dtype: str = "float32"):
        from polyray.embeddings import BUNDLED_ENCODER, get_encoder

        torch.set_num_threads(threads)
        get_encoder(BUNDLED_ENCODER, embedding_dtype)  # loaded while the phase starts, not at its first step

    def advantages(self, name: str, groups: list[list[str]], estimator: str, k: int, embedding_dtype: str = "float32") -> torch.Tensor:
        return compute_diversity_advantages(name, groups, estimator, k, embedding_dtype)


def embedding_dtype_of(cfg: PolychromicSFTPhaseConfig) -> str:
    """The encoder dtype rank 0 scores ``cfg``'s samples with (``auto`` resolved on this machine), logged
    once when the phase uses an embedding diversity."""
    from polyray.diversity import EMBEDDING_DIVERSITY_FUNCTIONS
    from polyray.embeddings import resolve_dtype

    dtype = resolve_dtype(cfg.embedding_dtype)
    if cfg.diversity in EMBEDDING_DIVERSITY_FUNCTIONS:
        how = " (embedding_dtype: auto)" if cfg.embedding_dtype == "auto" else ""
        print(f"{cfg.name}: the {cfg.diversity} diversity's sentence encoder runs in {dtype}{how}")
    return dtype


def start_diversity_scorer(cfg: PolychromicSFTPhaseConfig, threads: int, embedding_dtype: str | None = None):
    """Rank 0's :class:`DiversityScorer` actor when ``cfg`` samples one step ahead with an embedding
    diversity (its model is the costly part); None otherwise, or without Ray: scored in-process.
    ``embedding_dtype``: its encoder's (default: :func:`embedding_dtype_of`). Imports Ray only when
    it would start one, so the phase runs where Ray is not installed (a bare CUDA machine)."""
    from polyray.diversity import EMBEDDING_DIVERSITY_FUNCTIONS

    if not (cfg.async_rollouts and cfg.diversity in EMBEDDING_DIVERSITY_FUNCTIONS):
        return None
    import ray

    if not ray.is_initialized():
        return None
    from polyray.cluster import on_this_node

    # on rank 0's node, outside the learner's placement group (like the adapter store); scoring is
    # idempotent, so a scorer that dies is restarted and its call retried
    options = dict(num_cpus=0, scheduling_strategy=on_this_node(), max_restarts=3, max_task_retries=3)
    return ray.remote(DiversityScorer).options(**options).remote(threads, embedding_dtype or embedding_dtype_of(cfg))


@dataclass
class Rollout:
    """A step's samples, scored, and what the step waited for: ``rollout_s`` for the samples,
    ``score_s`` for their scoring (0 when both were done before the step asked)."""

    prompts: list[Prompt]
    groups: list
    scored: Any  # what the phase's ``score(prompts, groups)`` returned
    rollout_s: float
    score_s: float


class RolloutPrefetch:
    """Rank 0's rollouts, step by step. ``submit(step, version)`` starts a step's generation under
    adapter ``version`` and returns (prompts, pending); ``score(prompts, groups)`` scores its samples
    (GRPO: rewards; polychromic SFT: diversity advantages).

    Synchronous (``ahead=False``): submit, wait and score at the step itself (samples lag 0).
    Ahead: step t+1 is submitted when step t starts, so its generation overlaps step t's
    update and its samples are one version stale (lag 1; importance ratios correct for it). Its
    samples are also scored as soon as they arrive, in a background thread, so the reward calls
    or the diversity model overlap the update as well (``score`` must be safe to call from that
    thread). Scoring does not depend on when it runs:
    the same samples get the same scores either way.
    """

    def __init__(self, submit, ahead: bool, steps: int, score):
        self.submit, self.ahead, self.steps, self.score = submit, ahead, steps, score
        self.pending: dict[int, Callable[[], tuple]] = {}  # step -> its collection's result
        self._last: Future | None = None  # the collection started last (ahead): the next one waits for it

    def get(self, step: int, version: int) -> Rollout:
        job = self.pending.pop(step, None) or self._start(step, version)
        if self.ahead and step + 1 < self.steps:
            self.pending[step + 1] = self._start(step + 1, version)
        asked = time.perf_counter()
        prompts, groups, scored, sampled = job()
        done = time.perf_counter()
        sampled = min(max(sampled, asked), done)  # samples that arrived before the step asked: no wait for them
        return Rollout(prompts, groups, scored, rollout_s=sampled - asked, score_s=done - sampled)

    def _start(self, step: int, version: int) -> Callable[[], tuple]:
        """Submit a step's generation; its collection (wait, then score) runs when the step asks for it
        (synchronous), or ahead in a thread of its own that first waits for the previous step's, so
        collections run one at a time, in step order. The threads are daemons: one still waiting for
        samples when its phase fails never holds up the process's exit."""
        prompts, pending = self.submit(step, version)
        if not self.ahead:
            return partial(self._collect, prompts, pending)
        job, before = Future(), self._last

        def collect():
            if before is not None:
                wait([before])
            try:
                job.set_result(self._collect(prompts, pending))
            except BaseException as e:  # raised in the step that asks for it
                job.set_exception(e)

        threading.Thread(target=collect, name=f"polyray-rollout-score-{step}", daemon=True).start()
        self._last = job
        return job.result

    def _collect(self, prompts, pending):
        """(prompts, groups, their scores, when the samples arrived)."""
        groups = pending.result()
        sampled = time.perf_counter()
        return prompts, groups, self.score(prompts, groups), sampled


def rollout_rate(got: Rollout) -> dict[str, float]:
    """``rollout_tokens_per_s``: the step's completion tokens per second it waited for them; left out
    when it did not wait (samples ready one step ahead), where the rate says nothing."""
    if got.rollout_s <= 0:
        return {}
    return {"rollout_tokens_per_s": sum(len(s.token_ids) for g in got.groups for s in g) / got.rollout_s}


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

    @property
    def samples_ahead(self) -> bool:
        """Rollouts one step ahead: the next step's samples are drawn under the version a step publishes
        only once that step is over, so its publish need not wait for the workers' loads."""
        return self.cfg.async_rollouts
    reference_adapter_dir = staticmethod(SFTPhase.reference_adapter_dir)

    def _init_rollouts(self, cfg, task: Task, n_train: int, pool) -> None:
        self.pool, self.prompts = pool, task.prompts("train", n_train)
        self.sampling = task_sampling(cfg.sampling, task)
        self.rollouts = RolloutPrefetch(self._submit, cfg.async_rollouts, cfg.steps, self._score)

    samples_per_prompt: int  # each subclass provides it: completions drawn per prompt
    rollout_reference: str | None = None  # what the rollout workers score the samples' KL reference log-probs under

    def _score(self, prompts: list[Prompt], groups: list) -> Any:
        """Rank 0: score a step's samples (possibly in the prefetch's thread, ahead of the step)."""
        raise NotImplementedError

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
        pending = self.pool.submit([p.text for p in prompts], self.samples_per_prompt, self.sampling, version, seeds=seeds,
                                   reference=self.rollout_reference)  # fmt: skip
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
        self.embedding_dtype = self.scorer = None  # rank 0 alone scores the samples
        if ctx.rank == 0:
            self.embedding_dtype = embedding_dtype_of(cfg)  # "auto" resolved on this machine
            self.scorer = start_diversity_scorer(cfg, torch.get_num_threads(), self.embedding_dtype)

    @property
    def rollout_draw(self) -> str:
        return f"{self.cfg.name}/samples"  # its reference batches are drawn under the bare name

    @property
    def samples_per_prompt(self) -> int:
        return self.cfg.n_samples

    def _score(self, prompts: list[Prompt], groups: list) -> torch.Tensor:
        """The samples' diversity advantages: in the scorer's process when there is one, else here."""
        cfg, texts = self.cfg, [[s.text for s in g] for g in groups]
        if self.scorer is not None:
            import ray

            return ray.get(self.scorer.advantages.remote(cfg.diversity, texts, cfg.estimator, cfg.subset_k, self.embedding_dtype))
        return compute_diversity_advantages(cfg.diversity, texts, cfg.estimator, cfg.subset_k, self.embedding_dtype)

    def _rollout(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float]]:
        """Rank 0: the step's (B, n) samples with their diversity marginals, and the rollout's metrics."""
        got = self.rollouts.get(step, version)  # rollout_s / diversity_s: what the step waited for
        lag = check_lag(got.groups, version, self.cfg.max_lag)
        adv = got.scored
        return TrainBatch.from_groups(got.groups, adv), {
            "adv_abs_mean": float(adv.abs().mean()), "max_lag": lag,
            "rollout_s": got.rollout_s, "diversity_s": got.score_s, **rollout_rate(got),
        }  # fmt: skip

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
            (refs.select([i for i in part if i < len(refs)]), mine.select([i - len(refs) for i in part if i >= len(refs)]))
            for part in ctx.micro_batches(refs.lengths() + mine.lengths())
        ]

        def loss_of(part: tuple[Sequences, TrainBatch]):
            part_refs, samples = part
            packed = pack_sequences(part_refs.prompt_ids + samples.prompt_ids,
                                    part_refs.completion_ids + samples.completion_ids,
                                    ctx.tokenizer.pad_token_id, ctx.device)  # fmt: skip
            n_refs = len(part_refs)
            temperature = torch.tensor([1.0] * n_refs + [cfg.sampling.temperature] * len(samples))
            logp, mask = ctx.logprobs(ctx.model, packed, temperature if len(samples) else 1.0)
            terms, sums = [], {}
            if n_refs:
                nll = compute_sft_loss(logp[:n_refs], mask[:n_refs], num_tokens=num_tokens)[0]
                terms.append(nll)
                sums["nll"] = float(nll.detach())
            if len(samples):
                sample_logp = torch.where(mask[n_refs:] > 0, logp[n_refs:], torch.zeros_like(logp[n_refs:])).sum(-1)
                old_logp = torch.tensor(samples.sequence_logprobs(), dtype=logp.dtype, device=ctx.device)
                surrogate, weights = compute_diversity_surrogate(
                    sample_logp, samples.advantages.to(ctx.device), batch.num_groups, old_logp, cfg.ratio_clip
                )
                if cfg.lam or not n_refs:  # lam = 0: a part with references trains on their NLL alone (SFT's gradient)
                    terms.append(-cfg.lam * surrogate)
                sums.update(diversity_surrogate=float(surrogate.detach()), weight_sum=float(weights.sum()),
                            adv_sum=float(samples.advantages.sum()), samples=len(samples))  # fmt: skip
            return sum(terms[1:], terms[0]), sums

        sums = ctx.accumulate(parts, loss_of)
        keys = ("loss", "nll", "diversity_surrogate", "weight_sum", "adv_sum", "samples")
        total = dict(zip(keys, ctx.global_sum(*(sums.get(k, 0.0) for k in keys))))
        metrics = {k: total[k] for k in ("loss", "nll", "diversity_surrogate")}
        if total["samples"]:  # means over the whole batch's samples (every rank's)
            metrics.update(adv_mean=total["adv_sum"] / total["samples"], weight_mean=total["weight_sum"] / total["samples"])
        metrics.update(info)
        return metrics


TOKEN_MEANS = ("kl", "clip_frac", "ratio_mean")  # GRPO metrics averaged over completion tokens


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
        if cfg.kl_beta and cfg.kl_reference_logprobs == "rollouts" and ctx.rank == 0 and pool is not None:
            self.rollout_reference = self.reference_on_rollouts(pool)

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
        """(B, G) rewards: through the reward service's handle or the in-process scorer, ahead of the step when prefetched."""
        return self.ctx.reward_fn(prompts, [[s.text for s in g] for g in groups])

    def _rollout(self, step: int, version: int) -> tuple[TrainBatch, dict[str, float]]:
        """Rank 0: sample prompts, generate G each under adapter ``version``, score, compute advantages;
        returns the kept groups' batch and the rollout's metrics."""
        got = self.rollouts.get(step, version)
        prompts, groups, rewards = got.prompts, got.groups, got.scored
        lag = check_lag(groups, version, self.cfg.max_lag)
        texts = [[s.text for s in g] for g in groups]
        if self.ctx.rollout_log is not None:
            self.ctx.rollout_log(step, prompts, groups, rewards)
        logprobs = [[s.logprobs for s in g] for g in groups]
        inputs = AdvantageInputs(rewards, texts, logprobs, progress=step / self.cfg.steps, step=step)
        adv = compute_advantages(self.cfg.advantage, inputs)
        keep = dynamic_sampling_mask(adv) if self.cfg.dynamic_sampling else torch.ones(len(groups), dtype=torch.bool)
        if not keep.any():  # no group carries an advantage: nothing to learn from but the KL term; keep them all
            keep[:] = True
        batch = TrainBatch.from_groups(groups, adv, keep)
        shares = {}
        mix = self.cfg.advantage.as_mix() if self.cfg.advantage.type == "anneal" else self.cfg.advantage
        if mix.type == "mix":  # each component's weight by magnitude (docs/algorithms.md §3)
            shares = dict(zip(("mix_early_share", "mix_late_share"), mix_magnitude_shares(mix, inputs)))
        scored = ~rewards.isnan()  # NaN: the reward had no score for the sample (left out of the advantages)
        return batch, {
            "reward_mean": float(rewards[scored].mean()) if scored.any() else math.nan,
            "unscored": int((~scored).sum()),
            "adv_abs_mean": float(adv.abs().mean()),  # the step size the estimator asks for
            **shares,
            "solved_frac": float((rewards.nan_to_num(-math.inf).max(dim=1).values > 0).double().mean()),
            "completion_len": batch.num_tokens() / len(batch),
            "max_lag": lag,
            "kept_groups": int(keep.sum()),
            "rollout_s": got.rollout_s,
            "reward_s": got.score_s,
            **rollout_rate(got),
        }

    def step(self, step: int, version: int) -> dict[str, float]:
        ctx, cfg = self.ctx, self.cfg
        batch, info = broadcast_from_rank0(self._rollout(step, version) if ctx.rank == 0 else None, ctx)
        share = ctx.share_prompts  # whole groups per rank, each group's prompt through the model once
        mine = batch.shard(ctx.rank, ctx.world, whole_groups=share)
        n_seq, n_tok = ctx.global_sum(len(mine), mine.num_tokens())
        temperature = cfg.sampling.temperature

        def loss_of(part: TrainBatch):
            if share:  # log-probs with column j = completion token j
                packed = part.pack_groups(ctx.tokenizer.pad_token_id, ctx.device)
                logp, mask = ctx.logprobs(ctx.model, packed, temperature)
                old_logp = part.completion_logprobs(logp.shape[1], logp.dtype).to(ctx.device)
            else:  # aligned with the whole sequence's next-token targets
                packed = part.pack(ctx.tokenizer.pad_token_id, ctx.device)
                logp, mask = ctx.logprobs(ctx.model, packed, temperature)
                old_logp = part.target_logprobs(logp.shape[1], logp.dtype).to(ctx.device)
            ref_logp = None
            if cfg.kl_beta:  # as the rollout workers scored them, else a forward here
                ref_logp = part.reference_columns(logp.shape[1], logp.dtype, targets=not share)
                ref_logp = self.reference_logprobs(packed, temperature) if ref_logp is None else ref_logp.to(ctx.device)
            loss, metrics = compute_grpo_loss(
                logp, old_logp, ref_logp, part.advantages.to(dtype=logp.dtype, device=ctx.device), mask,
                clip_eps_low=cfg.clip_eps_low, clip_eps_high=cfg.clip_eps_high, kl_beta=cfg.kl_beta,
                aggregation=cfg.aggregation, max_len=cfg.sampling.max_tokens, num_sequences=n_seq, num_tokens=n_tok,
            )  # fmt: skip
            tokens = float(mask.sum())  # the metrics are means over the part's tokens: back to sums
            return loss, {"tokens": tokens, **{k: metrics[k] * tokens for k in TOKEN_MEANS}}

        if share:
            parts = [mine.select(i, mine.group_size) for i in mine.group_micro_batches(ctx.micro_batch_tokens)]
        else:
            parts = [mine.select(i) for i in ctx.micro_batches(mine.lengths())]
        sums = ctx.accumulate(parts, loss_of)
        keys = ("loss", "tokens", *TOKEN_MEANS)
        total = dict(zip(keys, ctx.global_sum(*(sums.get(k, 0.0) for k in keys))))
        metrics = {"loss": total["loss"]}
        if total["tokens"]:  # means over the whole batch's completion tokens (every rank's)
            metrics.update({k: total[k] / total["tokens"] for k in TOKEN_MEANS})
        metrics.update(info)
        return metrics

    def reference_logprobs(self, batch, temperature: float) -> torch.Tensor:
        """log pi_ref of the batch's tokens, no grad: the frozen phase-start adapter, or the adapter-disabled base."""
        peft = self.ctx.peft_model
        with torch.no_grad():
            if self.ctx.reference_adapter is None:
                with peft.disable_adapter():
                    return self.ctx.logprobs(peft, batch, temperature)[0]
            peft.set_adapter(self.ctx.reference_adapter, inference_mode=True)
            try:
                return self.ctx.logprobs(peft, batch, temperature)[0]
            finally:
                peft.set_adapter("default")  # also makes the policy adapter trainable again


PHASES = {"sft": SFTPhase, "polychromic_sft": PolychromicSFTPhase, "grpo": GRPOPhase}
