"""Plan the evaluation job: every (task, model) unit with the prompts that fit the context.

A prompt is evaluated only if its tokens plus ``sampling.max_tokens`` fit in
``rollout.max_model_len`` (every completion gets its full budget); others are skipped,
counted per model in ``results.json`` with a one-line warning, never an error.
``max_prompt_tokens`` first truncates long prompts from the left (keeping the end, where
the question is; few-shot examples go first). Few-shot models prepend ``few_shot``
training examples (one per line; completions stop at the end of their line).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from polyray.config import SamplingConfig
from polyray.config.eval_job import EvalJobConfig, task_name
from polyray.drivers.evaluate.models import ResolvedModel
from polyray.eval.policy_eval import few_shot_prefix
from polyray.io import warn
from polyray.rollout.sampling import JudgedGroups
from polyray.tasks import Prompt


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
    # list[list[Sample]]
    samples: list = field(default_factory=list)
    judged: JudgedGroups | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _prompt_id(p: Prompt, split: str, i: int) -> str:
    return str(p.meta.get("task_id") or p.meta.get("prompt_id") or f"{split}/{i}")


def _unit_sampling(cfg: EvalJobConfig, task_cfg, task, shots: int) -> SamplingConfig:
    sampling = task_cfg.sampling or cfg.sampling
    stops = list(sampling.stop) + list(task.stop_sequences)
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
                if not task.supports_few_shot:
                    unit.skip_reason = f"few-shot needs a train split; {tname} has none"
                    continue
                try:
                    prefix = few_shot_prefix(task, model.few_shot)
                except ValueError as exc:
                    unit.skip_reason = f"few-shot examples unavailable: {exc}"
                    continue
            fitted = fit_prompts(
                [prefix + p.text for p in prompts],
                tokenizer,
                cfg.rollout.max_model_len,
                unit.sampling.max_tokens,
                cfg.max_prompt_tokens,
            )
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


def warn_skips(units: list[EvalUnit]) -> None:
    for u in units:
        if u.skip_reason:
            warn(f"{u.model.name} on {u.task_name}: skipped ({u.skip_reason})")
        elif u.skipped_ids:
            warn(
                f"{u.model.name} on {u.task_name}: {len(u.skipped_ids)}/{u.n_requested} prompts skipped"
                f" (prompt + max_tokens {u.sampling.max_tokens} > max_model_len)"
            )
