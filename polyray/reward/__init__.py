"""Reward functions behind one registry, the sandbox they use, and the scorer the service wraps.

Importing this package registers the built-in reward functions: ``countdown`` (task
verifier), ``code_exec`` (sandboxed unit tests), ``engagement`` (learned reward model),
``length`` (heuristic), ``reference_similarity`` (ROUGE or embedding cosine against the reference),
``llm_judge`` (a judge model over an OpenAI-compatible endpoint), ``custom`` (a function of the
user's, ``my_rewards.py:score``) and ``weighted_sum`` (a weighted sum of the others, scored through a
:class:`~polyray.reward.scorer.RewardScorer`). Heavy dependencies (torch,
sentence-transformers) load only when an engagement model is built.
"""

from polyray.reward import code_exec, countdown, custom, engagement, heuristic, llm_judge, similarity, weighted  # noqa: F401  (register)
from polyray.reward.base import (
    REWARD_FUNCTIONS,
    RewardError,
    RewardFunction,
    RewardItem,
    RewardResult,
    UnknownRewardError,
    build_reward,
    known_rewards,
)

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardError",
    "RewardFunction",
    "RewardItem",
    "RewardResult",
    "UnknownRewardError",
    "build_reward",
    "known_rewards",
]
