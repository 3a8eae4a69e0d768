"""Every advantage estimator's config model, keyed by ``type`` (docs/algorithms.md §3), and GRPO's loss settings.

A GRPO phase's ``advantage`` section is one of these, e.g. ``{type: passk, k: 4}``. The
estimators themselves (pure tensor functions) and their registry ``ADVANTAGE_ESTIMATORS``
live in :mod:`polyray.objectives.advantages`; ``tests/unit/config/test_registries.py`` keeps its
keys equal to the ``type`` literals here. Each model checks its own parameters, and whether
they fit a group of G samples (:meth:`AdvantageConfigBase.check_group`, which the phase calls
with its ``group_size``).

Also :data:`Aggregation` (the GRPO token-loss aggregations of :mod:`polyray.objectives.grpo`)
and :data:`MAX_SUBSETS` (the most k-subsets enumerated exactly, :mod:`polyray.objectives.polychromic`).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from polyray.config.names import DiversityName
from polyray.io import StrictModel

MAX_SUBSETS = 5000
"""Most k-subsets of a group enumerated exactly (C(n, k) past it: an error, or a Monte-Carlo estimate)."""

Aggregation = Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
"""GRPO token-loss aggregation: GRPO's per-sequence mean, DAPO's token mean, Dr. GRPO's sum over L_max."""


class AdvantageConfigBase(StrictModel):
    """What every estimator's config answers: whether its parameters fit a group, and whether it
    needs binary rewards (checked against the phase's reward before a run starts); and the one
    setting every estimator has, ``match_group_scale``."""

    match_group_scale: bool = Field(
        False,
        description="Rescale the advantages, per step, to the mean |A| that group (r − mean)/(std + eps)"
        " gives the same rewards: the same step size as group, only the direction differs.",
    )

    def check_group(self, group_size: int) -> None:
        """Raise ValueError when this estimator cannot run on groups of ``group_size`` samples."""

    def needs_binary_rewards(self) -> bool:
        return False


class _SubsetSize(AdvantageConfigBase):
    def check_group(self, group_size: int) -> None:
        if self.k > group_size:
            raise ValueError(f"advantage.k ({self.k}) must be <= group_size ({group_size})")


class GroupAdvantageConfig(AdvantageConfigBase):
    """(r − mean) / (std + eps) per group; ``scale_by_std: false`` is Dr. GRPO."""

    type: Literal["group"] = "group"
    scale_by_std: bool = Field(True, description="Divide by the group std (off = Dr. GRPO).")


class RlooAdvantageConfig(AdvantageConfigBase):
    """r_i − mean of the other samples' rewards."""

    type: Literal["rloo"] = "rloo"


class PassKAdvantageConfig(_SubsetSize):
    """The analytic pass@k advantage for binary rewards."""

    type: Literal["passk"] = "passk"
    k: int = Field(4, ge=1, description="k of pass@k (<= group_size).")

    def needs_binary_rewards(self) -> bool:
        # pass@k counts correct samples
        return True


class PolychromicAdvantageConfig(_SubsetSize):
    """Set-marginal advantage of f(S) = mean reward × diversity over k-subsets."""

    type: Literal["polychromic"] = "polychromic"
    k: int = Field(4, ge=2, description="Subset size (2 <= k <= group_size; a single sample has no diversity).")
    diversity: DiversityName = Field("countdown_expr", description="Set diversity d(S).")
    max_subsets: int = Field(MAX_SUBSETS, ge=1, description="All C(G, k) subsets up to this many.")
    sample_subsets: int | None = Field(
        None, ge=1, description="Past max_subsets, this many uniformly drawn subsets (Monte Carlo); unset = an error."
    )

    def check_group(self, group_size: int) -> None:
        super().check_group(group_size)
        subsets = math.comb(group_size, self.k)
        if subsets > self.max_subsets and self.sample_subsets is None:
            raise ValueError(
                f"C(group_size, advantage.k) = {subsets} subsets exceeds max_subsets"
                f" ({self.max_subsets}): set advantage.sample_subsets for a Monte-Carlo estimate"
            )


class UnlikelinessAdvantageConfig(AdvantageConfigBase):
    """Rewards scaled by 1 − β·rank/G, rank of the sample's likelihood in its group, then group-normalised."""

    type: Literal["unlikeliness"] = "unlikeliness"
    beta: float = Field(0.25, ge=0.0, le=1.0, description="β: how much the most likely sample's reward shrinks.")
    scale_by_std: bool = Field(True, description="Divide by the group std of the shaped rewards.")


class RepeatPenaltyAdvantageConfig(AdvantageConfigBase):
    """Rewards minus β · (other samples with the same answer)/(G − 1), then group-normalised."""

    type: Literal["repeat_penalty"] = "repeat_penalty"
    beta: float = Field(0.5, ge=0.0, description="β: the penalty when every other sample repeats the answer.")
    answer: Literal["text", "countdown_expr"] = Field(
        "text", description="What counts as the same answer: whitespace-normalised text, or the canonical expression."
    )
    scale_by_std: bool = Field(True, description="Divide by the group std of the shaped rewards.")


class PolychromicCorrectAdvantageConfig(PolychromicAdvantageConfig):
    """Set-marginal advantage of f(S) = mean reward × diversity of S's *correct* samples over k-subsets."""

    type: Literal["polychromic_correct"] = "polychromic_correct"
    threshold: float = Field(1.0, description="A sample is correct when its reward is >= this (1.0: binary rewards).")
    single: float = Field(
        1.0,
        ge=0.0,
        description="d of a set with one correct sample (1.0: a lone correct answer is one distinct"
        " answer, as countdown_expr's distinct/n counts it); no correct sample: 0.",
    )


class WReinforceAdvantageConfig(AdvantageConfigBase):
    """W-REINFORCE: A = λ for a correct sample, −1 for a wrong one; no baseline."""

    type: Literal["w_reinforce"] = "w_reinforce"
    lam: float = Field(0.1, ge=0.0, description="λ: weight of the correct samples' (positive) reinforcement.")

    def needs_binary_rewards(self) -> bool:
        # the paper's ±1 rewards are polyray's 1/0
        return True


class RiskSeekingAdvantageConfig(AdvantageConfigBase):
    """Risk-seeking (RS-GRPO): A_i = (exp(β(r_i − S)) − 1)/β, S = (1/β)·log mean_j exp(β r_j) of the group."""

    type: Literal["risk_seeking"] = "risk_seeking"
    beta: float = Field(
        2.0,
        gt=0.0,
        allow_inf_nan=False,
        description="β > 0: how risk-seeking; β → 0 is r − mean r, a larger β weights a group's rare high rewards more.",
    )


BASE_ADVANTAGE_CONFIGS: tuple[type[AdvantageConfigBase], ...] = (
    GroupAdvantageConfig,
    RlooAdvantageConfig,
    PassKAdvantageConfig,
    PolychromicAdvantageConfig,
    UnlikelinessAdvantageConfig,
    RepeatPenaltyAdvantageConfig,
    PolychromicCorrectAdvantageConfig,
    WReinforceAdvantageConfig,
    RiskSeekingAdvantageConfig,
)

BaseAdvantageConfig = Annotated[Union[BASE_ADVANTAGE_CONFIGS], Field(discriminator="type")]
"""An estimator that is not a blend (what ``mix`` blends)."""


class MixAdvantageConfig(AdvantageConfigBase):
    """(1 − w)·A_early + w·A_late, w moving from 0 to 1 as the phase goes from ``start`` to ``end``."""

    type: Literal["mix"] = "mix"
    early: BaseAdvantageConfig = Field(..., description="Estimator at the phase's start (e.g. {type: passk, k: 4}).")
    late: BaseAdvantageConfig = Field(..., description="Estimator at its end (e.g. {type: group}).")
    start: float = Field(0.0, ge=0.0, le=1.0, description="Fraction of the phase's steps where w starts rising.")
    end: float = Field(1.0, ge=0.0, le=1.0, description="Fraction where w reaches 1 (start = end: a switch).")

    @model_validator(mode="after")
    def _ordered(self) -> "MixAdvantageConfig":
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must be >= start ({self.start})")
        return self

    def check_group(self, group_size: int) -> None:
        self.early.check_group(group_size)
        self.late.check_group(group_size)

    def needs_binary_rewards(self) -> bool:
        return self.early.needs_binary_rewards() or self.late.needs_binary_rewards()


class AnnealAdvantageConfig(_SubsetSize):
    """passk → group (pass@k → pass@1) at ``start``..``end`` of the phase, both scaled to group's mean |A|."""

    type: Literal["anneal"] = "anneal"
    k: int = Field(4, ge=1, description="k of the early pass@k advantage (<= group_size).")
    start: float = Field(0.5, ge=0.0, le=1.0, description="Fraction of the phase's steps where the switch starts.")
    end: float = Field(0.5, ge=0.0, le=1.0, description="Fraction where it is done (start = end: a switch).")
    match_group_scale: bool = Field(
        True,
        description="Also rescale the blend to group's mean |A| (while both are blended, their sum is"
        " shorter than either when they disagree); each component is always matched.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> "AnnealAdvantageConfig":
        if self.end < self.start:
            raise ValueError(f"end ({self.end}) must be >= start ({self.start})")
        return self

    def needs_binary_rewards(self) -> bool:
        # its early phase is pass@k
        return True

    def as_mix(self) -> MixAdvantageConfig:
        """The ``mix`` this anneal is: passk (matched) early, group (matched) late."""
        return MixAdvantageConfig(
            early=PassKAdvantageConfig(k=self.k, match_group_scale=True),
            late=GroupAdvantageConfig(match_group_scale=True),
            start=self.start,
            end=self.end,
            match_group_scale=self.match_group_scale,
        )


ADVANTAGE_CONFIGS: tuple[type[AdvantageConfigBase], ...] = (
    *BASE_ADVANTAGE_CONFIGS,
    MixAdvantageConfig,
    AnnealAdvantageConfig,
)

AdvantageConfig = Annotated[Union[ADVANTAGE_CONFIGS], Field(discriminator="type")]
"""Any estimator: a GRPO phase's ``advantage``."""
