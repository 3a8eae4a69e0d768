"""The DPO phase's pairs: each prompt's best- and worst-rewarded samples, where they differ."""

from __future__ import annotations

import math

import torch

from polyray.learner.phases.dpo import preference_pairs
from polyray.rollout.worker import Sample


def _group(b: int, n: int) -> list[Sample]:
    return [Sample(b, f"{b}-{g}", [1, b], [10 * b + g], [-1.0], 0, True) for g in range(n)]


def test_pairs_the_best_with_the_worst_skipping_ties_and_unscored():
    groups = [_group(b, 3) for b in range(4)]
    rewards = torch.tensor(
        [[0.0, 1.0, 0.5], [1.0, 1.0, 1.0], [math.nan, 0.2, 0.7], [0.3, math.nan, 0.3]], dtype=torch.float64
    )
    batch = preference_pairs(groups, rewards)
    assert batch.group_size == 2 and batch.num_groups == 2  # prompt 1 ties, prompt 3's scored samples tie
    assert batch.completion_ids == [[1], [0], [22], [21]]  # (chosen, rejected) of prompts 0 and 2
    assert batch.advantages.tolist() == [1.0, -1.0, 1.0, -1.0]
    assert batch.shard(1, 2, whole_groups=True).completion_ids == [[22], [21]]  # whole pairs per rank


def test_first_of_equals_and_no_pairs_at_all():
    batch = preference_pairs([_group(0, 4)], torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64))
    assert batch.completion_ids == [[0], [1]]
    empty = preference_pairs([_group(0, 2)], torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    assert len(empty) == 0 and empty.num_groups == 0 and empty.shard(0, 2, whole_groups=True).num_groups == 0
