"""Where GRPO's rewards come from (``reward``) and a phase's own reward (``phases.N.reward``).

Names are the reward registry's (:data:`~polyray.config.names.RewardName`), checked when the
file loads; the parameters are each reward's own and are checked at run start, over those the
task supplies (:mod:`polyray.reward.scorer`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from polyray.config.names import RewardName
from polyray.io import StrictModel


class RewardConfig(StrictModel):
    """Where GRPO rewards come from: the Ray Serve reward service, or the task's judge in-process."""

    endpoint: bool = Field(
        False, description="Score through the reward service's DeploymentHandle (started with the run if absent)."
    )
    name: RewardName | None = Field(
        None,
        description="Registry reward that scores GRPO rollouts (GET /v1/rewards lists them; None: the task's own,"
        " e.g. countdown, code_exec, engagement); 'weighted_sum' adds several: params {components: [{name, weight,"
        " params}]}.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Parameters of the reward, over those the task supplies (checked at run start)."
    )
    app_name: str = Field("reward", description="Serve application name of the reward service.")
    http_port: int | None = Field(
        None, ge=1, le=65535, description="Also serve HTTP on this port (None: in-cluster handle only)."
    )
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per reward replica.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds the learner waits for one scoring call.")
    retries: int = Field(
        5, ge=0, description="Times a scoring call is retried when its replica died or timed out (Serve restarts replicas)."
    )


class PhaseRewardConfig(StrictModel):
    """A phase's own reward (e.g. correctness first, then correctness plus a length term)."""

    name: RewardName = Field(..., description="Registry reward, or 'weighted_sum' with params {components: [...]}.")
    params: dict[str, Any] = Field(default_factory=dict, description="Its parameters, over those the task supplies.")
