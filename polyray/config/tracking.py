"""Experiment tracking's settings (``tracking``): MLflow or W&B, off by default (:mod:`polyray.tracking` logs)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from polyray.io import StrictModel


class TrackingConfig(StrictModel):
    """Experiment tracking (``polyray/tracking.py``): each ``polyray run`` is one tracking run (its
    steps, validation probes and evaluations); a sweep or experiment logs one per trial through Ray
    Tune's logger callbacks. Needs ``pip install 'polyray[tracking]'``."""

    backend: Literal["none", "mlflow", "wandb"] = Field("none", description="Where to log: none, mlflow or wandb.")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/runs/mlflow.db).",
    )
    experiment: str = Field("polyray", min_length=1, description="MLflow experiment / W&B project.")
    mode: Literal["online", "offline"] | None = Field(
        None, description="W&B mode (default: $WANDB_MODE, else online); offline writes ./wandb for `wandb sync`."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on every tracking run.")
