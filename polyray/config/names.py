"""The names a config may give a registry entry, declared here so configs load without the registries.

A diversity function (``phases.N.diversity``, ``eval.diversity``, ...) and a reward
(``reward.name``, ``phases.N.reward.name``) are named in YAML; pydantic checks the name when
the file loads, before anything heavy is imported. The registries themselves live with their
implementations (:mod:`polyray.diversity`, :mod:`polyray.reward`), which import torch,
embeddings or the sandbox; ``tests/unit/config/test_registries.py`` keeps each registry's keys equal
to the names declared here, so adding an entry to one side only fails that test.

Task, phase and advantage-estimator names are the ``type`` literals of their config models
(:mod:`polyray.config.tasks`, :mod:`polyray.config.phases`, :mod:`polyray.config.advantages`).
"""

from __future__ import annotations

import re
from typing import Literal

DiversityName = Literal["semantic", "vendi", "distinct_1", "distinct_2", "self_bleu", "countdown_expr"]
"""Set-diversity functions: the keys of ``polyray.diversity.DIVERSITY_FUNCTIONS``."""

RewardName = Literal[
    "code_exec", "countdown", "custom", "engagement", "length", "llm_judge", "reference_similarity", "weighted_sum"
]
"""Reward functions: the keys of ``polyray.reward.REWARD_FUNCTIONS``."""

SelectorName = Literal["oracle", "random", "logprob", "reward_model", "length"]
"""USQ selectors a config may name: the keys of ``polyray.eval.metrics.SELECTORS`` but its generic ``scores``."""

_AT_KEY = re.compile(r"^(pass|usq|der)@(\d+)$")


def split_at_key(key: str) -> tuple[str, int] | None:
    """``"pass@5"`` -> ("pass", 5) for pass@k, usq@k and der@k keys; None for any other key."""
    m = _AT_KEY.match(key)
    return (m.group(1), int(m.group(2))) if m else None
