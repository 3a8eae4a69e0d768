"""The adapter sync canary: proof that rollout workers sample the weights the learner published.

A LoRA sync that silently does nothing (a worker keeps serving old weights under a new or
reused version id) is the failure users of RL fine-tuning frameworks report most. Rank 0 scores
a fixed probe completion on a rollout worker under a version it published and compares the
log-probs with its own; when they are too far from them for the weights' dtype, or nearer those of
a policy the worker could be stuck on (the base model, the last version checked) than theirs
(:func:`stale_reason`), the run stops with :class:`SyncCanaryError`. What is checked, and where:

- every ``learner.sync_check_every`` publishes (the first one and every N-th after it), one
  worker, in turn;
- an attempt's first check covers every worker: a restarted learner knows nothing of the workers
  it finds (one may have restarted with it). An attempt that publishes nothing at its start (it
  holds the version the workers already serve: a phase continuing the previous one's adapter)
  checks that version (:meth:`SyncCanary.after_start`), so the weights sampled before its first
  publish are checked too;
- a worker Ray restarted (its incarnation id changed, :meth:`polyray.rollout.pool.RolloutPool.incarnations`)
  at the next publish: it serves weights it pulled from the store itself, not those the pool sent
  (with rollouts one step ahead, a publish's loads finish behind the next step, when the learner's
  weights have moved on: a restart they reveal is checked at the publish after);
- at a phase's sampling temperature T != 1, also the sampling path: the worker draws a short
  completion as rollouts are drawn and reports its sampling-time log-probs, log softmax(logits / T)
  (``rollout.logprobs_mode: processed_logprobs``, which a run with T != 1 requires), and the learner
  scores the drawn tokens at T. The probe's scoring cannot do this: vLLM's prompt log-probs skip the
  sampler, so they are at temperature 1 whatever the request asks.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from polyray.config import SamplingConfig
from polyray.models.batching import pack_sequences, token_logprobs

# The verdict reads the root mean square of the learner - worker log-prob gap over the probe's tokens.
# Same weights on both sides differ only in kernels (vLLM's attention and fused LoRA ops vs eager
# PyTorch over fp32 LoRA): tiny in float32, a few hundredths of a nat in bfloat16, where the logits
# themselves are rounded to 8 bits (polyray bench canary; docs/algorithms.md, "The sync canary").
# TOLERANCE: past it the worker serves something other than the published weights, whatever it is.
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.3}
# NOISE: the kernels' typical gap. A reference policy is told apart from the published one only when
# they are more than 2 x NOISE apart; then a worker more than twice as near the reference is stale.
NOISE = {"float32": 1e-4, "bfloat16": 0.1}
NEARER = 0.5
# Tokens the worker draws for the check at the sampling temperature: enough positions to compare,
# few enough decode steps to stay cheap; the seed makes the draw the same on every check.
DRAW_TOKENS = 16
DRAW_SEED = 0


class SyncCanaryError(RuntimeError):
    """A rollout worker's log-probs under a published version do not match the learner's weights."""


class SyncCanary:
    """Rank 0's canary for one attempt at a phase (a restarted learner builds a new one).

    ``probe``: (prompt ids, completion ids) scored on both sides; ``temperature``: the phase's
    sampling temperature (1 for a phase that does not sample)."""

    def __init__(
        self,
        every: int,
        probe: tuple[list[int], list[int]],
        pad_id: int,
        dtype: str = "float32",
        temperature: float = 1.0,
    ):
        self.every, self.probe, self.pad_id = every, probe, pad_id
        self.tolerance, self.noise = TOLERANCE[dtype], NOISE[dtype]
        self.temperature = temperature
        self.publishes = 0
        # the worker the next scheduled check goes to (modulo the workers)
        self.turn = 0
        # each worker's id at the last look (None: none yet)
        self.incarnations: list[str] | None = None
        # restarted workers an unchecked publish saw: due next
        self.pending_restarts: set[int] = set()
        # the learner's probe log-probs with the adapter disabled
        self.base: torch.Tensor | None = None
        # (version, learner's log-probs) of the last check
        self.last_passed: tuple[int, torch.Tensor] | None = None

    def after_start(self, model, pool, version: int) -> dict[str, float]:
        """The attempt starts holding ``version``, which the workers already serve, and publishes nothing:
        check it on every worker. Returns the measurements (:meth:`after_publish`)."""
        if not self.every:
            return {}
        self.incarnations = pool.incarnations()
        return self._check_workers(model, pool, version, list(range(len(pool.workers))))

    def after_publish(self, model, pool, version: int, incarnations: list[str] | None = None) -> dict[str, float]:
        """Count a publish; check it on the workers due. Returns {"canary_gap", "canary_s", "canary_workers",
        "canary_nodes"} (and "canary_gap_t" at a sampling temperature != 1) when it checked, else {}.
        ``canary_nodes``: each checked worker's Ray node id, by worker index (a worker restarted on
        another node shows up there). ``incarnations``: the workers' ids as the publish's loads left
        them (:meth:`polyray.rollout.pool.PendingPublish.result`; None: asked here)."""
        self.publishes += 1
        if not self.every:
            return {}
        due = self._restarted(incarnations or pool.incarnations())
        # the attempt's first check
        if due is None:
            due = set(range(len(pool.workers)))
        # and the scheduled one in turn
        elif (self.publishes - 1) % self.every == 0:
            due.add(self.turn % len(pool.workers))
            self.turn += 1
        return self._check_workers(model, pool, version, sorted(due)) if due else {}

    def checks_next(self) -> bool:
        """Whether the next publish is due a check whatever the workers did: the attempt's first, the
        scheduled one, or a restarted worker seen by :meth:`after_unchecked` since the last check."""
        if not self.every:
            return False
        return self.incarnations is None or self.publishes % self.every == 0 or bool(self.pending_restarts)

    def after_unchecked(self, incarnations: list[str]) -> None:
        """Count a publish that no check could follow (its loads finished after the learner's weights
        moved on: rollouts one step ahead), with the workers' ids its loads left: a worker restarted
        since the last look is checked at the next publish, which :meth:`checks_next` then names."""
        self.publishes += 1
        if self.every and self.incarnations is not None:
            self.pending_restarts = self._restarted(incarnations)

    def _restarted(self, incarnations: list[str]) -> set[int] | None:
        """The workers restarted since the last look (and those seen restarted by an unchecked publish
        since the last check), or None before the first look; remembers ``incarnations``."""
        seen, self.incarnations = self.incarnations, incarnations
        if seen is None:
            return None
        restarted = {i for i, (before, now) in enumerate(zip(seen, incarnations)) if before != now}
        restarted, self.pending_restarts = restarted | self.pending_restarts, set()
        return restarted

    def _check_workers(self, model, pool, version: int, workers: list[int]) -> dict[str, float]:
        started = time.perf_counter()
        prompt_ids, completion_ids = self.probe
        learner = self.learner_logprobs(model, prompt_ids, completion_ids, 1.0)
        references = self._references(model)
        gaps = [self.check(model, pool, version, worker, learner=learner, references=references) for worker in workers]
        self.last_passed = (version, learner)
        nodes = pool.nodes()
        metrics = {
            "canary_gap": max(gaps),
            "canary_workers": float(len(workers)),
            "canary_nodes": {str(i): nodes[i] for i in workers},
        }
        if self.temperature != 1.0:
            metrics["canary_gap_t"] = max(self.check_sampling(model, pool, version, worker) for worker in workers)
        return {**metrics, "canary_s": time.perf_counter() - started}

    def _references(self, model) -> dict[str, torch.Tensor]:
        """The policies a stale worker would serve, by name: the base model (the adapter disabled; scored
        once per attempt) and the last version a check passed."""
        if self.base is None:
            self.base = self.learner_logprobs(model, *self.probe, 1.0, adapter=False)
        references = {"the base model": self.base}
        if self.last_passed is not None:
            references[f"policy-v{self.last_passed[0]}"] = self.last_passed[1]
        return references

    def learner_logprobs(
        self, model, prompt_ids, completion_ids, temperature: float, adapter: bool = True
    ) -> torch.Tensor:
        """The learner's float64 log-probs of ``completion_ids`` after ``prompt_ids`` at ``temperature`` (no grad, no
        dropout); ``adapter`` False: with the adapter disabled (the base model)."""
        peft = getattr(model, "module", model)
        device = next(peft.parameters()).device
        was_training = peft.training
        # no dropout in the probe (its mode is restored after)
        peft.eval()
        try:
            with torch.no_grad(), nullcontext() if adapter else peft.disable_adapter():
                batch = pack_sequences([prompt_ids], [completion_ids], self.pad_id, device)
                logp, mask = token_logprobs(peft, batch, temperature)
        finally:
            peft.train(was_training)
        return logp[0][mask[0].bool()].double().cpu()

    def check(
        self,
        model,
        pool,
        version: int,
        worker: int = 0,
        *,
        learner: torch.Tensor | None = None,
        references: dict[str, torch.Tensor] | None = None,
    ) -> float:
        """RMS learner − worker log-prob gap over the probe's tokens (temperature 1); raises when
        :func:`stale_reason` finds one. ``learner``, ``references``: computed here when not given."""
        prompt_ids, completion_ids = self.probe
        if learner is None:
            learner = self.learner_logprobs(model, prompt_ids, completion_ids, 1.0)
        if references is None:
            references = self._references(model)
        served = torch.tensor(pool.score(prompt_ids, completion_ids, version, worker), dtype=torch.float64)
        reason = stale_reason(learner, served, references, tolerance=self.tolerance, noise=self.noise)
        if reason is not None:
            raise SyncCanaryError(
                f"adapter sync canary: rollout worker {worker} serves policy-v{version} with log-probs {reason}"
            )
        return rms(served - learner)

    def check_sampling(self, model, pool, version: int, worker: int = 0) -> float:
        """RMS learner − worker log-prob gap at the sampling temperature over a completion the worker draws
        after the probe's prompt; raises past the tolerance (scaled by 1/T below 1: the logits are). The
        drawn tokens change with the weights, so no reference policy is compared here."""
        prompt_ids = self.probe[0]
        sampling = SamplingConfig(temperature=self.temperature, top_p=1.0, max_tokens=DRAW_TOKENS)
        sample = pool.draw(prompt_ids, sampling, version, worker=worker, seed=DRAW_SEED)
        learner = self.learner_logprobs(model, prompt_ids, sample.token_ids, self.temperature)
        served = torch.tensor(sample.logprobs, dtype=torch.float64)
        tolerance = self.tolerance * max(1.0, 1.0 / self.temperature)
        reason = stale_reason(learner, served, {}, tolerance=tolerance, noise=self.noise)
        if reason is not None:
            raise SyncCanaryError(
                f"adapter sync canary: rollout worker {worker} serves policy-v{version}, sampling at"
                f" temperature {self.temperature:g}, with log-probs {reason}"
            )
        return rms(served - learner)


def rms(gaps: torch.Tensor) -> float:
    """Root mean square of a vector of log-prob gaps (0 for none)."""
    return float(gaps.double().pow(2).mean().sqrt()) if gaps.numel() else 0.0


def stale_reason(
    learner: torch.Tensor, served: torch.Tensor, references: dict[str, torch.Tensor], tolerance: float, noise: float
) -> str | None:
    """Why a worker's log-probs of the probe (``served``) are not the published weights' (``learner``), or None.

    Two rules, on the RMS gap over the probe's tokens: further than ``tolerance`` from the learner's; or,
    for a reference policy (``references``: name -> its log-probs; the base model, the last version
    checked) more than 2 x ``noise`` from the learner's, more than twice as near the reference as the
    learner. A worker serving the published weights with kernel noise e fails the second rule only if
    RMS(e) > 4/3 x ``noise`` (triangle inequality), so it adds no false alarm below that; it catches a
    stale worker once the weights moved about 3 x its noise, before the tolerance does."""
    if served.shape != learner.shape:
        return f"for {served.numel()} tokens where the probe has {learner.numel()}: it is not scoring the probe"
    gap = rms(served - learner)
    # (a NaN fails too)
    if not gap <= tolerance:
        return (
            f"{gap:.3g} (RMS over the probe's tokens) away from the learner's weights (tolerance {tolerance:g}):"
            " it is not sampling the published adapter"
        )
    for name, reference in references.items():
        apart, near = rms(learner - reference), rms(served - reference)
        if apart > 2 * noise and near < NEARER * gap:
            return (
                f"{near:.3g} (RMS) from {name}'s and {gap:.3g} from the published weights' ({apart:.3g} apart):"
                f" it serves {name}, not the published adapter"
            )
    return None
