"""One evaluation record: what evaluating one model measured, as one type with one JSON form.

Why one type: a run's phase evaluation, the diversity-dynamics probe and the evaluation job
all measure pass@k, USQ@k, reward and diversity of a model's samples; with one record they
cannot drift apart in names or shape, and every reader (results.json, tracking, the report,
sweeps, experiments) reads one thing.

Producers: :func:`polyray.eval.policy_eval.evaluate_policy` (a run's evaluation after each
phase: plain means, per-prompt rows), :func:`polyray.eval.dynamics.measure_dynamics` (pass@k,
reward, diversity on the validation prompts) and the evaluation job
(``polyray.drivers.evaluate.units.compute_unit_metrics``: every value with its CI over prompts,
USQ of every selector, DER, the collapse point, reference quality). Readers: a run's
``results.json`` (``polyray.drivers.run``, read back by ``--resume``), ``dynamics.jsonl``,
tracking (:meth:`EvalRecord.scalars`), the report (:mod:`polyray.eval.report`), sweeps and
experiments (:func:`records_from_summaries`, their per-setting or per-model summaries).

JSON form (:meth:`EvalRecord.to_json` / :meth:`EvalRecord.from_json`), flat, with the names a
user reads everywhere (``pass@k``, never ``pass_at_k``)::

    "pass@K": V, "usq@K": V, "reward_mean": V, "n_prompts": int, "n_samples": int,
    "few_shot": int, "distinct_samples": V, "diversity/<name>": V,
    # the evaluation job's
    "usq_selector": str, "usq_by_selector": {selector: {"usq@K": {usq, random, oracle,
    selection_efficiency, low, high}}}, "der@K": {k, pass@1, pass@K, der, independence,
    ratio_to_independence}, "collapse_point": {"k": int | null, "threshold": float},
    "quality": V, "quality_label": str, "reference_quality/<name>": V,
    "per_prompt": [{"prompt", "n", "c", "rewards", "diversity/<name>"}, ...]

V is a number, or ``{"mean", "low", "high"}`` when the producer gives an interval. Any other
key (the job's model, task and prompt counts; keys of older files) is kept as it is in
``extra``, so reading and writing a record back changes nothing; the one renamed key,
``distinct_frac`` (files before ``distinct_samples``), is read as ``distinct_samples``.

One name per measure (:data:`METRIC_LABELS`, what every table and figure shows): *distinct
samples* (``distinct_samples``: per prompt, the distinct completions as whitespace-stripped
strings / n) and *distinct expressions* (``diversity/countdown_expr``: distinct normalised
countdown expressions / n, so ``3 + 9`` and ``(3+9)`` count once) are two measures, never "distinct". MLflow's metric names allow
no ``@``: :func:`polyray.tracking.mlflow_key` renames there, and only there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polyray.config.names import split_at_key

__all__ = [
    "METRIC_LABELS",
    "Estimate",
    "EvalRecord",
    "PromptRow",
    "at_key",
    "metric_label",
    "records_from_summaries",
    "split_at_key",
]

LEGACY_KEYS = {"distinct_frac": "distinct_samples"}
"""Keys older files wrote -> the key they are read as."""

METRIC_LABELS = {
    "reward_mean": "reward",
    "distinct_samples": "distinct samples",
    "diversity/countdown_expr": "distinct expressions",
}
"""Display name of a record key, the same in every table and figure (docs/algorithms.md §4-5)."""


def metric_label(key: str) -> str:
    """What tables and figures call the record key (or diversity name) ``key``."""
    key = LEGACY_KEYS.get(key, key)
    return METRIC_LABELS.get(key) or METRIC_LABELS.get(f"diversity/{key}") or key.removeprefix("diversity/")


def at_key(name: str, k: int) -> str:
    """The flat key of a per-k metric: ``at_key("pass", 5) == "pass@5"``."""
    return f"{name}@{int(k)}"


def _finite(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


@dataclass(frozen=True)
class Estimate:
    """A measured value, with its interval when the producer gives one (the evaluation job)."""

    mean: float
    low: float | None = None
    high: float | None = None

    @classmethod
    def of(cls, value: Any) -> Estimate:
        """From a number, an Estimate, or a JSON dict {"mean", "low", "high"} (or "half_width", as
        :func:`polyray.eval.stats.mean_ci` gives); an undefined end (NaN, None) is None."""
        if isinstance(value, Estimate):
            return value
        if isinstance(value, dict):
            mean = value.get("mean")
            mean = math.nan if mean is None else float(mean)
            low, high = _finite(value.get("low")), _finite(value.get("high"))
            half = _finite(value.get("half_width"))
            if (low is None or high is None) and half is not None:
                low, high = mean - half, mean + half
            return cls(mean, low, high)
        return cls(math.nan if value is None else float(value))

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def to_json(self) -> float | dict[str, float | None]:
        if self.low is None and self.high is None:
            return self.mean
        return {"mean": self.mean, "low": self.low, "high": self.high}


@dataclass
class PromptRow:
    """One prompt's outcome: n samples, c of them correct, their rewards and set diversity."""

    n: int
    c: int
    rewards: list[float] | None = None
    prompt: str | None = None
    diversity: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.prompt is None else {"prompt": self.prompt}
        out.update(n=self.n, c=self.c)
        if self.rewards is not None:
            out["rewards"] = self.rewards
        out.update({f"diversity/{k}": v for k, v in self.diversity.items()})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PromptRow:
        div = {k.split("/", 1)[1]: v for k, v in d.items() if k.startswith("diversity/")}
        return cls(n=d["n"], c=d["c"], rewards=d.get("rewards"), prompt=d.get("prompt"), diversity=div)


@dataclass
class EvalRecord:
    """What evaluating one model measured (see the module docstring for the JSON form).

    Every field is optional: the dynamics probe fills pass@k, reward and diversity; a run's
    evaluation adds USQ@k (logprob selector), counts, distinct samples and per-prompt rows;
    the evaluation job intervals and its own fields.
    """

    pass_at_k: dict[int, Estimate] = field(default_factory=dict)
    usq_at_k: dict[int, Estimate] = field(default_factory=dict)
    reward_mean: Estimate | None = None
    n_prompts: int | None = None
    n_samples: int | None = None
    few_shot: int | None = None
    # "distinct samples": per prompt, distinct completions as stripped strings / n, mean over prompts; not
    # the "distinct expressions" of diversity["countdown_expr"] (normalised answers), docs/algorithms.md §4
    distinct_samples: Estimate | None = None
    diversity: dict[str, Estimate] = field(default_factory=dict)
    # the evaluation job's
    usq_selector: str | None = None
    usq_by_selector: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    der: dict[int, dict[str, Any]] = field(default_factory=dict)
    # {"k": smallest k that flattens or None, "threshold"}
    collapse_point: dict[str, Any] | None = None
    # the Pareto quality (default in readers: pass@min k)
    quality: Estimate | None = None
    quality_label: str | None = None
    reference_quality: dict[str, Estimate] = field(default_factory=dict)
    per_prompt: list[PromptRow] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ values
    def estimates(self) -> dict[str, Estimate]:
        """Every measured value by its flat key (pass@k, usq@k, reward_mean, distinct_samples,
        diversity/<name>, quality, reference_quality/<name>), in JSON order."""
        out: dict[str, Estimate] = {at_key("pass", k): v for k, v in self.pass_at_k.items()}
        out.update({at_key("usq", k): v for k, v in self.usq_at_k.items()})
        if self.reward_mean is not None:
            out["reward_mean"] = self.reward_mean
        if self.distinct_samples is not None:
            out["distinct_samples"] = self.distinct_samples
        out.update({f"diversity/{k}": v for k, v in self.diversity.items()})
        if self.quality is not None:
            out["quality"] = self.quality
        out.update({f"reference_quality/{k}": v for k, v in self.reference_quality.items()})
        return out

    def get(self, key: str) -> Estimate | None:
        """One value by flat key (``"pass@10"``, ``"diversity/semantic"``), or a diversity by name."""
        key = LEGACY_KEYS.get(key, key)
        return self.estimates().get(key) or self.diversity.get(key)

    def means(self) -> dict[str, float]:
        """The headline metrics' means by flat key: pass@k, usq@k, reward_mean, distinct_samples, diversity/<name>."""
        skip = ("quality", "reference_quality/")
        return {k: v.mean for k, v in self.estimates().items() if not k.startswith(skip)}

    def scalars(self) -> dict[str, float]:
        """Every finite number of the record (values by their means, counts, numeric extras): what
        tracking logs and a sweep trial reports."""
        out = {}
        for key, v in self._items():
            x = v.mean if isinstance(v, Estimate) else v
            if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x):
                out[key] = float(x)
        return out

    def per_prompt_values(self, metric: str) -> np.ndarray | None:
        """Per-prompt values whose mean is ``metric`` (pass@k from n and c, reward_mean from the
        rewards); None when the rows do not record them."""
        from polyray.eval.passk import compute_pass_at_k

        if not self.per_prompt:
            return None
        split = split_at_key(metric)
        try:
            if split is not None and split[0] == "pass":
                values = [compute_pass_at_k(r.n, r.c, split[1]) for r in self.per_prompt]
            elif metric == "reward_mean":
                values = [float(np.mean(r.rewards)) for r in self.per_prompt]
            else:
                return None
        # k > n; no rewards recorded
        except (ValueError, TypeError):
            return None
        arr = np.asarray(values, dtype=np.float64)
        return arr if np.all(np.isfinite(arr)) else None

    # ------------------------------------------------------------------ JSON
    def _items(self) -> Iterator[tuple[str, Any]]:
        """Top-level (key, value) pairs in JSON order, values as held (Estimates unconverted)."""
        yield from self.extra.items()
        yield from ((at_key("pass", k), v) for k, v in self.pass_at_k.items())
        yield from ((at_key("usq", k), v) for k, v in self.usq_at_k.items())
        fields = (
            ("reward_mean", self.reward_mean),
            ("n_prompts", self.n_prompts),
            ("n_samples", self.n_samples),
            ("few_shot", self.few_shot),
            ("distinct_samples", self.distinct_samples),
        )
        yield from ((k, v) for k, v in fields if v is not None)
        yield from ((f"diversity/{k}", v) for k, v in self.diversity.items())
        if self.usq_selector is not None:
            yield "usq_selector", self.usq_selector
        if self.usq_by_selector:
            yield (
                "usq_by_selector",
                {s: {at_key("usq", k): dict(v) for k, v in by_k.items()} for s, by_k in self.usq_by_selector.items()},
            )
        yield from ((at_key("der", k), dict(v)) for k, v in self.der.items())
        job = (
            ("collapse_point", self.collapse_point),
            ("quality", self.quality),
            ("quality_label", self.quality_label),
        )
        yield from ((k, v) for k, v in job if v is not None)
        yield from ((f"reference_quality/{k}", v) for k, v in self.reference_quality.items())
        if self.per_prompt is not None:
            yield "per_prompt", self.per_prompt

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (flat keys; NaN stays NaN: a strict writer maps it)."""
        out = {}
        for key, v in self._items():
            if isinstance(v, Estimate):
                v = v.to_json()
            elif key == "per_prompt":
                v = [r.to_json() for r in v]
            out[key] = v
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any] | EvalRecord, prefix: str = "") -> EvalRecord:
        """A record from its JSON form (an EvalRecord is returned as is). With ``prefix`` only the
        keys that start with it are read, without it (a sweep's ``"<phase>/pass@1"``)."""
        if isinstance(d, EvalRecord):
            return d
        rec = cls()
        for key, v in d.items():
            if prefix:
                if not key.startswith(prefix):
                    continue
                key = key[len(prefix) :]
            key = LEGACY_KEYS.get(key, key)
            split = split_at_key(key)
            if split is not None:
                name, k = split
                if name == "pass":
                    rec.pass_at_k[k] = Estimate.of(v)
                elif name == "usq":
                    rec.usq_at_k[k] = Estimate.of(v)
                else:
                    rec.der[k] = dict(v)
            elif key in ("reward_mean", "distinct_samples", "quality"):
                setattr(rec, key, Estimate.of(v))
            elif key in ("n_prompts", "n_samples", "few_shot") and isinstance(v, int):
                setattr(rec, key, v)
            elif key in ("usq_selector", "quality_label", "collapse_point"):
                setattr(rec, key, v)
            elif key.startswith("diversity/"):
                rec.diversity[key.split("/", 1)[1]] = Estimate.of(v)
            elif key.startswith("reference_quality/"):
                rec.reference_quality[key.split("/", 1)[1]] = Estimate.of(v)
            elif key == "usq_by_selector":
                rec.usq_by_selector = {
                    s: {split_at_key(k)[1]: dict(e) for k, e in by_k.items()} for s, by_k in v.items()
                }
            elif key == "per_prompt" and isinstance(v, list):
                rec.per_prompt = [PromptRow.from_json(r) for r in v]
            else:
                rec.extra[key] = v
        return rec


def records_from_summaries(
    summaries: dict[str, dict[str, Any]], prefix: str = "", usq_selector: str | None = "logprob"
) -> dict[str, EvalRecord]:
    """Per label, the record of a summary in the record's flat form: a sweep setting's
    ``"<phase>/pass@1": {mean, low, high}`` (``prefix="<phase>/"``), an experiment model's
    ``"pass@1": {mean, low, high, values}``. What sweeps and experiments hand the report; their
    USQ is the run's (``usq_selector``, the likelihood ranking)."""
    records = {}
    for label, summary in summaries.items():
        rec = EvalRecord.from_json(summary, prefix)
        if rec.usq_at_k and rec.usq_selector is None:
            rec.usq_selector = usq_selector
        records[label] = rec
    return records
