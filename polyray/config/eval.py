"""What is measured: a run's ``eval`` and ``dynamics``, and the evaluation job's task entries.

- :class:`EvalConfig`: pass@k, reward and diversity after each phase of a run;
- :class:`DynamicsConfig`: the diversity-dynamics probe on validation prompts during a phase;
- :data:`EvalTaskConfig`: a task of ``polyray eval`` (``tasks: [...]``). There is one entry model
  per task config of the registry (:mod:`polyray.config.tasks`), built from it by
  :func:`eval_task_model`: the task's own fields plus ``name``, ``n_prompts``, ``sampling`` and
  ``split``, so every task a run can name, and HumanEval, can be evaluated. The job itself
  (``EvalJobConfig``) is :mod:`polyray.config.eval_job`.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from polyray.config.names import DiversityName
from polyray.config.sampling import SamplingConfig
from polyray.config.tasks import TASK_CONFIG_MODELS, TaskConfigBase, task_types
from polyray.io import StrictModel

EVAL_NAME_PATTERN = r"^[A-Za-z0-9_.@+-]+$"


class EvalConfig(StrictModel):
    """Evaluation after each phase: unbiased pass@k on the test prompts (or, for a candidate of a
    selection, on the validation prompts)."""

    split: Literal["test", "val"] = Field(
        "test",
        description="Prompts of the stage evaluations (base, after each phase): test, what a run reports; val"
        " for a run that is a candidate of a selection (a sweep's trials, an experiment's select candidates set"
        " it): the chosen one alone is evaluated on test, once, after the selection.",
    )
    base: bool = Field(
        True,
        description="Evaluate the model before the first phase (the base model, or init_adapter). An experiment's"
        " branch may turn it off: the run it branches from has evaluated that adapter already.",
    )
    n_samples: int = Field(10, ge=1, description="Samples per prompt (n >= max k).")
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10], description="k values for pass@k.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    few_shot: int = Field(
        0, ge=0, le=8, description="In-context examples (train prompts + references) prepended to each prompt."
    )
    diversity: list[DiversityName] = Field(
        default_factory=lambda: ["countdown_expr", "distinct_1", "self_bleu", "semantic"],
        description="Set diversity metrics of each prompt's samples, averaged over prompts.",
    )

    @model_validator(mode="after")
    def _n_covers_k(self) -> "EvalConfig":
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be a non-empty list of positive integers")
        if max(self.ks) > self.n_samples:
            raise ValueError(f"n_samples ({self.n_samples}) must be >= max(ks) ({max(self.ks)})")
        return self


class DynamicsConfig(StrictModel):
    """Diversity dynamics: every ``every`` steps, sample a fixed validation set and log diversity and pass@k."""

    every: int = Field(0, ge=0, description="Steps between measurements (0 = off).")
    n_prompts: int = Field(16, ge=1, description="Fixed validation prompts measured each time.")
    n_samples: int = Field(8, ge=2, description="Samples per prompt.")
    metrics: list[DiversityName] = Field(
        default_factory=lambda: ["distinct_1", "self_bleu", "countdown_expr"], description="Diversity metrics logged."
    )
    ks: list[int] = Field(default_factory=lambda: [1, 4], description="k values of the logged pass@k.")

    @model_validator(mode="after")
    def _n_covers_k(self) -> "DynamicsConfig":
        if any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive integers, got {self.ks}")
        if max(self.ks, default=1) > self.n_samples:
            raise ValueError(f"n_samples ({self.n_samples}) must be >= max(ks) ({max(self.ks)})")
        return self


class EvalTaskFields(StrictModel):
    """What an evaluation job adds to a task's own config."""

    name: str | None = Field(
        None, pattern=EVAL_NAME_PATTERN, description="Task label (default: its type); unique per job."
    )
    n_prompts: int = Field(64, ge=1, description="Prompts evaluated (the first n of the split).")
    sampling: SamplingConfig | None = Field(None, description="Sampling for this task (default: the job's sampling).")


def eval_task_model(task_model: type[TaskConfigBase]) -> type[TaskConfigBase]:
    """``task_model`` as an evaluation job's entry: its fields and checks, plus :class:`EvalTaskFields`
    and ``split`` (the task's ``eval_splits``, default ``test``); ``n_prompts`` by its ``eval_prompts``."""
    default, most = task_model.eval_prompts
    splits = task_model.eval_splits
    namespace = {
        "__module__": __name__,
        "__doc__": task_model.__doc__,
        "__annotations__": {"n_prompts": int, "split": Literal[splits]},
        "n_prompts": Field(default, ge=1, le=most, description="Prompts evaluated (the first n of the split)."),
        "split": Field("test", description=f"Split the prompts come from: {', '.join(splits)}."),
    }
    return type(f"Eval{task_model.__name__}", (task_model, EvalTaskFields), namespace)


_ENTRIES = {model: eval_task_model(model) for model in TASK_CONFIG_MODELS}
EVAL_TASK_CONFIGS: dict[str, type[TaskConfigBase]] = {t: _ENTRIES[m] for m in TASK_CONFIG_MODELS for t in task_types(m)}
"""task type -> the evaluation job's entry model for it (every task of the registry: EvalCountdownTaskConfig, ...)."""

EvalTaskConfig = Annotated[Union[tuple(_ENTRIES.values())], Field(discriminator="type")]
"""A task of the evaluation job."""
