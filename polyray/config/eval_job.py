"""The evaluation job's config: models x tasks, sampling, selectors, statistics.

Task entries are :data:`polyray.config.eval.EvalTaskConfig`: every task config of the registry
(:mod:`polyray.config.tasks`) with the fields evaluation needs (``name``, ``n_prompts``,
``split``, per-task ``sampling``), so the job evaluates any task a run trains on, and HumanEval.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from polyray.config.cluster import ClusterConfig
from polyray.config.eval import EVAL_NAME_PATTERN, EVAL_TASK_CONFIGS, EvalTaskConfig
from polyray.config.model import ModelConfig
from polyray.config.names import DiversityName, SelectorName, split_at_key
from polyray.config.rollout import RolloutConfig
from polyray.config.sampling import SamplingConfig
from polyray.io import StrictModel, load_yaml_model

_NAME = EVAL_NAME_PATTERN


class EvalModelSpec(StrictModel):
    """One model to evaluate (an adapter run directory expands to one model per phase)."""

    name: str = Field(..., pattern=_NAME, description="Label in tables; a run directory adds '/<phase>'.")
    kind: Literal["base", "few_shot", "adapter"] = Field(
        "base", description="Base zero-shot, base few-shot, or a LoRA adapter."
    )
    path: str | None = Field(
        None, description="kind=adapter: a peft adapter directory, or a run directory (its adapters/<phase>/)."
    )
    few_shot: int | None = Field(
        None, ge=1, le=16, description="kind=few_shot: in-context training examples per prompt (default 4)."
    )
    phases: list[str] | None = Field(None, description="Run directory only: the phases to take (default all found).")

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> EvalModelSpec:
        if self.kind == "adapter" and not self.path:
            raise ValueError("kind 'adapter' needs a path (adapter or run directory)")
        if self.kind != "adapter" and (self.path or self.phases):
            raise ValueError(f"path/phases are for kind 'adapter', not {self.kind!r}")
        if self.kind != "few_shot" and self.few_shot is not None:
            raise ValueError(f"few_shot is for kind 'few_shot', not {self.kind!r}")
        return self

    @property
    def shots(self) -> int:
        return (self.few_shot or 4) if self.kind == "few_shot" else 0


class EvalJobConfig(StrictModel):
    """``polyray eval``: models x tasks -> pass@k, USQ, DER, diversity, statistics, report."""

    name: str = Field("eval", pattern=_NAME, description="Evaluation name (runs/<name>/).")
    seed: int = Field(
        0,
        description="Random-selector seed; also the per-request sampling seed on GPU (CPU: rollout.seed).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model (the adapters' base).")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    models: list[EvalModelSpec] = Field(..., min_length=1, description="Models to evaluate, in table order.")
    tasks: list[EvalTaskConfig] = Field(
        default_factory=lambda: [EVAL_TASK_CONFIGS["countdown"]()],
        min_length=1,
        description="Tasks (domains) to evaluate on.",
    )
    n_samples: int = Field(10, ge=1, description="Samples per prompt (n >= max k).")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], description="k values of pass@k, USQ@k, DER@k.")
    usq_k: int | None = Field(None, ge=1, description="k of the headline USQ and its statistics (default max ks).")
    selectors: list[SelectorName] | None = Field(
        None, description="USQ selectors (default oracle, random, logprob, + reward_model when reward_model is set)."
    )
    usq_selector: SelectorName | None = Field(
        None, description="Selector shown in the main table (default reward_model if set, else logprob)."
    )
    reward_model: str | None = Field(
        None,
        description="Engagement model directory (polyray model train-reward): reward_model selector, JSONL quality.",
    )
    diversity: list[DiversityName] = Field(
        default_factory=lambda: ["distinct_1", "distinct_2", "self_bleu", "semantic", "countdown_expr"],
        description="Set diversity of each prompt's samples (countdown_expr on countdown only).",
    )
    pareto_diversity: DiversityName | None = Field(
        None, description="Diversity axis of the Pareto frontier (default first)."
    )
    compare: list[tuple[str, str]] | None = Field(
        None, description="(a, b) model pairs tested over prompts; default every model vs the first; [] = none."
    )
    compare_metrics: list[str] | None = Field(
        None,
        description="Per-prompt metrics compared: pass@K, usq, reward, diversity/<name> (default pass@1/maxk, usq).",
    )
    dynamics: list[str] = Field(
        default_factory=list, description="dynamics.jsonl files (or run directories holding one) for the dynamics plot."
    )
    dynamics_from_runs: bool = Field(
        True, description="Also plot dynamics.jsonl of adapter run directories when present."
    )
    lora: list[tuple[str, str]] | None = Field(
        None, description="Adapter model pairs (a, b) for LoRA analyses and b - a differences; default: analyse all."
    )
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(), description="Default sampling.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Truncate longer prompts from the left to this many tokens (default: no truncation)."
    )
    collapse_threshold: float = Field(
        0.01, gt=0, description="Collapse point: smallest k with pass@(k+1) - pass@k below this."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of CIs.")
    bootstrap_resamples: int = Field(10_000, ge=100, description="Bootstrap resamples per comparison.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise error rate of the Holm correction.")
    save_completions: bool = Field(True, description="Keep completion texts in samples.jsonl.")

    @model_validator(mode="after")
    def _consistent(self) -> EvalJobConfig:
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be a non-empty list of positive integers")
        if max(self.ks) > self.n_samples:
            raise ValueError(f"n_samples ({self.n_samples}) must be >= max(ks) ({max(self.ks)})")
        if self.usq_k is not None and self.usq_k > self.n_samples:
            raise ValueError(f"usq_k ({self.usq_k}) must be <= n_samples ({self.n_samples})")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        tnames = [task_name(t) for t in self.tasks]
        if len(set(tnames)) != len(tnames):
            raise ValueError(f"task names must be unique (set name: for repeated types): {tnames}")
        needs_rm = [s for s in (self.selectors or []) + [self.usq_selector] if s == "reward_model"]
        needs_rm += [t.type for t in self.tasks if t.needs_engagement_model()]
        if needs_rm and not self.reward_model:
            raise ValueError(
                "the reward_model selector and JSONL quality 'engagement' need reward_model (a model directory)"
            )
        if self.usq_selector and self.usq_selector not in self.effective_selectors:
            raise ValueError(f"usq_selector {self.usq_selector!r} is not among selectors {self.effective_selectors}")
        for metric in self.compare_metrics or []:
            if not _valid_compare_metric(metric, self):
                raise ValueError(
                    f"compare_metrics: {metric!r} is not pass@K (K in ks), usq, reward or diversity/<name in diversity>"
                )
        return self

    @property
    def effective_selectors(self) -> list[str]:
        if self.selectors is not None:
            return list(dict.fromkeys(self.selectors))
        return ["oracle", "random", "logprob"] + (["reward_model"] if self.reward_model else [])

    @property
    def headline_selector(self) -> str:
        if self.usq_selector:
            return self.usq_selector
        sel = self.effective_selectors
        for s in ("reward_model", "logprob", "length", "random", "oracle"):
            if s in sel:
                return s
        return sel[0]

    @property
    def headline_k(self) -> int:
        return self.usq_k or max(self.ks)

    @property
    def effective_compare_metrics(self) -> list[str]:
        if self.compare_metrics is not None:
            return list(self.compare_metrics)
        return list(
            dict.fromkeys(["pass@1" if 1 in self.ks else f"pass@{min(self.ks)}", f"pass@{max(self.ks)}", "usq"])
        )


def task_name(task) -> str:
    return task.name or task.type


def _valid_compare_metric(metric: str, cfg: EvalJobConfig) -> bool:
    if metric in ("usq", "reward"):
        return True
    per_k = split_at_key(metric)
    if per_k is not None:
        return per_k[0] == "pass" and per_k[1] in cfg.ks
    return metric.startswith("diversity/") and metric.removeprefix("diversity/") in cfg.diversity


def load_eval_config(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalJobConfig:
    """Read YAML, apply ``--set`` overrides, validate; errors name the field (:class:`ConfigError`)."""
    return load_yaml_model(path, list(overrides), EvalJobConfig)
