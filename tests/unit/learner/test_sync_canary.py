"""The sync canary's schedule and verdict, against a stand-in worker that scores with given weights.

The real-worker case (vLLM keeping stale weights) is in tests/integration/test_rollout_sync.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from support.phase_harness import build_policy, tiny_model_dir

pytestmark = [pytest.mark.slow]


class ScoringPool:
    """Workers that score with a frozen copy of the weights they were last given (``sync``: a publish
    reaching them); ``restart`` gives a worker a new incarnation id, as Ray's restart does."""

    def __init__(self, model, tokenizer, n_workers: int = 2, newest: int = 0):
        self.workers = list(range(n_workers))
        self.served = [copy.deepcopy(model)] * n_workers
        self.ids = [f"{w}.0" for w in self.workers]
        self.node_of = ["node-a"] * n_workers
        self.ignores_loads: set[int] = set()
        self.tokenizer = tokenizer
        self.newest = newest
        self.calls: list[int] = []
        self.sampling_logprobs_at_t1 = False  # a sampler that reports T = 1 log-probs whatever it samples at

    def newest_version(self) -> int:
        return self.newest

    def sync(self, model) -> None:
        served = copy.deepcopy(model)
        self.served = [self.served[w] if w in self.ignores_loads else served for w in self.workers]

    def restart(self, worker: int, ignores_loads: bool = False, node: str | None = None) -> None:
        self.ids[worker] = f"{worker}.{int(self.ids[worker].split('.')[1]) + 1}"
        self.node_of[worker] = node or self.node_of[worker]
        if ignores_loads:  # the new process serves what it started with, whatever it is sent
            self.ignores_loads.add(worker)

    def incarnations(self) -> list[str]:
        return list(self.ids)

    def nodes(self) -> list[str]:
        return list(self.node_of)

    def score(self, prompt_ids, completion_ids, version, worker=0):
        from polyray.models.batching import pack_sequences, token_logprobs

        self.calls.append(worker)
        with torch.no_grad():
            batch = pack_sequences([prompt_ids], [completion_ids], self.tokenizer.pad_token_id)
            logp, mask = token_logprobs(self.served[worker], batch)
        return logp[0][mask[0].bool()].tolist()

    @torch.no_grad()
    def draw(self, prompt_ids, sampling, version, worker=0, seed=0):
        """Tokens drawn from softmax(logits / T) with the log-prob of each under it (vLLM's processed
        log-probs), or under softmax(logits) with ``sampling_logprobs_at_t1``."""
        from polyray.rollout.worker import Sample

        model, gen = self.served[worker], torch.Generator().manual_seed(seed)
        ids, logprobs = list(prompt_ids), []
        for _ in range(sampling.max_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            processed = torch.log_softmax(logits / sampling.temperature, -1)
            token = int(torch.multinomial(processed.exp(), 1, generator=gen))
            reported = torch.log_softmax(logits, -1) if self.sampling_logprobs_at_t1 else processed
            ids.append(token)
            logprobs.append(float(reported[token]))
        return Sample(0, "", list(prompt_ids), ids[len(prompt_ids) :], logprobs, version or 0, False)


def _move(model, by: float = 0.5) -> None:
    """An optimizer step's worth of change to the learner's adapter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(by)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return build_policy(tiny_model_dir(tmp_path_factory.mktemp("canary")))


def test_checks_the_first_and_every_nth_publish_on_workers_in_turn(policy):
    from polyray.learner.sync import SyncCanary

    model, tok = policy
    pool = ScoringPool(model, tok)
    canary = SyncCanary(every=3, probe=([5, 6, 7], [8, 9, 10]), pad_id=tok.pad_token_id)
    checked = [bool(canary.after_publish(model, pool, v)) for v in range(1, 8)]
    assert checked == [True, False, False, True, False, False, True]
    assert pool.calls == [0, 1, 0, 1]  # the attempt's first check on every worker, then one per check, in turn
    assert SyncCanary(every=0, probe=([5], [6]), pad_id=0).after_publish(model, pool, 1) == {}


def test_stale_worker_stops_the_run(policy):
    from polyray.learner.sync import SyncCanary, SyncCanaryError

    model, tok = policy
    pool = ScoringPool(model, tok)
    canary = SyncCanary(every=1, probe=([5, 6, 7], [8, 9, 10, 11]), pad_id=tok.pad_token_id)
    assert canary.after_publish(model, pool, 1)["canary_gap"] < 1e-6  # same weights on both sides
    _move(model)
    with pytest.raises(SyncCanaryError, match="rollout worker 0 serves policy-v2"):
        canary.after_publish(model, pool, 2)  # the learner moved on, the worker did not


def test_a_restarted_learner_checks_every_worker_first(policy):
    """A new attempt (a new canary) knows nothing of the workers it finds: its first check covers all."""
    from polyray.learner.sync import SyncCanary, SyncCanaryError

    model, tok = policy
    pool = ScoringPool(model, tok, n_workers=3)
    pool.restart(2, ignores_loads=True)  # went down with the lost attempt, came back broken
    _move(model)
    pool.sync(model)  # the new attempt's first publish reaches workers 0 and 1 only
    canary = SyncCanary(every=50, probe=([5, 6, 7], [8, 9, 10]), pad_id=tok.pad_token_id)
    with pytest.raises(SyncCanaryError, match="rollout worker 2 serves policy-v4"):
        canary.after_publish(model, pool, 4)
    _move(model, -0.5)


def test_an_attempt_starting_from_the_served_version_checks_it(policy):
    """A phase continuing the previous phase's adapter publishes nothing at its start (the store's newest
    version is its weights); the canary checks that version on the workers all the same."""
    from polyray.learner.phases import StepContext
    from polyray.learner.publish import AdapterPublisher
    from polyray.learner.sync import SyncCanary, SyncCanaryError

    model, tok = policy
    ctx = StepContext(model=model, tokenizer=tok, rank=0, world=1, seed=0)
    probe = ([5, 6, 7], [8, 9, 10])

    pool = ScoringPool(model, tok, newest=1)  # the workers serve version 1: the learner's weights
    publisher = AdapterPublisher(pool, "grpo", ctx, SyncCanary(every=50, probe=probe, pad_id=tok.pad_token_id))
    publisher.start(1, 0, holds_published=True, publishes_every_step=True)
    assert publisher.version == 1 and pool.calls == [0, 1]  # nothing published, version 1 checked on both
    assert publisher.take_canary_metrics()["canary_gap"] < 1e-6

    stale = ScoringPool(model, tok, newest=1)
    stale.served[1] = copy.deepcopy(stale.served[1])
    _move(stale.served[1])  # worker 1 serves other weights as version 1
    publisher = AdapterPublisher(stale, "sft", ctx, SyncCanary(every=50, probe=probe, pad_id=tok.pad_token_id))
    with pytest.raises(SyncCanaryError, match="rollout worker 1 serves policy-v1"):
        publisher.start(1, 0, holds_published=True, publishes_every_step=False)


def test_a_restarted_worker_is_checked_at_the_next_publish(policy):
    """Ray restarted worker 1 between two publishes that the schedule does not check: the next publish
    checks it (its new process serves weights it pulled itself, not those the pool sent)."""
    from polyray.learner.sync import SyncCanary, SyncCanaryError

    model, tok = policy
    pool = ScoringPool(model, tok)
    canary = SyncCanary(every=50, probe=([5, 6, 7], [8, 9, 10]), pad_id=tok.pad_token_id)
    assert canary.after_publish(model, pool, 1)  # the first: checked
    pool.calls.clear()
    try:
        _move(model)
        pool.sync(model)
        assert canary.after_publish(model, pool, 2) == {}  # not due, nothing restarted
        pool.restart(0)  # a restart that loads what it is sent: checked once, passes
        _move(model)
        pool.sync(model)
        checked = canary.after_publish(model, pool, 3)
        assert pool.calls == [0] and checked["canary_workers"] == 1
        assert checked["canary_nodes"] == {"0": "node-a"}
        assert canary.after_publish(model, pool, 4) == {}  # once
        pool.restart(1, node="node-b")  # its node was lost: Ray restarted it on another
        pool.sync(model)
        assert canary.after_publish(model, pool, 5)["canary_nodes"] == {"1": "node-b"}
        pool.restart(1, ignores_loads=True)
        _move(model)
        pool.sync(model)
        with pytest.raises(SyncCanaryError, match="rollout worker 1 serves policy-v6"):
            canary.after_publish(model, pool, 6)
    finally:
        _move(model, -1.5)


def test_a_restart_an_unchecked_publish_reveals_is_checked_at_the_next(policy):
    """One step ahead, a publish's loads finish after the learner moved on: it is counted unchecked, and
    a restart its loads reveal makes the next publish due a check of that worker (before the schedule's)."""
    from polyray.learner.sync import SyncCanary, SyncCanaryError

    model, tok = policy
    pool = ScoringPool(model, tok)
    canary = SyncCanary(every=4, probe=([5, 6, 7], [8, 9, 10]), pad_id=tok.pad_token_id)
    assert canary.checks_next()  # the attempt's first publish
    assert canary.after_publish(model, pool, 1)["canary_workers"] == 2
    try:
        for _ in range(3):  # publishes 2 to 4: unchecked, nothing restarted
            assert not canary.checks_next()
            canary.after_unchecked(pool.incarnations())
        assert canary.checks_next()  # publish 5 = the schedule's (every 4th after the first)
        pool.calls.clear()
        assert canary.after_publish(model, pool, 5)["canary_workers"] == 1 and pool.calls == [0]
        pool.restart(1, ignores_loads=True)  # a new process that serves what it pulled itself
        assert not canary.checks_next()
        canary.after_unchecked(pool.incarnations())  # publish 6's loads reveal it
        assert canary.checks_next()  # publish 7 is checked, off the schedule
        _move(model)
        pool.sync(model)
        with pytest.raises(SyncCanaryError, match="rollout worker 1 serves policy-v7"):
            canary.after_publish(model, pool, 7, pool.incarnations())
        assert not canary.checks_next()  # seen once: the restart is no longer pending
    finally:
        _move(model, -0.5)


def test_a_phase_sampling_at_another_temperature_is_checked_at_it(policy):
    """At T != 1 the canary also has the worker draw a completion as rollouts are drawn and compares its
    sampling-time log-probs with the learner's log softmax(logits / T) of the drawn tokens."""
    from polyray.learner.sync import SyncCanary, SyncCanaryError

    model, tok = policy
    probe = ([5, 6, 7], [8, 9, 10])
    pool = ScoringPool(model, tok)
    metrics = SyncCanary(every=1, probe=probe, pad_id=tok.pad_token_id, temperature=0.5).after_publish(model, pool, 1)
    assert metrics["canary_gap"] < 1e-6 and metrics["canary_gap_t"] < 1e-5
    assert "canary_gap_t" not in SyncCanary(every=1, probe=probe, pad_id=tok.pad_token_id).after_publish(model, pool, 1)

    pool.sampling_logprobs_at_t1 = True  # scores match, but its rollouts' log-probs are not the sampling distribution's
    with pytest.raises(
        SyncCanaryError, match="rollout worker 0 serves policy-v1, sampling at temperature 0.5, with log-probs"
    ):
        SyncCanary(every=1, probe=probe, pad_id=tok.pad_token_id, temperature=0.5).after_publish(model, pool, 1)


def test_a_worker_serving_the_base_model_is_caught_short_of_the_tolerance(policy):
    """The adapter moved the probe's log-probs by less than the tolerance (float32: 1e-3 RMS) but well past
    the kernels' noise: a worker that serves the base model (it never loaded an adapter) is nearer the
    base model's log-probs than the published ones', and the canary names it; the last version checked
    is a reference too."""
    from polyray.learner.sync import NOISE, TOLERANCE, SyncCanary, SyncCanaryError, rms

    model, tok = policy
    model = copy.deepcopy(model)
    probe = ([5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16])
    canary = SyncCanary(every=1, probe=probe, pad_id=tok.pad_token_id)
    base = canary.learner_logprobs(model, *probe, 1.0, adapter=False)
    for _ in range(3):  # scale the adapter until it moves the probe by about 5e-4 RMS (near linear close to 0)
        learner = canary.learner_logprobs(model, *probe, 1.0)
        _scale_adapter(model, 5e-4 / rms(learner - base))
    learner = canary.learner_logprobs(model, *probe, 1.0)
    assert 2 * NOISE["float32"] < rms(learner - base) < TOLERANCE["float32"]

    pool = ScoringPool(model, tok)
    with model.disable_adapter():
        pool.served[1] = copy.deepcopy(model)  # worker 1 serves the base model under every version
    pool.ignores_loads.add(1)
    with pytest.raises(SyncCanaryError, match="rollout worker 1 serves policy-v1 .* it serves the base model, not"):
        canary.after_publish(model, pool, 1)

    pool.served[1] = pool.served[0]  # fixed: both serve version 1, which passes
    canary = SyncCanary(every=1, probe=probe, pad_id=tok.pad_token_id)
    assert canary.after_publish(model, pool, 1)["canary_gap"] < 1e-6
    assert canary.after_publish(model, pool, 2)["canary_gap"] < 1e-6  # the same weights again: v1 is no reference
    _scale_adapter(model, 1.5)  # a step that moves the probe by about 2.5e-4 RMS
    assert 2 * NOISE["float32"] < rms(canary.learner_logprobs(model, *probe, 1.0) - learner) < TOLERANCE["float32"]
    with pytest.raises(SyncCanaryError, match="rollout worker 1 serves policy-v3 .* it serves policy-v2, not"):
        canary.after_publish(model, pool, 3)  # the workers kept version 2's weights


def _scale_adapter(model, by: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(by)
