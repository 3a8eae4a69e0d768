"""TrainBatch: built from rollout groups, sharded over learner ranks, and a sharded loss equals the whole batch's.

Each rank normalises its shard by the whole batch's counts (docs/algorithms.md §2 "Learner
ranks"), so the shards' losses summed over any number of ranks must equal the one-rank loss.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from polyray.learner.batch import Sequences, TrainBatch
from polyray.objectives.grpo import compute_grpo_loss
from polyray.objectives.polychromic import compute_polychromic_sft_loss
from polyray.rollout.worker import Sample

B, G = 5, 3


def _groups(seed: int = 0, b: int = B, g: int = G) -> list[list[Sample]]:
    """b groups of g samples: prompts of 2..4 tokens, completions of 1..5, a log-prob per token."""
    rng = random.Random(seed)
    groups = []
    for i in range(b):
        prompt = [rng.randrange(100) for _ in range(rng.randint(2, 4))]
        group = []
        for _ in range(g):
            ids = [rng.randrange(100) for _ in range(rng.randint(1, 5))]
            group.append(Sample(i, "", prompt, ids, [-rng.uniform(0.1, 3.0) for _ in ids], 1, True))
        groups.append(group)
    return groups


def _advantages(b: int = B, g: int = G) -> torch.Tensor:
    return torch.randn(b, g, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_from_groups_lays_out_sequences_group_by_group():
    groups, adv = _groups(), _advantages()
    batch = TrainBatch.from_groups(groups, adv)
    assert len(batch) == B * G and batch.group_size == G and batch.num_groups == B
    assert batch.advantages.shape == (B * G,) and batch.advantages.dtype == torch.float64
    for b in range(B):
        for g in range(G):
            i, s = b * G + g, groups[b][g]
            assert batch.prompt_ids[i] == s.prompt_token_ids and batch.completion_ids[i] == s.token_ids
            assert batch.sample_logprobs[i] == s.logprobs and batch.advantages[i] == adv[b, g]
    assert batch.num_tokens() == sum(len(s.token_ids) for g in groups for s in g)
    assert batch.sequence_logprobs()[4] == sum(groups[1][1].logprobs)


def test_from_groups_keeps_only_the_kept_groups():
    groups, adv = _groups(), _advantages()
    keep = torch.tensor([False, True, False, False, True])
    batch = TrainBatch.from_groups(groups, adv, keep)
    assert batch.num_groups == 2 and batch.completion_ids == [s.token_ids for b in (1, 4) for s in groups[b]]
    assert torch.equal(batch.advantages, torch.cat([adv[1], adv[4]]))


def _concat(shards: list[TrainBatch]) -> list[tuple]:
    return [
        (tuple(s.prompt_ids[i]), tuple(s.completion_ids[i]), tuple(s.sample_logprobs[i]), float(s.advantages[i]))
        for s in shards
        for i in range(len(s))
    ]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("whole_groups", [False, True])
def test_the_shards_of_all_ranks_make_the_whole_batch(world, whole_groups):
    batch = TrainBatch.from_groups(_groups(), _advantages())
    shards = [batch.shard(rank, world, whole_groups=whole_groups) for rank in range(world)]
    unit = G if whole_groups else 1
    for rank, shard in enumerate(shards):
        units = list(range(len(batch) // unit))[rank::world]  # strided: unit u goes to rank u % world
        assert len(shard) == len(units) * unit and shard.advantages.shape == (len(shard),)
        assert _concat([shard]) == [_concat([batch])[u * unit + k] for u in units for k in range(unit)]
        assert shard.group_size == (G if whole_groups else None)
    assert sorted(_concat(shards)) == sorted(_concat([batch]))
    assert sum(len(s) for s in shards) == len(batch)
    if world > B * G:
        assert len(shards[-1]) == 0 and shards[-1].num_tokens() == 0  # more ranks than sequences


def test_a_sequence_shard_does_not_claim_whole_groups():
    shard = TrainBatch.from_groups(_groups(), _advantages()).shard(0, 2)
    with pytest.raises(ValueError, match="whole groups"):
        shard.num_groups


def test_target_logprobs_sit_on_the_packed_completion_targets():
    batch = TrainBatch.from_groups(_groups(), _advantages())
    packed = batch.pack(pad_id=0)
    mask = packed.completion_mask[:, 1:]
    old = batch.target_logprobs(mask.shape[1], torch.float64)
    assert old.shape == mask.shape and torch.all(old[mask == 0] == 0)
    for i in range(len(batch)):
        assert old[i][mask[i] > 0].tolist() == batch.sample_logprobs[i]
        targets = packed.input_ids[i, 1:][mask[i] > 0].tolist()  # the tokens those log-probs are of
        assert targets == batch.completion_ids[i]


def test_sequences_pack_and_count():
    refs = Sequences([[1, 2], [3]], [[4, 5, 6], [7]])
    assert len(refs) == 2 and refs.num_tokens() == 4
    packed = refs.pack(pad_id=0)
    assert packed.input_ids.tolist() == [[1, 2, 4, 5, 6], [3, 7, 0, 0, 0]]
    assert packed.rows(1, 2).input_ids.tolist() == [[3, 7, 0, 0, 0]]


def _policy_logprobs(shard: TrainBatch, width: int) -> torch.Tensor:
    """A stand-in for log pi_theta: each token's sampling log-prob moved by an amount set by its token id,
    so every sequence gets the same values whichever shard it is in (and the ratios differ from 1)."""
    out = shard.target_logprobs(width, torch.float64)
    for i, (prompt, completion) in enumerate(zip(shard.prompt_ids, shard.completion_ids)):
        start = len(prompt) - 1
        shift = torch.tensor([(t % 7 - 3) / 10 for t in completion], dtype=torch.float64)
        out[i, start : start + len(completion)] += shift
    return out


def _grpo_shard_loss(shard: TrainBatch, aggregation: str, n_seq: int, n_tok: int) -> float:
    mask = shard.pack(pad_id=0).completion_mask[:, 1:].double()
    logp = _policy_logprobs(shard, mask.shape[1])
    loss, _ = compute_grpo_loss(
        logp,
        shard.target_logprobs(mask.shape[1], torch.float64),
        None,
        shard.advantages,
        mask,
        aggregation=aggregation,
        max_len=5,
        num_sequences=n_seq,
        num_tokens=n_tok,
    )
    return float(loss)


def _grpo_loop(batch: TrainBatch, aggregation: str, eps: float = 0.2) -> float:
    """The whole batch's loss as a float64 Python loop over sequences and tokens."""
    rows = []
    for i, completion in enumerate(batch.completion_ids):
        a = float(batch.advantages[i])
        terms = []
        for t, lp in zip(completion, batch.sample_logprobs[i]):
            rho = math.exp((t % 7 - 3) / 10)  # log pi_theta - log pi_old, as _policy_logprobs sets it
            terms.append(-min(rho * a, min(max(rho, 1 - eps), 1 + eps) * a))
        rows.append(terms)
    n, tokens = len(rows), sum(len(r) for r in rows)
    if aggregation == "seq_mean_token_mean":
        return sum(sum(r) / len(r) for r in rows) / n
    if aggregation == "token_mean":
        return sum(map(sum, rows)) / tokens
    return sum(map(sum, rows)) / (n * 5)


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_grpo_loss_summed_over_shards_is_the_whole_batch_loss(aggregation, world):
    batch = TrainBatch.from_groups(_groups(), _advantages())
    n_seq, n_tok = len(batch), batch.num_tokens()  # the whole batch's counts, as ctx.global_sum gives every rank
    shards = [batch.shard(rank, world) for rank in range(world)]
    total = sum(_grpo_shard_loss(s, aggregation, n_seq, n_tok) for s in shards)
    assert total == pytest.approx(_grpo_shard_loss(batch, aggregation, n_seq, n_tok), rel=1e-12)
    assert total == pytest.approx(_grpo_loop(batch, aggregation), rel=1e-12)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_polychromic_surrogate_summed_over_group_shards_is_the_whole_batch_one(world):
    batch = TrainBatch.from_groups(_groups(), _advantages())

    def surrogate(shard: TrainBatch) -> float:
        shape = (shard.num_groups, shard.group_size)
        old = torch.tensor(shard.sequence_logprobs(), dtype=torch.float64).view(shape)
        logp = old + torch.tensor([0.1 * len(c) for c in shard.completion_ids], dtype=torch.float64).view(shape)
        nll = torch.zeros((), dtype=torch.float64)
        _, metrics = compute_polychromic_sft_loss(
            nll, logp, shard.advantages.view(shape), 0.5, old, 2.0, num_groups=batch.num_groups
        )
        return metrics["diversity_surrogate"]

    total = sum(surrogate(batch.shard(rank, world, whole_groups=True)) for rank in range(world))
    expected = 0.0  # (1/B) sum_b sum_i a w log pi, w = min(exp(0.1 L), 2)
    for i, c in enumerate(batch.completion_ids):
        logp = batch.sequence_logprobs()[i] + 0.1 * len(c)
        expected += float(batch.advantages[i]) * min(math.exp(0.1 * len(c)), 2.0) * logp
    assert total == pytest.approx(expected / B, rel=1e-12)
    assert total == pytest.approx(surrogate(batch), rel=1e-12)
