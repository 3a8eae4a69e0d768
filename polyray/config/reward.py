"""Where GRPO's rewards come from (``reward``) and a phase's own reward (``phases.N.reward``).

Names are the reward registry's (:data:`~polyray.config.names.RewardName`), checked when the
file loads; the parameters are each reward's own and are checked at run start, over those the
task supplies (:mod:`polyray.reward.scorer`). One exception: the ``custom`` reward's ``function``
(``my_rewards.py:score`` or ``package.module:score``, also as a ``weighted_sum`` component) is
checked when the file loads (the file exists, imports, has that callable, which takes the reward's
keywords), and a file path is made absolute (:mod:`polyray.config.functions`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from polyray.config.functions import FunctionRefError, load_function, resolve_ref
from polyray.config.names import RewardName
from polyray.io import StrictModel


class RewardConfig(StrictModel):
    """Where GRPO rewards come from: the Ray Serve reward service, or the task's judge in-process."""

    endpoint: bool = Field(
        False,
        description="Score through the handle of the reward service's learner app '<app_name>-learner' (no HTTP"
        " route; deployed with the run if absent, beside a running public app too).",
    )
    name: RewardName | None = Field(
        None,
        description="Registry reward that scores GRPO rollouts (GET /v1/rewards lists them; None: the task's own,"
        " e.g. countdown, code_exec, engagement); 'weighted_sum' adds several: params {components: [{name, weight,"
        " params}]}.",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        # name: custom without params still needs its function
        validate_default=True,
        description="Parameters of the reward, over those the task supplies (checked at run start); 'custom':"
        " {function: my_rewards.py:score}, a function of yours (docs/design.md, 'Custom rewards').",
    )

    app_name: str = Field(
        "reward",
        description="Serve application name of the public (HTTP) reward service; the learner scores through"
        " '<app_name>-learner', an app of its own that HTTP cannot reach (reused if running).",
    )
    http_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Also deploy the public app '<app_name>' at / on this port, on replicas of its own (None: the"
        " learner's handle-only app alone).",
    )
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per reward replica (one per app the run deploys).")
    timeout_s: float = Field(120.0, gt=0, description="Seconds the learner waits for one scoring call.")
    retries: int = Field(
        5,
        ge=0,
        description="Times a scoring call is retried when its replica died or timed out (Serve restarts replicas).",
    )

    @field_validator("params")
    @classmethod
    def _custom_functions(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return check_custom_functions(info.data.get("name"), v)

    def service_cpus(self) -> float:
        """Ray CPUs the run's reward replicas reserve: the learner app's, and the public app's with ``http_port``."""
        if not self.endpoint:
            return 0.0
        return self.num_cpus * (2 if self.http_port is not None else 1)


class PhaseRewardConfig(StrictModel):
    """A phase's own reward (e.g. correctness first, then correctness plus a length term)."""

    name: RewardName = Field(..., description="Registry reward, or 'weighted_sum' with params {components: [...]}.")
    params: dict[str, Any] = Field(
        default_factory=dict, validate_default=True, description="Its parameters, over those the task supplies."
    )

    @field_validator("params")
    @classmethod
    def _custom_functions(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return check_custom_functions(info.data.get("name"), v)


def custom_function_params(name: Any, params: dict[str, Any], where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """``(field prefix, params)`` of every ``custom`` reward in ``name``/``params``, a ``weighted_sum``'s components too."""
    if name == "custom":
        return [(where, params)]
    if name != "weighted_sum" or not isinstance(params.get("components"), list):
        return []
    return [
        found
        for i, c in enumerate(params["components"])
        if isinstance(c, dict) and isinstance(c.get("params"), dict)
        for found in custom_function_params(c.get("name"), c["params"], f"{where}components.{i}.params.")
    ]


def check_custom_functions(name: Any, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with each custom reward's ``function`` made absolute and loaded; a ValueError naming
    the field (``function``, ``components.0.params.function``) when one cannot be used."""
    params = {**params}
    # the walk writes resolved references into copies
    if isinstance(params.get("components"), list):
        params["components"] = [
            {**c, "params": {**c["params"]}} if isinstance(c, dict) and isinstance(c.get("params"), dict) else c
            for c in params["components"]
        ]
    for where, found in custom_function_params(name, params):
        ref = found.get("function")
        if not isinstance(ref, str):
            raise ValueError(f"{where}function: required, a string like my_rewards.py:score or package.module:score")
        try:
            found["function"] = resolve_ref(ref)
            load_function(found["function"])
        except FunctionRefError as exc:
            raise ValueError(f"{where}function: {exc}") from None
    return params
