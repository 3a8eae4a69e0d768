"""The sync canary's schedule and verdict, against a stand-in worker that scores with given weights.

The real-worker case (vLLM keeping stale weights) is in tests/integration/test_rollout_sync.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from phase_harness import build_policy, tiny_model_dir

pytestmark = [pytest.mark.slow]


class ScoringPool:
    """Workers that score with a frozen copy of the weights they were last given."""

    def __init__(self, model, tokenizer, n_workers: int = 2):
        self.workers = list(range(n_workers))
        self.served = copy.deepcopy(model)
        self.tokenizer = tokenizer
        self.calls: list[int] = []

    def score(self, prompt_ids, completion_ids, version, worker=0):
        from polyray.models.batching import pack_sequences, token_logprobs

        self.calls.append(worker)
        with torch.no_grad():
            logp, mask = token_logprobs(self.served, pack_sequences([prompt_ids], [completion_ids], self.tokenizer.pad_token_id))
        return logp[0][mask[0].bool()].tolist()


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
    assert pool.calls == [0, 1, 0]  # one worker per check, in turn
    assert SyncCanary(every=0, probe=([5], [6]), pad_id=0).after_publish(model, pool, 1) == {}


def test_stale_worker_stops_the_run(policy):
    from polyray.learner.sync import SyncCanary, SyncCanaryError

    model, tok = policy
    pool = ScoringPool(model, tok)
    canary = SyncCanary(every=1, probe=([5, 6, 7], [8, 9, 10, 11]), pad_id=tok.pad_token_id)
    assert canary.after_publish(model, pool, 1)["canary_gap"] < 1e-6  # same weights on both sides
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    with pytest.raises(SyncCanaryError, match="rollout worker 1 serves policy-v2"):
        canary.after_publish(model, pool, 2)  # the learner moved on, the worker did not
