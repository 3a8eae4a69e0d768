"""Every task's config model, keyed by ``type``: the one task registry's configs, for runs and evaluations.

The tasks themselves (prompts, judges, rewards: :mod:`polyray.tasks`) are built from these
models by ``polyray.tasks.build_task``; ``tests/unit/config/test_registries.py`` keeps the ``type``
literals here equal to that registry's keys. Each model carries its own checks, and what a
run or an evaluation job needs to know about the task without building it:

- ``eval_only``: why the task cannot train (HumanEval: a test set), None when it trains;
- ``eval_splits`` / ``eval_prompts``: the splits an evaluation may draw from, and the default
  and largest prompt count (:mod:`polyray.config.eval` builds the job's task entries from them);
- :meth:`TaskConfigBase.needs_engagement_model`: whether judging needs the engagement model.

:data:`TaskConfig` is the union of all of them, :data:`TrainTaskConfig` of those that train
(``RunConfig.task``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union, get_args

from pydantic import Field, field_validator, model_validator

from polyray.config.judge import JudgeConfig
from polyray.config.sandbox import SandboxConfig
from polyray.io import StrictModel


class TaskConfigBase(StrictModel):
    """What every task config answers about itself (class attributes; no fields)."""

    eval_only: ClassVar[str | None] = None
    eval_splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    # (default, most) prompts an evaluation takes
    eval_prompts: ClassVar[tuple[int, int | None]] = (64, None)

    def needs_engagement_model(self) -> bool:
        """Whether judging a completion needs the learned engagement model."""
        return False


# polyray.storage.REF_PREFIX: a reference into cluster.storage (config imports only io)
STORED = "storage:"
_SANDBOX_TIMEOUT = "Sandbox wall-clock limit per completion (seconds)."
_SANDBOX_MEMORY = "Sandbox address-space limit per completion (MiB)."
_SANDBOX_WORKERS = "Sandboxes run at the same time when judging a batch."
_SANDBOX_POLICY = "Weakest sandbox isolation the judge accepts (it refuses to start below it)."


class CountdownTaskConfig(TaskConfigBase):
    """Countdown-style arithmetic: numbers + target -> an expression using the numbers."""

    type: Literal["countdown"] = "countdown"
    num_numbers: int = Field(3, ge=2, le=6, description="Numbers given per prompt.")
    max_number: int = Field(16, ge=2, le=100, description="Numbers are drawn from 1..max_number.")
    min_operands: int = Field(2, ge=1, description="Fewest numbers the generating expression uses.")
    max_target: int = Field(99, ge=1, description="Largest target.")
    seed: int = Field(0, description="Prompt generator seed (splits stay disjoint for any seed).")
    n_train: int = Field(512, ge=1, description="Training prompts (SFT references, GRPO prompts).")
    n_val: int = Field(32, ge=1, description="Validation prompts.")
    n_test: int = Field(64, ge=1, description="Held-out test prompts for evaluation.")


class CountdownCodeTaskConfig(CountdownTaskConfig):
    """Countdown problems written as a Python function to complete, judged in the sandbox
    (countdown's generator settings, and the sandbox's)."""

    type: Literal["countdown_code"] = "countdown_code"  # type: ignore[assignment]
    timeout_s: float = Field(5.0, gt=0, le=120, description=_SANDBOX_TIMEOUT)
    memory_mb: int = Field(512, ge=64, le=16384, description=_SANDBOX_MEMORY)
    max_workers: int = Field(2, ge=1, le=64, description=_SANDBOX_WORKERS)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description=_SANDBOX_POLICY)


class CodeTaskConfig(TaskConfigBase):
    """Code problems (human-eval format) from a JSONL file, judged by their tests in the sandbox."""

    eval_splits: ClassVar[tuple[str, ...]] = ("train", "val", "test", "all")

    type: Literal["code"] = "code"
    path: str = Field(
        ...,
        description="JSONL file, one {prompt, test, entry_point, canonical_solution?, task_id?, public_test?} per line.",
    )
    seed: int = Field(0, description="Seed of the per-problem train/val/test split.")
    n_train: int | None = Field(None, ge=1, description="Training problems used (first of the split); None: all.")
    n_val: int | None = Field(None, ge=1, description="Validation problems used; None: the whole split.")
    n_test: int | None = Field(None, ge=1, description="Test problems used; None: the whole split.")
    timeout_s: float = Field(10.0, gt=0, le=120, description=_SANDBOX_TIMEOUT)
    memory_mb: int = Field(1024, ge=64, le=16384, description=_SANDBOX_MEMORY)
    max_workers: int = Field(2, ge=1, le=64, description=_SANDBOX_WORKERS)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description=_SANDBOX_POLICY)
    skip_bad_lines: bool = Field(
        False, description="Leave out bad lines (counted and reported) instead of stopping at the first."
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        # a run's data file in cluster.storage, as its workers get it
        if v.startswith(STORED):
            return v
        return str(Path(v).expanduser().resolve())


class HumanEvalTaskConfig(TaskConfigBase):
    """HumanEval problems judged by their unit tests in the sandbox."""

    eval_only: ClassVar[str | None] = (
        "task.type 'humaneval' is an evaluation set (its problems are HumanEval's test split) and does not"
        " train: train on a 'code' task (a JSONL of {prompt, test, entry_point}) and evaluate HumanEval"
        " with polyray eval"
    )
    eval_splits: ClassVar[tuple[str, ...]] = ("test", "all")
    eval_prompts: ClassVar[tuple[int, int | None]] = (164, 164)

    type: Literal["humaneval"] = "humaneval"
    timeout_s: float = Field(10.0, gt=0, le=120, description=_SANDBOX_TIMEOUT)
    memory_mb: int = Field(1024, ge=64, le=16384, description=_SANDBOX_MEMORY)
    max_workers: int = Field(2, ge=1, le=64, description=_SANDBOX_WORKERS)
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description=_SANDBOX_POLICY)


QualityMetric = Literal["rouge1", "rouge2", "rougeL", "embedding", "engagement", "llm_judge"]
DataFormat = Literal["auto", "messages", "prompt_completion", "prompt_response"]
DATA_FIELDS = ("messages", "prompt", "completion", "response", "engagement", "system")


class JsonlTaskConfig(TaskConfigBase):
    """Prompts (and reference responses) from a JSONL file."""

    eval_splits: ClassVar[tuple[str, ...]] = ("train", "val", "test", "all")

    type: Literal["replies", "creative"] = Field(
        "replies", description="Domain label: social replies or creative writing."
    )
    path: str = Field(
        ...,
        description="Data: a JSONL, parquet, CSV or Arrow file (or hf://datasets/owner/name[:split]) of"
        " {messages}, {prompt, completion} or {prompt, response?, engagement?} rows.",
    )
    format: DataFormat = Field(
        "auto",
        description="Row shape: auto (detected per row: messages, else completion, else response), messages"
        " (system + user turns, the final assistant turn the reference), prompt_completion (TRL's keys),"
        " prompt_response.",
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="The file's column names for polyray's, e.g. {prompt: question, response: answer}; keys: "
        + ", ".join(DATA_FIELDS)
        + ".",
    )
    system_prompt: str | None = Field(
        None, description="System prompt of every row that has none of its own (None: only the rows' own)."
    )
    template: str = Field(
        "{prompt}\n",
        description="What the model sees; must contain {prompt}, may contain {system} (else a system prompt"
        " goes before it).",
    )
    quality: QualityMetric = Field(
        "rougeL",
        description="Per-completion quality (the reward): ROUGE F / embedding cosine vs the reference, engagement,"
        " or a judge LLM's score (llm_judge: set judge).",
    )
    judge: JudgeConfig | None = Field(
        None, description="A judge LLM over an OpenAI-compatible endpoint: quality 'llm_judge', and reported beside."
    )
    success_threshold: float = Field(
        0.3, description="Quality at or above which a completion counts as a success (pass@k)."
    )
    seed: int = Field(0, description="Seed of the per-prompt train/val/test split.")
    skip_bad_lines: bool = Field(
        False, description="Leave out bad lines (counted and reported) instead of stopping at the first."
    )
    n_train: int | None = Field(None, ge=1, description="Training prompts used (None: the whole train split).")
    n_val: int | None = Field(None, ge=1, description="Validation prompts used (None: the whole val split).")
    n_test: int | None = Field(None, ge=1, description="Test prompts evaluated (None: the whole test split).")
    engagement_model: str | None = Field(
        None,
        description="Engagement model directory of the 'engagement' reward (GRPO's reward on this task); a run"
        " trains it first when the directory holds none, from the rows of the train posts only (None: cached"
        " per file, seed and rows under ~/.cache/polyray/engagement).",
    )
    eval_quality_model: Literal["held_out", "reward"] = Field(
        "held_out",
        description="The engagement model that judges quality 'engagement' (evaluations, the dynamics probe):"
        " held_out, a second model trained on the rows of the val and test posts only, which GRPO's reward"
        " never saw; reward: the reward model itself (circular: a policy trained on it is judged by it).",
    )
    eval_engagement_model: str | None = Field(
        None,
        description="Directory of the held-out engagement model (eval_quality_model: held_out); a run trains it"
        " first when the directory holds none, from the rows of the val and test posts (None: cached per file,"
        " seed and rows under ~/.cache/polyray/engagement).",
    )

    @field_validator("path", "engagement_model", "eval_engagement_model")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        # Ray workers may run elsewhere than the driver's working directory; a hub id is no path, nor is
        # a reference into cluster.storage (what a run's workers get: polyray.storage)
        if v is None or v.startswith(("hf://", STORED)):
            return v
        return str(Path(v).expanduser().resolve())

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(DATA_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown field {unknown[0]!r}: the keys are polyray's names ({', '.join(DATA_FIELDS)}),"
                " the values the file's column names"
            )
        return v

    @model_validator(mode="after")
    def _judge_set(self) -> JsonlTaskConfig:
        if self.quality == "llm_judge" and self.judge is None:
            raise ValueError("quality 'llm_judge' needs judge: {base_url, model, ...}")
        return self

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("template must contain {prompt}")
        try:
            v.format(prompt="", system="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"template is not a valid format string with only {{prompt}} and {{system}}: {exc}"
            ) from None
        return v

    def needs_engagement_model(self) -> bool:
        return self.quality == "engagement"


TASK_CONFIG_MODELS: tuple[type[TaskConfigBase], ...] = (
    CountdownTaskConfig,
    CountdownCodeTaskConfig,
    CodeTaskConfig,
    HumanEvalTaskConfig,
    JsonlTaskConfig,
)


def task_types(model: type[TaskConfigBase]) -> tuple[str, ...]:
    """The ``type`` values ``model`` accepts (JSONL: ``replies`` and ``creative``)."""
    return get_args(model.model_fields["type"].annotation)


TASK_CONFIGS: dict[str, type[TaskConfigBase]] = {t: m for m in TASK_CONFIG_MODELS for t in task_types(m)}
"""task type -> its config model."""

TaskConfig = Annotated[Union[TASK_CONFIG_MODELS], Field(discriminator="type")]
"""Any task of the registry."""

TrainTaskConfig = Annotated[
    Union[tuple(m for m in TASK_CONFIG_MODELS if m.eval_only is None)], Field(discriminator="type")
]
"""A task a run trains on: every task but the evaluation-only ones (HumanEval)."""
