"""Experiment tracking through MLflow or Weights & Biases, switched by ``tracking.backend``.

Two producers, one naming scheme (docs/design.md, "Tracking"):

- ``polyray run``: a :class:`RunTracker` on the driver, one tracking run per polyray run.
  Parameters: the resolved config, flattened to dotted keys (``phases.0.lam``). Metrics, read from
  the run's own logs while a phase trains: every learner step as ``<phase>/train/<key>`` (step = the
  phase's step) and every diversity-dynamics measurement as ``<phase>/val/<key>``; after each
  evaluation, its record's numbers as ``<stage>/<metric>`` (:meth:`polyray.eval.record.EvalRecord.scalars`). Artifacts at the end: ``results.json`` and the
  resolved config. The tracking run's id and how far the logs were sent are kept in the run
  directory (``tracking.json``), so ``--resume`` continues the same tracking run without repeats.
  A restarted learner re-runs the steps past the one it resumed from (the resume marker it writes
  to each log, :func:`polyray.io.read_log_jsonl`): those steps are sent again, later, so the
  backends' current value of a step is the re-run's, as in ``metrics.jsonl`` (:meth:`RunTracker.log_progress`).
- Sweeps and experiments: Ray Tune's own logger callbacks (:func:`tune_callbacks`), one tracking
  run per trial with the trial's parameters, logging each report (a trial reports after every
  evaluated stage: :func:`run_metrics`).

Metric names are the ones a user reads everywhere (``pass@k``); MLflow names allow
``[/\\w.\\- :]`` only, so :func:`mlflow_key` logs ``pass@k`` there as ``pass_at_k``: the one
place polyray renames a metric. Evaluation records come in as objects with ``scalars()``
(:class:`polyray.eval.record.EvalRecord`; this layer does not import ``polyray.eval``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Protocol

from polyray.config import RunConfig, TrackingConfig
from polyray.io import ConfigError, read_log_and_markers, read_log_jsonl, write_json_atomic

STATE_FILE = "tracking.json"
# the run's logs -> the section their rows are logged under
LOGS = {"metrics.jsonl": "train", "dynamics.jsonl": "val"}
_NOT_METRICS = {"step", "global_step", "time"}
# MLflow's limit on a parameter value
MLFLOW_PARAM_CHARS = 6000


class Record(Protocol):
    """An evaluation record (:class:`polyray.eval.record.EvalRecord`): its finite numbers by flat key."""

    def scalars(self) -> dict[str, float]: ...


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of ``record`` (booleans excluded)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


# a stage evaluation on the validation split (eval.split: val), beside the probe's val/
VAL_EVAL = "val_eval"


def run_metrics(
    run_dir: Path,
    evaluations: Mapping[str, Any] | None = None,
    test: Mapping[str, Any] | None = None,
    eval_split: str = "test",
) -> dict[str, float]:
    """A run's results as flat metrics: ``<stage>/<metric>`` of every test evaluation (``evaluations``,
    stage -> evaluation record, of a run on ``eval_split: test``, and ``test``, those added after a
    selection), ``<stage>/val_eval/<metric>`` of a stage evaluation on validation (``eval_split: val``),
    and ``<phase>/val/<metric>`` of each phase's last validation measurement in ``run_dir`` (the dynamics
    probe's pass@k and diversity on the fixed validation prompts: what a sweep should select on)."""
    tag = "" if eval_split == "test" else f"{VAL_EVAL}/"
    out = {f"{stage}/{tag}{k}": v for stage, r in (evaluations or {}).items() for k, v in r.scalars().items()}
    out.update({f"{stage}/{k}": v for stage, r in (test or {}).items() for k, v in r.scalars().items()})
    last: dict[str, dict] = {}
    for row in read_log_jsonl(run_dir / "dynamics.jsonl"):
        if row.get("step", -1) >= last.get(row.get("phase"), {}).get("step", -1):
            last[row.get("phase")] = row
    for phase, row in last.items():
        out.update({f"{phase}/val/{k}": v for k, v in numbers(row).items() if k not in (*_NOT_METRICS, "version")})
    return out


def mlflow_key(name: str) -> str:
    """``name`` as a valid MLflow metric or parameter name."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as ``{"a.b.0.c": leaf}``."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def check_tracking(cfg: TrackingConfig) -> None:
    """Fail before anything starts when the backend's client is not installed."""
    module = {"mlflow": "mlflow", "wandb": "wandb"}.get(cfg.backend)
    if module is None:
        return
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"tracking.backend: {cfg.backend!r} needs the {module} client: pip install 'polyray[tracking]'"
            " (or set tracking.backend: none)"
        )


# ------------------------------------------------------------------------------ MLflow
def mlflow_uri(cfg: TrackingConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in ``./runs/mlflow.db``."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = (Path("runs") / "mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def mlflow_experiment(cfg: TrackingConfig) -> str:
    """The id of ``cfg.experiment`` in the tracking store, created if new. With a SQLite store its
    artifacts go beside the database file (``mlartifacts/``): MLflow's own default is ``./mlruns`` in
    whatever directory the process runs in."""
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return client.create_experiment(cfg.experiment, artifact_location=artifacts)


class _MLflowRun:
    def __init__(self, cfg: TrackingConfig, name: str, run_id: str | None, params: dict[str, Any], tags: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=mlflow_uri(cfg))
        if run_id is None:
            run_id = self.client.create_run(mlflow_experiment(cfg), run_name=name, tags=tags).info.run_id
            items = [Param(mlflow_key(k), str(v)[:MLFLOW_PARAM_CHARS]) for k, v in params.items()]
            # MLflow's batch limit on parameters
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i : i + 100])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self._last_ms = 0

    def log(self, metrics: dict[str, float], step: int | None) -> None:
        """Log ``metrics`` at ``step``. MLflow keeps every value of a metric (its history) and reads the
        one with the latest timestamp at a step as that step's value: a step sent again (a restarted
        learner re-ran it) gets a timestamp strictly later than anything this run sent before, also
        within one millisecond."""
        from mlflow.entities import Metric

        now = self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        items = [Metric(mlflow_key(k), v, now, step or 0) for k, v in metrics.items()]
        # MLflow's batch limit on metrics
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000])

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


# ------------------------------------------------------------------------------ W&B
class _WandbRun:
    def __init__(self, cfg: TrackingConfig, name: str, run_id: str | None, params: dict, tags: dict, out: Path):
        import wandb

        self.run = wandb.init(
            project=cfg.experiment,
            name=name,
            id=run_id,
            resume="allow",
            config=params,
            dir=str(out),
            tags=[f"{k}:{v}" for k, v in tags.items()],
            mode=cfg.mode,
            reinit="finish_previous",
        )
        self.run_id = self.run.id
        self._axes: set[str] = set()

    def log(self, metrics: dict[str, float], step: int | None) -> None:
        """Log ``metrics`` at the phase's ``step``. W&B's own step (``_step``) must increase in a run, so
        it is left to count the calls; the phase's step is a metric, ``<phase>/<section>/step``, set
        as the x axis of the phase's metrics (``define_metric``), and it may go back: a step sent
        again (a restarted learner re-ran it) is a later row at the same x, so the run's summary
        and the latest point at that x are the re-run's (W&B keeps the lost attempt's point too:
        rewriting history, "rewind", is not generally available)."""
        # an evaluation: no training step
        if step is None:
            self.run.log(metrics)
            return
        # each phase counts its own steps: its training metrics are plotted against "<phase>/step"
        prefixes = {k.rsplit("/", 1)[0] for k in metrics}
        for prefix in prefixes - self._axes:
            self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")
            self._axes.add(prefix)
        self.run.log({**metrics, **{f"{p}/step": step for p in prefixes}})

    def artifact(self, path: Path) -> None:
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


# ------------------------------------------------------------------------------ polyray run
class RunTracker:
    """One tracking run for the polyray run in ``out`` (see the module docstring)."""

    def __init__(self, run: RunConfig, out: Path):
        cfg = run.tracking
        self.out = out
        self.state_path = out / STATE_FILE
        state = self._read_state(cfg)
        params = flatten(run.model_dump(mode="json", exclude={"tracking"}))
        tags = {"polyray.run": run.name, "polyray.task": run.task.type, **cfg.tags}
        args = (cfg, run.name, state.get("run_id"), params, tags)
        self.backend = _MLflowRun(*args) if cfg.backend == "mlflow" else _WandbRun(*args, out)
        # (log file, phase) -> the last step sent: a resumed run sends only what is new
        self.sent: dict[str, dict[str, int]] = state.get("sent", {})
        # log file -> the resume markers in it already applied to ``sent``
        self.markers: dict[str, int] = state.get("markers", {})
        self._save()

    def _read_state(self, cfg: TrackingConfig) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        # another backend: a new tracking run
        return state if state.get("backend") == cfg.backend else {}

    def _save(self) -> None:
        write_json_atomic(
            self.state_path,
            {
                "backend": "mlflow" if isinstance(self.backend, _MLflowRun) else "wandb",
                "run_id": self.backend.run_id,
                "sent": self.sent,
                "markers": self.markers,
            },
        )

    def log_progress(self) -> None:
        """Send the learner-step and dynamics rows logged since the last call.

        A resume marker (phase p, step s) new since the last call means a restarted learner runs
        p's steps past s again, and its rows supersede those sent before: the last step sent of p
        goes back to s, so the re-run steps are sent as they are logged. Rows the marker superseded
        and that were never sent are never sent (the rows come from :func:`polyray.io.read_log_jsonl`)."""
        new = False
        for name, section in LOGS.items():
            sent = self.sent.setdefault(name, {})
            # one read: the two agree
            rows, markers = read_log_and_markers(self.out / name)
            for marker in markers[self.markers.get(name, 0) :]:
                phase, step = marker.get("phase"), marker.get("step", 0)
                if isinstance(phase, str) and isinstance(step, int) and sent.get(phase, -1) > step:
                    sent[phase] = step
            if len(markers) != self.markers.get(name, 0):
                self.markers[name] = len(markers)
                new = True
            for row in rows:
                phase, step = row.get("phase"), row.get("step")
                if not isinstance(phase, str) or not isinstance(step, int) or step <= sent.get(phase, -1):
                    continue
                metrics = {f"{phase}/{section}/{k}": v for k, v in numbers(row).items() if k not in _NOT_METRICS}
                self.backend.log(metrics, step)
                sent[phase] = step
                new = True
        if new:
            self._save()

    def log_stage(self, stage: str, record: Record) -> None:
        """One evaluation's record, its numbers as ``<stage>/<metric>``."""
        self.backend.log({f"{stage}/{k}": v for k, v in record.scalars().items()}, None)

    def finish(self, failed: bool) -> None:
        if not failed:
            for name in ("results.json", "config.resolved.yaml"):
                if (self.out / name).is_file():
                    self.backend.artifact(self.out / name)
        self.backend.finish(failed)


def open_tracker(run: RunConfig, out: Path) -> RunTracker | None:
    """The run's tracker, or None with ``tracking.backend: none``."""
    return None if run.tracking.backend == "none" else RunTracker(run, out)


# ------------------------------------------------------------------------------ Ray Tune
def tune_callbacks(cfg: TrackingConfig, group: str) -> list:
    """Ray Tune's logger callbacks for ``cfg``: one tracking run per trial, grouped by ``group``
    (the sweep's name) in W&B; in MLflow the trials are runs of ``tracking.experiment``."""
    if cfg.backend == "mlflow":
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        # created here, with its artifact location
        mlflow_experiment(cfg)

        class PolyrayMLflowLoggerCallback(MLflowLoggerCallback):
            def log_trial_result(self, iteration, trial, result):
                super().log_trial_result(iteration, trial, {mlflow_key(k): v for k, v in result.items()})

        return [
            PolyrayMLflowLoggerCallback(
                tracking_uri=mlflow_uri(cfg), experiment_name=cfg.experiment, tags={"polyray.sweep": group, **cfg.tags}
            )
        ]
    if cfg.backend == "wandb":
        from ray.air.integrations.wandb import WandbLoggerCallback

        extra = {}
        if cfg.mode:
            # Ray's API-key check reads it here
            os.environ["WANDB_MODE"] = cfg.mode
            # and the logging actors' wandb.init gets it from here
            extra["mode"] = cfg.mode
        tags = [f"{k}:{v}" for k, v in cfg.tags.items()]
        return [WandbLoggerCallback(project=cfg.experiment, group=group, tags=tags, **extra)]
    return []
