"""The typed results of the statistics, each with ``to_json()``: the dict written to results.json and
experiment.json, None where a statistic is undefined (NaN, ±inf).

``to_json()`` writes every field but the optional ones (``note``, and those a test does not have:
``method`` of a t-test, ``min_pvalue`` of Mann–Whitney) when they are None, so a result's keys are
the same whether the test was defined or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np


def json_value(v: Any) -> Any:
    """A field's JSON form: None for NaN/±inf, Python numbers for numpy ones, lists for tuples."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (tuple, list, np.ndarray)):
        return [json_value(x) for x in v]
    return v


@dataclass(frozen=True)
class _Result:
    # left out of to_json() when None
    optional: ClassVar[tuple[str, ...]] = ("note",)

    def to_json(self) -> dict[str, Any]:
        """The JSON-safe dict of the result (NaN and ±inf as None)."""
        return {
            f.name: json_value(getattr(self, f.name))
            for f in fields(self)
            if not (getattr(self, f.name) is None and f.name in self.optional)
        }


@dataclass(frozen=True)
class TestResult(_Result):
    """A two-sided test: ``pvalue`` None where the test is undefined on the data (``note`` says why).

    ``method``: how p was computed (rank tests: "exact", "exact permutation", "asymptotic");
    ``min_pvalue``: the smallest p the test can give on this many values (signed-rank)."""

    # not a pytest test class, whatever its name
    __test__ = False

    statistic: float | None
    pvalue: float | None
    method: str | None = None
    note: str | None = None
    min_pvalue: float | None = None

    optional: ClassVar[tuple[str, ...]] = ("note", "method", "min_pvalue")


@dataclass(frozen=True)
class TTestResult(TestResult):
    """A t-test with its degrees of freedom and the t-interval (``low``, ``high``) of the mean difference."""

    df: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Interval(_Result):
    """Mean ± t-interval: ``low``/``high``/``half_width`` NaN (None in JSON) with one value."""

    mean: float
    low: float
    high: float
    half_width: float
    n: int


@dataclass(frozen=True)
class BootstrapInterval(_Result):
    """Bootstrap CI of mean(a) − mean(b); ``method``: "BCa", "percentile", "degenerate" or "failed"."""

    mean_diff: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    seed: int
    method: str
    note: str | None = None


@dataclass(frozen=True)
class HierarchicalInterval(_Result):
    """Percentile CI of a mean over seeds and prompts (``hierarchical_bootstrap``); ``n_prompts`` is
    one count when the seeds share their prompts, one per seed otherwise."""

    mean: float
    low: float
    high: float
    se: float
    confidence: float
    n_resamples: int
    seed: int
    n_seeds: int
    n_prompts: int | tuple[int, ...]
    shared_prompts: bool
    conditional_on: str
    note: str | None = None


@dataclass(frozen=True)
class Equivalence(_Result):
    """TOST: ``equivalent`` iff ``pvalue`` < ``alpha``; (``low``, ``high``) the (1 − 2α) t-interval."""

    margin: float
    alpha: float
    confidence: float
    method: str
    pvalue: float | None
    equivalent: bool | None
    low: float | None
    high: float | None
    note: str | None = None


@dataclass(frozen=True)
class NonInferiority(_Result):
    """One-sided paired t: ``noninferior`` iff ``pvalue`` < ``alpha``; ``low`` the one-sided lower bound."""

    margin: float
    alpha: float
    method: str
    mean: float | None
    pvalue: float | None
    noninferior: bool | None
    low: float | None
    note: str | None = None


@dataclass(frozen=True)
class HolmResult(_Result):
    """Holm-adjusted p-values and the rejections at the level asked, in the input order."""

    adjusted: tuple[float, ...]
    reject: tuple[bool, ...]
