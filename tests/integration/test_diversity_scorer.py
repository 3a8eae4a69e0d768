"""Rank 0's out-of-process diversity scorer on a local Ray cluster: started only where it pays (one
step ahead, an embedding diversity), it gives exactly the in-process advantages, and a scorer whose
process is killed is restarted by Ray and answers again. Here the driver starts it; started by rank 0
of a Ray Train worker group, as phases start it, it ran in `polyray bench polychromic` only."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from polyray.config import PolychromicSFTPhaseConfig
from polyray.objectives.polychromic import compute_diversity_advantages
from polyray.rollout.diversity_scorer import start_diversity_scorer

# serial: with a second test session's cluster on the machine, this module's first actor creation was
# seen to hang in Ray's export of the actor class (a GCS key-value put never answered, 2026-11-26)
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.serial]

GROUPS = [
    ["3 + 4 * 2", "(3 + 4) * 2", "2 * 4 + 3", "the answer is eleven"],
    ["10 - 1", "10 - 1", "9", "a cat sat on the mat"],
]


@pytest.fixture(autouse=True)
def one_thread():
    """The in-process advantages on the scorer's one thread (``start_diversity_scorer(cfg, 1)``): the
    encoder's float sums follow the thread count on some CPUs (oneDNN with AMX), so "exactly" holds per count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cfg(**kw) -> PolychromicSFTPhaseConfig:
    return PolychromicSFTPhaseConfig(name="poly", type="polychromic_sft", **kw)


def test_started_only_one_step_ahead_with_an_embedding_diversity(ray_cluster):
    assert start_diversity_scorer(_cfg(diversity="semantic", async_rollouts=False), 1) is None
    assert start_diversity_scorer(_cfg(diversity="countdown_expr", async_rollouts=True, max_lag=1), 1) is None


def test_the_scorer_gives_the_in_process_advantages_and_survives_a_kill(ray_cluster):
    import ray

    scorer = start_diversity_scorer(_cfg(diversity="semantic", async_rollouts=True, max_lag=1), 1)
    assert scorer is not None
    for estimator, k in (("loo", 0), ("subset", 2)):
        want = compute_diversity_advantages("semantic", GROUPS, estimator, k)
        got = ray.get(scorer.advantages.remote("semantic", GROUPS, estimator, k))
        assert got.dtype == want.dtype == torch.float64 and torch.equal(got, want)
    pid = ray.get(scorer.__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGKILL)
    got = ray.get(scorer.advantages.remote("semantic", GROUPS, "loo", 0), timeout=120)  # restarted
    assert torch.equal(got, compute_diversity_advantages("semantic", GROUPS, "loo", 0))
    assert ray.get(scorer.__ray_call__.remote(lambda self: os.getpid())) != pid


def test_a_scorer_with_the_bfloat16_encoder_gives_its_in_process_advantages(ray_cluster):
    """``embedding_dtype: bfloat16``: the scorer loads that encoder at start and scores with it, exactly as
    the in-process function does with the same option (and not as float32 does)."""
    import ray

    cfg = _cfg(diversity="semantic", async_rollouts=True, max_lag=1, embedding_dtype="bfloat16")
    scorer = start_diversity_scorer(cfg, 1)
    got = ray.get(scorer.advantages.remote("semantic", GROUPS, "loo", 0, "bfloat16"))
    assert torch.equal(got, compute_diversity_advantages("semantic", GROUPS, "loo", 0, "bfloat16"))
    assert not torch.equal(got, compute_diversity_advantages("semantic", GROUPS, "loo", 0))
