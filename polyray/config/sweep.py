"""``polyray sweep``'s file: a base run config, the axes of the search and the objective chosen on.

Selection is on validation only (:data:`SELECTED_ON`): an objective or a selection metric on the test
set fails when the file loads (:func:`check_selection_metric`), since the test set reports what was
chosen and must not choose it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from polyray.io import StrictModel


class Axis(StrictModel):
    """One search axis: exactly one of ``grid`` (every value), ``choice`` (one, sampled), ``uniform``
    or ``loguniform`` ([low, high], sampled)."""

    grid: list[Any] | None = Field(None, description="Every value is tried (Tune grid_search).")
    choice: list[Any] | None = Field(None, description="One value sampled per trial.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], sampled uniformly.")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], sampled log-uniformly (low > 0).")

    @model_validator(mode="after")
    def _one_kind(self) -> Axis:
        kinds = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"an axis is exactly one of grid, choice, uniform, loguniform (got {kinds or 'none'})")
        values = getattr(self, kinds[0])
        if kinds[0] in ("grid", "choice") and not values:
            raise ValueError(f"{kinds[0]} needs at least one value")
        if kinds[0] in ("uniform", "loguniform") and not values[0] < values[1]:
            raise ValueError(f"{kinds[0]}: low must be < high, got {list(values)}")
        if kinds[0] == "loguniform" and values[0] <= 0:
            raise ValueError("loguniform: low must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None)

    def tune_domain(self):
        from ray import tune

        kind = self.kind
        if kind == "grid":
            return tune.grid_search(list(self.grid))
        if kind == "choice":
            return tune.choice(list(self.choice))
        low, high = getattr(self, kind)
        return tune.uniform(low, high) if kind == "uniform" else tune.loguniform(low, high)


# the only split a sweep or an experiment selects on
SELECTED_ON = "validation"


class ChosenOnValidation(StrictModel):
    """A metric measured on validation to choose by, and its direction (never the test set)."""

    metric: str = Field(
        "val/pass@1",
        description="val/<m>: the phase's last validation measurement (dynamics probe: pass@k, reward_mean,"
        " diversity/<name>). Selection is on validation only; the test set reports what was chosen.",
    )
    mode: str = Field("max", pattern="^(max|min)$", description="max or min.")

    @field_validator("metric")
    @classmethod
    def _on_validation(cls, metric: str) -> str:
        return check_selection_metric(metric)


class Objective(ChosenOnValidation):
    """What "best" means: a metric of one phase on the validation prompts (never the test set)."""

    phase: str | None = Field(None, description="Phase whose evaluation counts (default: the last phase).")


def check_selection_metric(metric: str) -> str:
    """``metric`` when it is measured on validation (``val/<m>``); ValueError (one line) when on the test set."""
    if not metric.startswith("val/"):
        raise ValueError(
            f"{metric!r} is measured on the test set; select on validation (val/{metric}),"
            " the test set reports what was chosen"
        )
    return metric


class SweepConfig(StrictModel):
    """A search over run configs: base + task + overrides, and the axes of the space."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Sweep name (runs/<name>/).")
    base: str = Field(..., description="Base run config, relative to the sweep file.")
    task: dict[str, Any] | None = Field(None, description="Task of every trial, in place of the base's.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Partial run config merged onto the base.")
    space: dict[str, Axis] = Field(..., description="Dotted config path -> axis, e.g. phases.0.lam: {grid: [0, 0.3]}.")
    num_samples: int = Field(1, ge=1, description="Samples of the sampled axes per grid point.")
    objective: Objective = Field(default_factory=Objective)
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at once.")

    @model_validator(mode="after")
    def _space_not_empty(self) -> SweepConfig:
        if not self.space:
            raise ValueError("space: name at least one axis, e.g. seed: {grid: [0, 1, 2]}")
        return self
