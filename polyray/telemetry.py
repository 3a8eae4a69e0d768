"""polyray's metrics through ``ray.util.metrics``: the Ray dashboard's Metrics view and any Prometheus
scraping the cluster's nodes (Ray prefixes each name with ``ray_``) see them live.

:class:`Metrics` declares a component's gauges, histograms and counters once (names, descriptions,
bounds, tag keys) and records them with that component's tags (``run``, ``phase``, ``worker``,
``reward``...). Outside a Ray worker or driver (plain unit tests) recording is a no-op. The names
are listed in ``deploy/grafana-dashboard.json``'s panels (a test keeps the two in step).
"""

from __future__ import annotations

import time
from typing import Any


def startup_marks(init_started: float) -> dict[str, float]:
    """This process's start-up marks for the run's trace (wall-clock seconds): when the process began, when
    the component's constructor began (``init_started``), and now, when it is ready."""
    import psutil

    return {"process": psutil.Process().create_time(), "init": init_started, "ready": time.time()}


class Metrics:
    def __init__(
        self,
        tags: dict[str, str],
        gauges: dict[str, str] = (),
        histograms: dict[str, tuple[str, list[float]]] = (),
        counters: dict[str, str] = (),
    ):
        self.tags = {k: str(v) for k, v in tags.items()}
        self._gauges: dict[str, Any] = {}
        self._histograms: dict[str, Any] = {}
        self._counters: dict[str, Any] = {}
        try:
            import ray
            from ray.util.metrics import Counter, Gauge, Histogram

            live = ray.is_initialized()
        except ImportError:
            live = False
        if not live:
            return
        keys = tuple(self.tags)
        self._gauges = {n: Gauge(n, description=d, tag_keys=keys) for n, d in dict(gauges).items()}
        self._histograms = {
            n: Histogram(n, description=d, boundaries=b, tag_keys=keys) for n, (d, b) in dict(histograms).items()
        }
        self._counters = {n: Counter(n, description=d, tag_keys=keys) for n, d in dict(counters).items()}

    def set(self, name: str, value: float) -> None:
        if name in self._gauges:
            self._gauges[name].set(float(value), tags=self.tags)

    def observe(self, name: str, value: float) -> None:
        if name in self._histograms:
            self._histograms[name].observe(float(value), tags=self.tags)

    def inc(self, name: str, value: float = 1.0) -> None:
        if name in self._counters and value > 0:
            self._counters[name].inc(float(value), tags=self.tags)

    def with_tags(self, **tags: str) -> Metrics:
        """The same metric objects recorded under other tag values (same keys)."""
        other = Metrics.__new__(Metrics)
        other.tags = {**self.tags, **{k: str(v) for k, v in tags.items()}}
        other._gauges, other._histograms, other._counters = self._gauges, self._histograms, self._counters
        return other
