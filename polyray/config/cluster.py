"""Where a run's Ray cluster is (``cluster``): join one, or start a local one with these settings."""

from __future__ import annotations

from pydantic import Field

from polyray.io import StrictModel


class ClusterConfig(StrictModel):
    """Where to run. ``address`` None starts a local Ray cluster."""

    address: str | None = Field(None, description="Ray address ('auto' to join a running cluster).")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs for a local cluster (default: enough for all actors)."
    )
    dashboard: bool = Field(True, description="Start the Ray dashboard with a local cluster (its URL is printed).")
    metrics_export_port: int | None = Field(
        None, ge=1, le=65535, description="Prometheus endpoint of a local cluster's node (default: Ray picks one)."
    )
    worker_logs: bool = Field(False, description="Forward worker stdout/stderr (vLLM, Ray Train) to the driver.")
