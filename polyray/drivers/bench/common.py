"""What the benchmark parts share: the console they print to, a fit's step statistics, the GRPO batch, and
a random adapter to sample under."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from polyray.io import read_log_jsonl

console = Console(width=140)


def _step_stats(metrics_path: Path, phase: str | list[str], warmup: int) -> dict[str, float]:
    """Medians over the steps of ``phase`` (or of several phases pooled), each phase's first ``warmup`` dropped."""
    phases = [phase] if isinstance(phase, str) else phase
    logged = list(read_log_jsonl(metrics_path))
    rows = [r for p in phases for r in [r for r in logged if r["phase"] == p][warmup:]]
    out = {"steps": len(rows), "step_s": statistics.median(r["step_s"] for r in rows)}
    for key in ("rollout_s", "reward_s", "diversity_s", "sync_s"):
        if key in rows[0]:
            out[key] = statistics.median(r[key] for r in rows)
    # per step: 0 in a step that ran no canary (e.g. SFT's one, at its end)
    if any("canary_s" in r for r in rows):
        out["canary_s"] = statistics.median(r.get("canary_s", 0.0) for r in rows)
    return out


@contextlib.contextmanager
def kept_ranks(run) -> Iterator[Any]:
    """``run``'s learner ranks, started once for every fit of a benchmark part and stopped after it, as a run's
    phases share them (``learner.keep_ranks``; None when it is off: each fit is then a Ray Train fit of its own)."""
    if not run.learner.keep_ranks:
        yield None
        return
    from polyray.learner.group import LearnerGroup

    group = LearnerGroup(run)
    try:
        group.start(run.learner.num_workers)
        yield group
    except BaseException:
        # a fit still running in its thread must see its ranks gone for good, not restart them
        group.cancel()
        raise
    else:
        group.close()


def _grpo_batch(run, prompts: int | None = None):
    """The batch one GRPO step of ``run`` generates: its first GRPO phase's prompts per step (or
    ``prompts``), group size and sampling."""
    from polyray.drivers.bench.rollout import RolloutBatch
    from polyray.rollout.sampling import request_seeds, task_sampling
    from polyray.tasks import build_task

    task = build_task(run.task)
    grpo = next(p for p in run.phases if p.type == "grpo")
    texts = [p.text for p in task.prompts("train", prompts or grpo.prompts_per_step)]
    return RolloutBatch(
        texts,
        grpo.group_size,
        task_sampling(grpo.sampling, task),
        request_seeds(run.seed, "bench", [str(i) for i in range(len(texts))]),
    )


def _random_adapter(model_dir: Path, lora, seed: int) -> dict[str, Any]:
    """A LoRA adapter with non-zero B (peft starts B at 0), as the learner publishes it."""
    import torch

    from polyray.learner.lora import build_peft_model, extract_adapter

    torch.manual_seed(seed)
    model, _ = build_peft_model(str(model_dir), lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return extract_adapter(model)
