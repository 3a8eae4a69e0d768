"""Engine settings per device: what the rollout workers and the generation service pass vLLM on CPU and
on a GPU, checked without a GPU.

- CPU-only environment (``VLLM_CPU_*``, the engine kept in the caller's process) and eager mode stay on CPU,
  exactly as before; on a GPU vLLM's own defaults hold (CUDA graphs and torch.compile, its engine-core
  process, its share of the GPU), and the configured ones are passed.
- The GPU arguments go through vLLM's own validation: ``EngineArgs(**kwargs)`` and ``create_engine_config``.
  On a CPU-only install the latter runs vLLM's CPU platform, which turns compilation and CUDA graphs off
  and applies its own step defaults, so what is checked here is the device-independent part (the step
  left to vLLM with chunked prefill, the context, the GPU share); the device-specific resolution needs the
  CUDA platform (the gpu suite).
"""

from __future__ import annotations

import json

import pytest

from polyray.config import RolloutConfig
from polyray.config.services import GenerationServiceConfig

# every variable only vLLM's CPU backend reads, and the in-process engine polyray asks for on CPU alone
CPU_ONLY = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_ENABLE_V1_MULTIPROCESSING")
GPU = {"gpus_per_worker": 1, "max_model_len": 4096}


def _model(tmp_path, max_positions: int = 40960) -> str:
    """A Qwen3 ``config.json`` alone (no weights): what vLLM's argument validation reads."""
    config = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": 384,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_cpu_only_environment_stays_on_cpu():
    from polyray.generation.deployment import engine_env
    from polyray.rollout.worker import rollout_env

    cpu = rollout_env(RolloutConfig(kv_cache_gib=2, threads=3))
    assert {k: cpu[k] for k in CPU_ONLY} == {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    assert cpu["OMP_NUM_THREADS"] == "3"
    gpu = rollout_env(RolloutConfig(kv_cache_gib=2, threads=3, **GPU))
    assert not set(CPU_ONLY) & set(gpu) and gpu["OMP_NUM_THREADS"] == "3"
    assert set(cpu) - set(gpu) == {*CPU_ONLY, "TORCHDYNAMO_DISABLE"}
    service = engine_env(GenerationServiceConfig(model_dir="m"))
    assert {k: service[k] for k in CPU_ONLY} == {k: cpu[k] for k in CPU_ONLY} | {"VLLM_CPU_KVCACHE_SPACE": "1"}
    assert not set(CPU_ONLY) & set(engine_env(GenerationServiceConfig(model_dir="m", gpus=1)))


def test_an_eager_cpu_engine_runs_without_dynamo_and_a_compiled_one_keeps_it():
    from polyray.generation.deployment import engine_env
    from polyray.rollout.worker import rollout_env

    assert rollout_env(RolloutConfig())["TORCHDYNAMO_DISABLE"] == "1"
    assert "TORCHDYNAMO_DISABLE" not in rollout_env(RolloutConfig(enforce_eager=False))
    assert "TORCHDYNAMO_DISABLE" not in rollout_env(RolloutConfig(enforce_eager=True, **GPU))
    assert engine_env(GenerationServiceConfig(model_dir="m"))["TORCHDYNAMO_DISABLE"] == "1"
    assert "TORCHDYNAMO_DISABLE" not in engine_env(GenerationServiceConfig(model_dir="m", enforce_eager=False))
    assert "TORCHDYNAMO_DISABLE" not in engine_env(GenerationServiceConfig(model_dir="m", gpus=1))


@pytest.mark.vllm
def test_the_sampler_op_dynamo_would_compile_counts_alike_in_eager():
    """With TorchDynamo off, vLLM's one compiled sampler op on an eager CPU engine runs its Python body: the
    token ranks it counts equal the compiled kernel's, ties and -inf included."""
    import torch
    from vllm.v1.sample.ops.logprobs import batched_count_greater_than as compiled

    eager = compiled._torchdynamo_orig_callable
    gen = torch.Generator().manual_seed(0)
    for rows, vocab in [(1, 7), (5, 300), (64, 151)]:
        logprobs = torch.randn(rows, vocab, generator=gen).log_softmax(-1)
        logprobs[:, ::5] = logprobs[:, :1]  # ties with the first token
        logprobs[:, 1::7] = float("-inf")
        picked = logprobs.gather(1, torch.randint(0, vocab, (rows, 1), generator=gen))
        assert torch.equal(compiled(logprobs, picked), eager(logprobs, picked))


def test_eager_mode_by_default_on_cpu_alone(tmp_path):
    from polyray.generation.deployment import engine_args
    from polyray.rollout.worker import engine_kwargs

    cpu = engine_kwargs("m", RolloutConfig(), "float32")
    assert cpu["enforce_eager"] is True and "gpu_memory_utilization" not in cpu
    assert cpu["max_num_batched_tokens"] == 128 * 128  # whole prompts per step, as before
    gpu = engine_kwargs("m", RolloutConfig(**GPU), "bfloat16")
    assert gpu["enforce_eager"] is False and gpu["max_num_batched_tokens"] is None
    assert engine_kwargs("m", RolloutConfig(enforce_eager=True, **GPU), "bfloat16")["enforce_eager"] is True
    assert engine_kwargs("m", RolloutConfig(enforce_eager=False), "float32")["enforce_eager"] is False
    model = _model(tmp_path)
    assert engine_args(GenerationServiceConfig(model_dir=model)).enforce_eager is True
    assert engine_args(GenerationServiceConfig(model_dir=model, gpus=1)).enforce_eager is False


def test_gpu_defaults_are_vllms():
    """polyray's GPU defaults are vLLM's own (its share of the GPU, CUDA graphs): a vLLM upgrade that moves
    one fails here."""
    from vllm.config import CacheConfig, ModelConfig
    from vllm.engine.arg_utils import EngineArgs

    share = CacheConfig.__pydantic_fields__["gpu_memory_utilization"].default
    assert RolloutConfig().gpu_memory_utilization == share == EngineArgs.gpu_memory_utilization
    assert GenerationServiceConfig(model_dir="m").gpu_memory_utilization == share
    from polyray.rollout.worker import device_engine_args

    eager = device_engine_args(1, None, share)["enforce_eager"]
    assert eager == EngineArgs.enforce_eager == ModelConfig.__pydantic_fields__["enforce_eager"].default


def test_gpu_arguments_pass_vllms_validation(tmp_path):
    """The rollout workers' and the service's GPU arguments build vLLM's engine config: the step is left to
    vLLM (chunked prefill, one of its default sizes, not max_num_seqs x the model's 40,960 tokens in one
    profile pass), the configured share of the GPU and context are what vLLM gets."""
    from vllm.engine.arg_utils import AsyncEngineArgs, EngineArgs
    from vllm.usage.usage_lib import UsageContext

    from polyray.generation.deployment import engine_args
    from polyray.rollout.worker import engine_kwargs

    model = _model(tmp_path)
    rollout = RolloutConfig(gpu_memory_utilization=0.8, **GPU)
    config = EngineArgs(**engine_kwargs(model, rollout, "bfloat16")).create_engine_config(UsageContext.LLM_CLASS)
    assert config.cache_config.gpu_memory_utilization == 0.8 and config.model_config.max_model_len == 4096
    assert config.model_config.enforce_eager is False
    assert config.scheduler_config.enable_chunked_prefill and config.scheduler_config.max_num_batched_tokens <= 16384
    explicit = engine_kwargs(model, RolloutConfig(max_num_batched_tokens=8192, **GPU), "bfloat16")
    assert EngineArgs(**explicit).create_engine_config().scheduler_config.max_num_batched_tokens == 8192

    service = engine_args(GenerationServiceConfig(model_dir=model, gpus=1, dtype="bfloat16"))
    assert isinstance(service, AsyncEngineArgs) and service.max_num_batched_tokens is None
    config = service.create_engine_config()
    assert config.model_config.max_model_len == 40960 and config.scheduler_config.max_num_batched_tokens <= 16384
    assert config.cache_config.gpu_memory_utilization == GenerationServiceConfig(model_dir=model).gpu_memory_utilization


@pytest.mark.parametrize("gpus", [0.5, 0.25])
def test_engines_sharing_a_gpu_must_fit_it_together(gpus):
    """Ray places actors whose GPU fractions add up to one on the same GPU; each vLLM engine asks for its share
    of the whole GPU's memory and fails at start when less is free: refused at load, with the fix."""
    from pydantic import ValidationError

    most = gpus * RolloutConfig().gpu_memory_utilization
    with pytest.raises(ValidationError, match=rf"gpu_memory_utilization 0.92 .*at most {most:g}"):
        RolloutConfig(gpus_per_worker=gpus)
    with pytest.raises(ValidationError, match=rf"gpu_memory_utilization 0.92 .*at most {most:g}"):
        GenerationServiceConfig(model_dir="m", gpus=gpus)
    assert RolloutConfig(gpus_per_worker=gpus, gpu_memory_utilization=most).gpus_per_worker == gpus
    assert GenerationServiceConfig(model_dir="m", gpus=gpus, gpu_memory_utilization=most).gpus == gpus
    with pytest.raises(ValidationError, match="gpus_per_worker 1.5: above 1"):
        RolloutConfig(gpus_per_worker=1.5)


def test_the_services_step_is_whole_prompts_on_cpu_alone():
    """A step set below whole prompts is refused on CPU (vLLM on CPU cannot rewind a per-request seed over a
    split prefill) and kept on GPU, where vLLM's runner rewinds it."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"max_num_batched_tokens \(1024\) must be >= .* \(4096\) on CPU"):
        GenerationServiceConfig(model_dir="m", max_model_len=128, max_num_batched_tokens=1024)
    assert GenerationServiceConfig(model_dir="m", gpus=1, max_model_len=128, max_num_batched_tokens=1024).gpus == 1


def test_engines_sharing_a_gpu_start_one_after_another():
    """vLLM's start asserts that the GPU's free memory did not grow while it profiled: a second engine on
    the same GPU must start only once the first is ready. Engines with a GPU each (or on CPU) start at once."""
    from polyray.rollout.pool import start_in_turn

    def record(one_at_a_time: bool) -> list[str]:
        events: list[str] = []

        def start(i: int) -> str:
            events.append(f"start {i}")
            return f"worker {i}"

        def ready(worker: str) -> None:
            events.append(f"ready {worker}")

        workers = start_in_turn(start, 3, ready, one_at_a_time)
        assert workers == ["worker 0", "worker 1", "worker 2"]
        return events

    assert record(True) == ["start 0", "ready worker 0", "start 1", "ready worker 1", "start 2"]
    assert record(False) == ["start 0", "start 1", "start 2"]


@pytest.mark.parametrize(("gpus", "in_turn"), [(0.0, False), (0.5, True), (1.0, False), (2.0, False)])
def test_a_pool_starts_its_workers_in_turn_only_where_they_share_a_gpu(monkeypatch, gpus, in_turn):
    import polyray.rollout.pool as pool_module
    from polyray.config import RolloutConfig

    seen = {}

    def recording(start, n, ready, one_at_a_time):
        seen.update(n=n, one_at_a_time=one_at_a_time)
        return []

    monkeypatch.setattr(pool_module, "start_in_turn", recording)
    share = {"gpu_memory_utilization": 0.45} if gpus == 0.5 else {}
    config = RolloutConfig(num_workers=2, gpus_per_worker=gpus, tensor_parallel_size=max(1, int(gpus)), **share)
    pool_module.RolloutPool.launch("model", config, wait=False)
    assert seen == {"n": 2, "one_at_a_time": in_turn}
