"""``polyray experiment``'s file: runs x seeds, the models reported, selections, comparisons, hypotheses.

A selection chooses on validation only (:func:`polyray.config.sweep.check_selection_metric`); a
hypothesis and a comparison name reported models; every reference resolves when the file loads.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from polyray.config.sweep import ChosenOnValidation
from polyray.io import StrictModel

# TOST margin: an absolute difference of means below which two models count as equivalent. 0.01 of
# pass@1 is one test prompt in a hundred; a claim that a change "keeps" a metric is tested at it.
EQUIVALENCE_MARGIN = 0.01

HEADLINE = re.compile(r"^(pass@|usq@)([1-9][0-9]*)$|^reward_mean$|^distinct_samples$")
"""The metrics an experiment reports and compares (with the diversities): pass@k and USQ@k at the
runs' own ks, the mean reward, the share of distinct samples."""


def headline_metrics(names) -> list[str]:
    """The headline metrics among ``names``, in table order: pass@k by k, USQ@k by k, reward, distinct."""
    found = [m for m in set(names) if HEADLINE.match(m)]
    order = {"pass@": 0, "usq@": 1, "reward_mean": 2, "distinct_samples": 3}

    def key(m: str) -> tuple[int, int]:
        at = HEADLINE.match(m)
        return (order[at.group(1)], int(at.group(2))) if at.group(1) else (order[m], 0)

    return sorted(found, key=key)


class Selection(ChosenOnValidation):
    """One model chosen among candidates on validation (the metric's mean over seeds), reported under
    the selection's label."""

    among: list[str] = Field(..., min_length=2, description="Candidate model labels (from models).")


class Hypothesis(StrictModel):
    """A claim declared before the runs: ``treatment`` raises ``raise_metric`` over ``control`` (paired
    t over seeds) while keeping ``keep_metric`` within ``keep_within`` of the control's mean (paired
    TOST); :func:`polyray.eval.stats.raised_and_kept` gives the verdict."""

    treatment: str = Field(..., description="Model label (from models or select).")
    control: str = Field(..., description="Model label (from models or select).")
    raise_metric: str = Field("pass@10", description="The metric the treatment must raise (paired t, p < 0.05).")
    keep_metric: str = Field("pass@1", description="The metric the treatment must keep (paired TOST).")
    keep_within: float = Field(0.10, gt=0, lt=1, description="Keep margin, a share of the control's mean.")
    min_seeds: int = Field(5, ge=2, description="Fewer paired seeds: the verdict is 'undecided'.")

    @field_validator("raise_metric", "keep_metric")
    @classmethod
    def _headline(cls, metric: str) -> str:
        if not HEADLINE.match(metric):
            raise ValueError(f"{metric!r} is not a reported metric (pass@k, usq@k, reward_mean, distinct_samples)")
        return metric


class ExperimentConfig(StrictModel):
    """Runs x seeds and the models reported from them."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Experiment name (runs/<name>/).")
    base: str = Field(..., description="Base run config, relative to the experiment file.")
    task: dict[str, Any] | None = Field(
        None, description="Task of every run, in place of the base's (e.g. {type: replies, path: my.jsonl})."
    )
    runs: dict[str, dict[str, Any]] = Field(
        ...,
        description="Run name -> partial run config merged onto the base; with from: 'run/phase' the run starts"
        " from that run's adapter after that phase, of the same seed.",
    )
    models: dict[str, str] = Field(..., description="Model label -> 'run/phase' ('base' before any phase).")
    select: dict[str, Selection] = Field(
        default_factory=dict,
        description="Label -> a model chosen among candidate models on validation (never on"
        " test); the chosen one is reported under the label, the candidates are not reported.",
    )
    compare: list[tuple[str, str]] = Field(default_factory=list, description="(treatment, control) model labels.")
    split: Literal["test", "val"] = Field(
        "test",
        description="Where every model is evaluated, reported and compared: test, or val for a selection"
        " stage (the test set is not read; confirm the choice on test with fresh seeds, --first-seed).",
    )
    hypotheses: dict[str, Hypothesis] = Field(
        default_factory=dict,
        description="Name -> a claim declared in advance, answered with a verdict (Holm"
        " across the hypotheses on their intersection-union p).",
    )
    max_concurrent: int = Field(1, ge=1, description="Runs (Tune trials) executing at once on the cluster.")
    equivalence_margin: float | dict[str, float] = Field(
        EQUIVALENCE_MARGIN,
        description="TOST margin per comparison (absolute difference of means): one number for"
        " every metric, or metric -> margin (metrics not named: 0.01). Equivalent: the 90% interval of the"
        " difference inside ±margin, Holm-adjusted.",
    )

    @model_validator(mode="after")
    def _references_resolve(self) -> "ExperimentConfig":
        for name, origin in self.origins().items():
            run, _, phase = origin.partition("/")
            if run not in self.runs or not phase or run == name:
                raise ValueError(f"runs.{name}.from: {origin!r} is not 'run/phase' with another run from runs")
            if "from" in self.runs[run]:
                raise ValueError(f"runs.{name}.from: {run!r} branches itself; branch from a run that does not")
        for label, ref in self.models.items():
            run, _, phase = ref.partition("/")
            if run not in self.runs or not phase:
                raise ValueError(
                    f"models.{label}: {ref!r} is not 'run/phase' with a run from runs ({sorted(self.runs)})"
                )
        seen: dict[str, str] = {}
        if self.split == "val" and self.select:
            raise ValueError("select: an experiment on split: val is itself the selection stage; leave select out")
        for label, sel in self.select.items():
            if label in self.models:
                raise ValueError(f"select.{label}: the label is also a model's; name the selection apart")
            for cand in sel.among:
                if cand not in self.models:
                    raise ValueError(f"select.{label}.among: unknown model {cand!r} (models: {sorted(self.models)})")
                if cand in seen:
                    raise ValueError(f"select.{label}.among: {cand!r} is already a candidate of select.{seen[cand]}")
                seen[cand] = label
        reported = self.reported_labels()
        for pair in self.compare:
            for label in pair:
                if label in seen:
                    raise ValueError(
                        f"compare: {label!r} is a candidate of select.{seen[label]}, not reported;"
                        f" compare {seen[label]!r}"
                    )
                if label not in reported:
                    raise ValueError(f"compare: unknown model {label!r} (models: {sorted(reported)})")
        for name, hyp in self.hypotheses.items():
            for label in (hyp.treatment, hyp.control):
                if label not in reported:
                    raise ValueError(f"hypotheses.{name}: unknown model {label!r} (reported: {sorted(reported)})")
        margins = self.equivalence_margin
        margins = margins if isinstance(margins, dict) else {"*": margins}
        for metric, margin in margins.items():
            if metric != "*" and not HEADLINE.match(metric):
                raise ValueError(
                    f"equivalence_margin: unknown metric {metric!r} (compared: pass@k, usq@k at the runs'"
                    " ks, reward_mean, distinct_samples)"
                )
            if not margin > 0:
                raise ValueError(f"equivalence_margin: {metric if metric != '*' else ''} must be > 0, got {margin}")
        return self

    def margin(self, metric: str) -> float:
        """The TOST margin of ``metric``."""
        if isinstance(self.equivalence_margin, dict):
            return float(self.equivalence_margin.get(metric, EQUIVALENCE_MARGIN))
        return float(self.equivalence_margin)

    def reported_labels(self) -> list[str]:
        """The labels of the table, in order: each model, a selection in place of its first candidate."""
        owner = {cand: label for label, sel in self.select.items() for cand in sel.among}
        return list(dict.fromkeys(owner.get(label, label) for label in self.models))

    def origins(self) -> dict[str, str]:
        """Branch run -> the 'run/phase' it starts from."""
        return {name: str(patch["from"]) for name, patch in self.runs.items() if "from" in patch}
