"""The GPU smoke check (``make gpu-smoke``): the GPU-only paths of a run, in a few minutes on one GPU.

- a :class:`~polyray.rollout.worker.RolloutWorker` on CUDA vLLM, Qwen3-0.6B's shape (random weights) in
  bfloat16 with LoRA r 32: it samples, a LoRA version is published to it as a run publishes, its
  log-probs of a completion pass the sync canary's check against the learner (peft, bfloat16 on the
  same GPU), and the canary catches the worker when it serves the base model instead;
- one GRPO phase of two steps through ``polyray run``: a local Ray cluster, the rollout worker's vLLM
  engine on the GPU (its engine core in a child process of the actor, vLLM's default there), the
  learner on the GPU when there is a second one (on the CPU otherwise: a rank holds a whole GPU),
  the reward service, a publish per step and the canary.

Each test says what it skips: without vLLM (the ``gpu`` extra) or Ray, the learner part still runs
(``tests/gpu/test_gpu_worker.py`` in the same target).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu]

ROOT = Path(__file__).resolve().parents[2]


def _needs(*modules: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (pip install -e '.[gpu]'): skipped, the learner part runs alone")


class _InProcessPool:
    """The one method of :class:`~polyray.rollout.pool.RolloutPool` the canary's check calls, on a worker in
    this process (no Ray here)."""

    def __init__(self, worker):
        self.workers = [worker]

    def score(self, prompt_ids, completion_ids, version, worker: int = 0):
        return self.workers[worker].score(prompt_ids, completion_ids, version)


def test_a_cuda_rollout_worker_serves_a_published_lora_the_canary_accepts(tmp_path):
    _needs("vllm")
    from polyray.config import LoraConfig, RolloutConfig, SamplingConfig
    from polyray.drivers.bench.learner import BenchShape, build_bench_model
    from polyray.learner.lora import build_peft_model, extract_adapter
    from polyray.learner.sync import SyncCanary, SyncCanaryError
    from polyray.rollout.store import to_wire
    from polyray.rollout.worker import RolloutWorker

    started = time.perf_counter()
    model_dir = build_bench_model(tmp_path / "model", BenchShape(layers=28))
    lora = LoraConfig(r=32, alpha=64)
    learner, _ = build_peft_model(str(model_dir), lora, "bfloat16")
    torch.manual_seed(0)
    with torch.no_grad():  # a LoRA that moves the log-probs (peft starts B at 0)
        for name, p in learner.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2e-3)
    learner = learner.to("cuda")
    # half the GPU: the learner shares it
    config = RolloutConfig(gpus_per_worker=1, gpu_memory_utilization=0.5, max_model_len=256, max_lora_rank=32)
    worker = RolloutWorker(str(model_dir), config, "bfloat16")
    try:
        worker.load_adapter(1, to_wire(extract_adapter(learner)))
        prompt = torch.randint(3, 151_000, (24,), generator=torch.Generator().manual_seed(1)).tolist()
        sample = worker.draw(prompt, SamplingConfig(temperature=1.0, max_tokens=16), 1, seed=0)
        assert sample.version == 1 and len(sample.token_ids) == len(sample.logprobs) > 0
        canary = SyncCanary(1, (prompt, list(sample.token_ids)), 0, "bfloat16")
        gap = canary.check(learner, _InProcessPool(worker), 1)
        with pytest.raises(SyncCanaryError, match="not the published adapter|not sampling the published adapter"):
            canary.check(learner, _InProcessPool(_ServesTheBase(worker)), 1)
    finally:
        worker.close()
    print(
        f"\nrollout worker on {torch.cuda.get_device_name()}: canary gap {gap:.4f}, {time.perf_counter() - started:.0f} s"
    )


class _ServesTheBase:
    """A worker that kept the base model: scores every version as version 0."""

    def __init__(self, worker):
        self.worker = worker

    def score(self, prompt_ids, completion_ids, version):
        return self.worker.score(prompt_ids, completion_ids, None)


def smoke_run_overrides(gpus: int, dtype: str = "bfloat16") -> list[str]:
    """``polyray run configs/quickstart.yaml`` as one GRPO phase of two steps on ``gpus`` GPUs: the rollout
    worker on one, the learner on a second (else on the CPU), a short embedded model build."""
    sets = ["model.tiny.pretrain_steps=50", f"model.dtype={dtype}", "cluster.dashboard=false"]
    sets += ["phases=[{type: grpo, name: grpo, steps: 2, prompts_per_step: 4, group_size: 4}]"]
    sets += ["task.n_test=8", "eval.base=false", "eval.n_samples=2", "eval.ks=[1, 2]", "dynamics.every=0"]
    if gpus:
        sets += ["rollout.gpus_per_worker=1", "rollout.gpu_memory_utilization=0.5", "rollout.max_model_len=256"]
    if gpus >= 2:
        sets += ["learner.use_gpu=true", "learner.num_workers=1"]
    return sets


def test_one_grpo_step_through_polyray_run_on_cuda(tmp_path):
    _needs("vllm", "ray")
    gpus = torch.cuda.device_count()
    out = tmp_path / "run"
    command = [sys.executable, "-m", "polyray", "run", "configs/quickstart.yaml", "--output-dir", str(out)]
    command += [arg for s in smoke_run_overrides(gpus) for arg in ("--set", s)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r.get("phase") == "grpo" and "loss" in r]
    assert [r["step"] for r in steps] == [1, 2], rows
    assert any("canary_gap" in r for r in steps), steps  # the publish was checked on the worker
    results = json.loads((out / "results.json").read_text())
    assert "grpo" in results["phases"]
    print(f"\none GRPO phase through polyray run on {gpus} GPU(s): {time.perf_counter() - started:.0f} s")
