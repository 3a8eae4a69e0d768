"""A learner step does not depend on the number of learner workers.

Each phase (SFT, polychromic SFT, GRPO in every aggregation mode, GRPO with dynamic
sampling, GRPO with rehearsal, expert iteration) takes one step on the same data with 1 rank and with 2 and 3 gloo ranks under
DDP; the averaged gradients must equal the one-rank full-batch gradients, and the logged
metrics (loss, KL, clip fraction, ratio and weight means) the one-rank batch's. The batches have
odd sizes (5 references, 9 or 6 sequences), so the shards are unequal, and with 3 ranks
the dynamic-sampling case gives one rank fewer sequences than the others.
"""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import MISMATCH_METRICS, PHASE_CASES, multi_rank_grads, step_grads, tiny_model_dir

pytestmark = [pytest.mark.slow]

WHOLE_BATCH_METRICS = (
    "loss",
    "nll",
    "rehearsal_nll",
    "kl",
    "clip_frac",
    "ratio_mean",
    "diversity_surrogate",
    "adv_mean",
    "weight_mean",
    *MISMATCH_METRICS,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def single_rank(model_dir):
    torch.set_num_threads(1)
    return {name: step_grads(model_dir, name) for name in PHASE_CASES}


@pytest.mark.parametrize("world", [2, 3])
def test_multi_rank_gradients_equal_single_rank(model_dir, single_rank, world, tmp_path):
    multi = multi_rank_grads(model_dir, world, list(PHASE_CASES), tmp_path / f"grads-{world}.pt")
    for name, (grads_1, metrics_1) in single_rank.items():
        grads_w, metrics_w = multi[name]
        if name.startswith("grpo"):  # the mismatch measures are compared, not skipped
            assert set(MISMATCH_METRICS) <= set(metrics_1), name
        assert set(grads_w) == set(grads_1)
        assert any(g.abs().max() > 0 for g in grads_1.values()), f"{name}: the test needs non-zero gradients"
        for param, g in grads_1.items():
            torch.testing.assert_close(grads_w[param], g, rtol=1e-4, atol=1e-7, msg=f"{name} {param} world={world}")
        for key in WHOLE_BATCH_METRICS:  # the whole batch's, not rank 0's shard
            if key in metrics_1:
                assert metrics_w[key] == pytest.approx(metrics_1[key], rel=1e-5, abs=1e-7), (
                    f"{name} {key} world={world}"
                )
    assert multi["grpo_dynamic_sampling"][1]["kept_groups"] == 1  # 2 sequences: with 3 ranks one shard is empty


def test_per_rank_normalisation_would_differ():
    """Sanity: a shard's own token mean (the old DAPO bug) is not the batch's token mean."""
    from polyray.objectives.grpo import aggregate_token_loss

    per_token = torch.tensor([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    whole = aggregate_token_loss(per_token, mask, "token_mean")
    shards = [aggregate_token_loss(per_token[i : i + 1], mask[i : i + 1], "token_mean", num_tokens=4) for i in (0, 1)]
    assert float(sum(shards)) == pytest.approx(float(whole)) == pytest.approx(7 / 4)
    own = [aggregate_token_loss(per_token[i : i + 1], mask[i : i + 1], "token_mean") for i in (0, 1)]
    assert float(sum(own)) / 2 != pytest.approx(float(whole))


def test_the_worker_function_on_two_ranks_trains_one_model(model_dir, tmp_path):
    """The learner's worker function (run_worker) on 2 gloo ranks, as Ray Train runs it (the NCCL case is
    in tests/gpu): both ranks end with the adapter rank 0 saved."""
    from support.phase_harness import check_ranks_trained_one_model, run_sft_ranks

    out = tmp_path / "run"
    check_ranks_trained_one_model(out, run_sft_ranks(model_dir, out, world=2))
