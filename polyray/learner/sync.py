"""The adapter sync canary: proof that rollout workers sample the weights the learner published.

A LoRA sync that silently does nothing (a worker keeps serving old weights under a new or
reused version id) is the failure users of RL fine-tuning frameworks report most. Every
``learner.sync_check_every`` publishes (the first one and every N-th after it), rank 0 scores
a fixed probe completion on one rollout worker under the version it just published (workers
in turn) and compares the log-probs with its own. Past the tolerance of the weights' dtype
the run stops with :class:`SyncCanaryError`.
"""

from __future__ import annotations

import time

import torch

from polyray.models.batching import pack_sequences, token_logprobs

# Same weights on both sides differ only in kernels (vLLM's attention and fused LoRA ops vs eager
# PyTorch): a few 1e-5 in float32 for the embedded model, ~1e-2 in bfloat16. A stale adapter is
# orders of magnitude further away after a handful of optimizer steps.
TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}


class SyncCanaryError(RuntimeError):
    """A rollout worker's log-probs under a published version do not match the learner's weights."""


class SyncCanary:
    def __init__(self, every: int, probe: tuple[list[int], list[int]], pad_id: int, dtype: str = "float32"):
        self.every, self.probe, self.pad_id = every, probe, pad_id
        self.tolerance = TOLERANCE[dtype]
        self.publishes = 0

    def after_publish(self, model, pool, version: int) -> dict[str, float]:
        """Count a publish; on the due ones, check it. Returns {"canary_gap", "canary_s"} when checked."""
        self.publishes += 1
        if not self.every or (self.publishes - 1) % self.every:
            return {}
        started = time.perf_counter()
        gap = self.check(model, pool, version, worker=(self.publishes - 1) // self.every % len(pool.workers))
        return {"canary_gap": gap, "canary_s": time.perf_counter() - started}

    def check(self, model, pool, version: int, worker: int = 0) -> float:
        """Max |learner − worker| log-prob over the probe's tokens; raises past the tolerance."""
        prompt_ids, completion_ids = self.probe
        peft = getattr(model, "module", model)
        device = next(peft.parameters()).device
        was_training = peft.training
        peft.eval()  # no dropout in the probe (the loop puts the model back in train mode each step)
        try:
            with torch.no_grad():
                logp, mask = token_logprobs(peft, pack_sequences([prompt_ids], [completion_ids], self.pad_id, device))
        finally:
            peft.train(was_training)
        learner = logp[0][mask[0].bool()].double().cpu()
        served = torch.tensor(pool.score(prompt_ids, completion_ids, version, worker), dtype=torch.float64)
        gap = float((learner - served).abs().max())
        if gap > self.tolerance:
            raise SyncCanaryError(
                f"adapter sync canary: rollout worker {worker} serves policy-v{version} with log-probs {gap:.3g} away"
                f" from the learner's weights (tolerance {self.tolerance:g}): it is not sampling the published adapter"
            )
        return gap
