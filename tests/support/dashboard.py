"""polyray's declared metrics and the ones the Grafana dashboard queries (tests/unit/project/test_manifests.py,
tests/e2e/test_ray_job.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def declared_metrics() -> dict[str, str]:
    """Every metric polyray declares -> its kind (gauge, histogram, counter)."""
    from polyray.generation import deployment as generation
    from polyray.learner import telemetry as learner
    from polyray.reward import deployment as reward
    from polyray.rollout import worker as rollout

    out: dict[str, str] = {}
    for module in (learner, rollout, reward, generation):
        for kind in ("GAUGES", "HISTOGRAMS", "COUNTERS"):
            out.update({name: kind[:-1].lower() for name in getattr(module, kind, {})})
    return out


def dashboard_metrics() -> set[str]:
    """polyray's metric names the Grafana dashboard queries (Ray's ``ray_`` prefix and the
    Prometheus suffixes of histograms and counters taken off)."""

    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    names = {m for e in exprs for m in re.findall(r"\bray_(polyray_[a-z_]+)", e)}
    return {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}
