"""Where a run's Ray cluster is (``cluster``): join one, or start a local one with these settings."""

from __future__ import annotations

from pydantic import Field, field_validator

from polyray.io import StrictModel


class ClusterConfig(StrictModel):
    """Where to run. ``address`` None starts a local Ray cluster."""

    address: str | None = Field(None, description="Ray address ('auto' to join a running cluster).")
    num_cpus: int | None = Field(
        None, ge=1, description="Logical CPUs for a local cluster (default: enough for all actors)."
    )
    dashboard: bool = Field(True, description="Start the Ray dashboard with a local cluster (its URL is printed).")
    resource_wait_s: float = Field(
        600.0,
        ge=0,
        description="Seconds a run waits for a joined cluster to hold what its actors ask for (an autoscaler adding"
        " nodes) before it stops, naming what is missing; a local cluster is checked at once.",
    )
    metrics_export_port: int | None = Field(
        None, ge=1, le=65535, description="Prometheus endpoint of a local cluster's node (default: Ray picks one)."
    )
    worker_logs: bool = Field(False, description="Forward worker stdout/stderr (vLLM, Ray Train) to the driver.")
    storage: str | None = Field(
        None,
        description="Storage every node reaches: a shared path (NFS, a ReadWriteMany volume) or a pyarrow.fs URI"
        " (s3://, gs://), as Ray Train's storage_path. The driver puts the base model, engagement models, phase"
        " adapters, the adapter store and Ray Train checkpoints there; each worker copies what it reads into its"
        " own node's cache (hash-checked). None: everything stays in the run directory (one node).",
    )
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each rollout worker, learner rank and reward replica asks for (e.g."
        " {worker: 1} to keep them on nodes started with --resources '{\"worker\": 8}').",
    )

    @field_validator("storage")
    @classmethod
    def _storage_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("empty: set a shared path or a URI, or leave it unset")
        return value

    @field_validator("worker_resources")
    @classmethod
    def _resources_positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if v <= 0 or k in ("CPU", "GPU", "memory")]
        if bad:
            raise ValueError(f"{bad[0]!r}: a custom resource with an amount > 0 (CPU and GPU have their own settings)")
        return value
