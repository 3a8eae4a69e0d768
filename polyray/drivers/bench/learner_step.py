"""The child process of ``polyray bench learner`` (:mod:`.learner`): the GRPO learner steps of one case measured in
this interpreter, ``python -m polyray.drivers.bench.learner_step MODEL_DIR CASE_JSON``.

Rollouts come from a stand-in pool (:class:`StandInPool`); memory is the process's resident memory on the CPU and
the GPU's on CUDA (:mod:`.learner`'s module doc says what each peak covers).
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polyray.rollout.request import GenerationRequest


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self, retries: int = 1):
        return self.value


class StandInPool:
    """Rollouts without an engine: prompt ``b``'s group is the same every time. Each prompt has 32-64 random
    token ids (``prompt_tokens``), each completion fills its sequence to ``length`` tokens (``varied``: a
    length drawn uniformly from 1 to that), and every completion token has the log-prob of a uniform
    draw from the vocabulary. ``tokens``: the prompt and completion tokens of the last rollout's sequences."""

    def __init__(
        self, vocab: int, length: int, prompt_tokens: tuple[int, int] = (32, 64), seed: int = 0, varied: bool = False
    ):
        self.vocab, self.length, self.prompt_tokens, self.seed, self.varied = vocab, length, prompt_tokens, seed, varied
        self.tokens = 0

    def submit(self, request: GenerationRequest):
        from polyray.rollout.worker import Sample

        if request.reference is not None:
            raise ValueError(
                "the stand-in pool scores no KL reference: bench learner keeps kl_reference_logprobs 'learner'"
            )
        groups = []
        for b in range(len(request.prompts)):
            rng = random.Random(f"{self.seed}:{b}")
            low, high = self.prompt_tokens
            prompt = [rng.randrange(3, self.vocab) for _ in range(min(rng.randint(low, high), self.length - 1))]
            group = []
            for j in range(request.n):
                fill = self.length - len(prompt)
                ids = [rng.randrange(3, self.vocab) for _ in range(rng.randint(1, fill) if self.varied else fill)]
                uniform = [-math.log(self.vocab)] * len(ids)
                group.append(
                    Sample(
                        prompt_index=b,
                        text=f"{b}:{j}",
                        prompt_token_ids=prompt,
                        token_ids=ids,
                        logprobs=uniform,
                        version=request.version or 0,
                        finished=False,
                    )
                )
            groups.append(group)
        self.tokens = sum(len(s.prompt_token_ids) + len(s.token_ids) for g in groups for s in g)
        return _Done(groups)


def graded_reward(prompts, texts):
    """(B, G) rewards that differ within every group, so every sample has an advantage."""
    import torch

    return torch.tensor([[float((b + j) % 3) for j in range(len(g))] for b, g in enumerate(texts)], dtype=torch.float64)


def _status_bytes(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def rss_bytes() -> int:
    """The process's resident memory now (0 where /proc is not readable)."""
    return _status_bytes("VmRSS") or 0


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's resident memory to what it holds now (Linux
    >= 4.0); False where that is refused (the peak then covers the whole process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """The high-water resident memory since :func:`reset_peak_rss` (or since the process started)."""
    import resource

    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass(frozen=True)
class StepCase:
    """One measured step: ``sequences`` of ``length`` tokens through one path of the learner."""

    sequences: int
    length: int
    micro_batch_tokens: int | None
    logits_chunk_mib: float
    group_size: int = 8
    lora_r: int = 16
    kl_beta: float = 0.04
    threads: int = 2
    # steps before the measured one (the allocator and optimizer as in a run's later steps)
    warmup_steps: int = 1
    # None: whole sequences of ``length`` tokens; "packed" / "one a row": samples of varied lengths on shared
    # prompts (learner.share_prompts), learner.pack_samples on / off
    packing: str | None = None
    # "cpu" or "cuda"
    device: str = "cpu"
    # the base weights' (model.dtype); LoRA stays float32
    dtype: str = "float32"
    # learner.gradient_checkpointing
    gradient_checkpointing: bool = False
    # steps timed after the warm-up (times and tokens/s: their mean)
    measured_steps: int = 1

    @property
    def path(self) -> str:
        if self.packing is not None:
            return f"varied lengths, {self.packing}"
        return "whole batch" if self.micro_batch_tokens is None and not self.logits_chunk_mib else "micro-batched"


def measure_step(model_dir: str, case: StepCase) -> dict[str, Any]:
    """The GRPO learner steps of ``case`` in this process: memory before the model loads, after it loads,
    and the measured steps' peak (resident memory on the CPU, the GPU's on ``cuda``: :mod:`.learner`); the
    step's seconds and tokens (prompt + completion, each sequence's own) per second, by the clock and per
    second of the process's CPU time (what other work on a shared machine disturbs less)."""
    import gc

    import peft  # noqa: F401 (imported before the baseline is read: the runtime, not the model)
    import torch
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401

    torch.set_num_threads(case.threads)
    from polyray.config import LoraConfig
    from polyray.learner.loop import _train_step, build_optimizer
    from polyray.learner.lora import build_peft_model
    import polyray.learner.phases  # noqa: F401 (the phase's modules, too, load before the baseline is read)
    import polyray.tasks  # noqa: F401

    if case.packing is not None and case.gradient_checkpointing:
        raise ValueError("packing cases share prompts, which gradient checkpointing turns off (learner.share_prompts)")
    memory = _GpuMemory() if case.device == "cuda" else _CpuMemory()
    before_load = memory.now()
    # the same LoRA init on every path, as every learner rank seeds it
    torch.manual_seed(0)
    model, tokenizer = build_peft_model(
        model_dir,
        LoraConfig(r=case.lora_r, alpha=2 * case.lora_r),
        case.dtype,
        gradient_checkpointing=case.gradient_checkpointing,
    )
    model.to(case.device).train()
    phase, pool = _stand_in_phase(model, tokenizer, case)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, 1e-5, 0.0)
    gc.collect()
    loaded = memory.now()
    for step in range(case.warmup_steps):
        _train_step(model, phase, optimizer, params=params, grad_clip=1.0, step=step, version=1)
    gc.collect()
    step_only = memory.reset_peak()
    t0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(case.warmup_steps, case.warmup_steps + case.measured_steps):
        metrics, _ = _train_step(model, phase, optimizer, params=params, grad_clip=1.0, step=step, version=1)
    memory.sync()
    seconds = (time.perf_counter() - t0) / case.measured_steps
    cpu_seconds = (time.process_time() - cpu0) / case.measured_steps
    tokens = pool.tokens
    return {
        **asdict(case),
        "path": case.path,
        "before_load_bytes": before_load,
        "loaded_bytes": loaded,
        "peak_bytes": memory.peak(),
        "peak_of": "step" if step_only else "process",
        **memory.extra(),
        "step_s": seconds,
        "cpu_s": cpu_seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "tokens_per_cpu_s": tokens / cpu_seconds,
        "loss": metrics["loss"],
    }


def _stand_in_phase(model, tokenizer, case: StepCase) -> tuple[Any, StandInPool]:
    """The GRPO phase of ``case`` (KL to the adapter-disabled base, the case's micro-batches and packing) and the
    stand-in pool it draws its rollouts from."""
    from polyray.config import GRPOPhaseConfig
    from polyray.config.tasks import CountdownTaskConfig
    from polyray.learner.phases import GRPOPhase, StepContext
    from polyray.tasks import build_task

    group = min(case.group_size, case.sequences)
    if case.sequences % group:
        raise ValueError(f"sequences ({case.sequences}) must be a multiple of the group size ({group})")
    prompts = case.sequences // group
    cfg = GRPOPhaseConfig(
        steps=case.warmup_steps + case.measured_steps,
        prompts_per_step=prompts,
        group_size=group,
        kl_beta=case.kl_beta,
        kl_reference="base",
        sampling={"max_tokens": case.length},
    )
    task_cfg = CountdownTaskConfig(n_train=max(prompts, 8), n_test=8)
    ctx = StepContext(
        model=model,
        tokenizer=tokenizer,
        rank=0,
        world=1,
        seed=0,
        reward_fn=graded_reward,
        micro_batch_tokens=case.micro_batch_tokens,
        logits_chunk_mib=case.logits_chunk_mib,
        share_prompts=case.packing is not None,
        pack_samples=case.packing == "packed",
    )
    pool = StandInPool(model.config.vocab_size, case.length, varied=case.packing is not None)
    return GRPOPhase(cfg, task=build_task(task_cfg), n_train=task_cfg.n_train, ctx=ctx, pool=pool), pool


class _CpuMemory:
    """The process's resident memory (module doc)."""

    def now(self) -> int:
        return rss_bytes()

    def reset_peak(self) -> bool:
        return reset_peak_rss()

    def sync(self) -> None:
        pass

    def peak(self) -> int:
        return peak_rss_bytes()

    def extra(self) -> dict[str, Any]:
        return {}


class _GpuMemory:
    """The GPU's memory as this process takes it: the CUDA context plus the caching allocator's reserve."""

    def __init__(self):
        import torch

        from polyray.learner.memory import expandable_cuda_segments

        # as the learner does on a GPU, before the allocator's first segment
        expandable_cuda_segments()
        # the context exists from here on
        torch.zeros(1, device="cuda")
        self.torch = torch
        free, total = torch.cuda.mem_get_info()
        self.context = total - free - torch.cuda.memory_reserved()

    def now(self) -> int:
        return self.context + self.torch.cuda.memory_reserved()

    def reset_peak(self) -> bool:
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        return True

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def peak(self) -> int:
        return self.context + self.torch.cuda.max_memory_reserved()

    def extra(self) -> dict[str, Any]:
        cuda = self.torch.cuda
        return {
            "context_bytes": self.context,
            "peak_allocated_bytes": cuda.max_memory_allocated(),
            "gpu": cuda.get_device_name(),
        }


def main(argv: list[str]) -> None:
    """The child process: ``python -m polyray.drivers.bench.learner_step MODEL_DIR CASE_JSON`` prints one JSON line."""
    model_dir, case = argv[0], StepCase(**json.loads(argv[1]))
    print(json.dumps(measure_step(model_dir, case)), flush=True)


if __name__ == "__main__":
    from polyray.lifetime import exit_process

    main(sys.argv[1:])
    exit_process(0)  # torch loaded: no native teardown (polyray.lifetime)
