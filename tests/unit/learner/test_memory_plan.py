"""The memory plan (polyray.learner.memory) against independent references, and its refusals.

- Weights and LoRA terms: the parameter counts of a real (tiny, random) transformers Qwen3 and its peft
  LoRA adapter, counted with ``sum(p.numel())``, tied and untied, every projection or a few.
- Activations: the bytes autograd saves per token per decoder layer (``saved_tensors_hooks``, each
  storage once; the difference between a 3-layer and a 2-layer model) on shapes the formula was not
  fitted on, float32 and bfloat16, padded or not, with gradient checkpointing.
- Refusals: one line naming the field to change (learner micro-batch or logits chunk, the dtype when
  the weights alone do not fit, the rollout worker's tensor parallelism, the CPU KV cache); a config
  that fits passes; every GPU preset fits the GPU memory it declares, at worst-case sequence lengths.
"""

from __future__ import annotations

import math
import os

import pytest
from support.model_shapes import QWEN3
import torch

from polyray.config import LoraConfig, RunConfig, load_config
from polyray.io import ConfigError
from polyray.learner.memory import (
    GIB,
    MicroBatch,
    ModelShape,
    bound_lengths,
    check_run,
    largest_micro_batch,
    learner_memory,
    lora_parameters,
    phase_micro_batch,
    saved_bytes_per_token,
)

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _config(**overrides) -> dict:
    """A small Qwen3 ``config.json`` mapping (shapes unlike the ones the activation formula was fitted on)."""
    return {
        "model_type": "qwen3",
        "num_hidden_layers": 2,
        "hidden_size": 96,
        "intermediate_size": 160,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 300,
        "tie_word_embeddings": True,
        **overrides,
    }


def _qwen3(config: dict, dtype=torch.float32):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    return Qwen3ForCausalLM(Qwen3Config(**config, max_position_embeddings=512)).to(dtype)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("targets", [ALL, ["q_proj", "v_proj"], ["o_proj", "down_proj"]])
def test_weight_and_lora_terms_count_a_real_qwen3_with_peft(tied, targets):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    config = _config(tie_word_embeddings=tied)
    model = _qwen3(config)
    base = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    peft_model = get_peft_model(model, PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets))
    adapter = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    shape = ModelShape.from_config(config)
    assert shape.parameters() == base
    assert lora_parameters(shape, 4, targets) == adapter
    plan = learner_memory(shape, LoraConfig(r=4, target_modules=targets), "float32", MicroBatch(1, 8))
    assert plan.terms["weights"] == 4 * base
    assert plan.terms["LoRA"] == 16 * adapter  # float32 parameter, gradient and AdamW's two moments


def _saved_per_token_layer(config: dict, targets, dtype, batch: int, length: int, padded: bool, checkpointing=False):
    """Bytes autograd saves per token per decoder layer: a 3-layer model's forward minus a 2-layer one's."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    from polyray.models.batching import _hidden_states_out

    def saved(layers: int) -> int:
        model = _qwen3({**config, "num_hidden_layers": layers}, dtype)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, PeftLoraConfig(r=4, lora_alpha=8, target_modules=targets))
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        storages: dict[int, int] = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        ids = torch.randint(0, config["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(batch, length, dtype=torch.long)
        if padded:
            mask[0, length // 2 :] = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _hidden_states_out(model):
            model(input_ids=ids, attention_mask=mask)
        return sum(n for ptr, n in storages.items() if ptr not in params)

    return (saved(3) - saved(2)) / (batch * length)


@pytest.mark.parametrize(
    "dtype,targets,padded",
    [
        (torch.float32, ALL, False),
        (torch.float32, ALL, True),
        (torch.bfloat16, ALL, False),
        (torch.bfloat16, ALL, True),
        (torch.float32, ["q_proj", "v_proj", "down_proj"], False),
        (torch.bfloat16, ["k_proj", "o_proj", "up_proj"], True),
    ],
)
def test_saved_activations_match_autograd(dtype, targets, padded):
    torch.set_num_threads(1)
    config = _config()
    measured = _saved_per_token_layer(config, targets, dtype, batch=3, length=24, padded=padded)
    b = torch.finfo(dtype).bits // 8
    lora = LoraConfig(r=4, target_modules=targets)
    assert saved_bytes_per_token(ModelShape.from_config(config), b, lora, padded, 24) == measured


def test_checkpointing_keeps_each_layers_input():
    torch.set_num_threads(1)
    config = _config()
    measured = _saved_per_token_layer(config, ALL, torch.float32, batch=2, length=16, padded=False, checkpointing=True)
    assert measured == 4 * config["hidden_size"]  # the layer's float32 input; the rest is recomputed
    shape, micro = ModelShape.from_config(config), MicroBatch(2, 16)
    lora = LoraConfig(target_modules=ALL)
    plain = learner_memory(shape, lora, "float32", micro).terms["activations"]
    ckpt = learner_memory(shape, lora, "float32", micro, gradient_checkpointing=True).terms["activations"]
    per_layer = saved_bytes_per_token(shape, 4, lora, True, 16)
    assert (
        plain - ckpt == micro.tokens * (shape.layers - 1) * per_layer - micro.tokens * shape.layers * 4 * shape.hidden
    )


def test_logits_term_counts_chunks_or_the_whole_tensor():
    shape = ModelShape.from_config(_config(vocab_size=151_936))
    lora = LoraConfig()
    chunked = learner_memory(shape, lora, "float32", MicroBatch(8, 256), logits_chunk_mib=256).terms["logits"]
    assert chunked == 3 * 441 * 151_936 * 4  # 441 positions fit 256 MiB
    whole = learner_memory(shape, lora, "float32", MicroBatch(8, 256), logits_chunk_mib=0).terms["logits"]
    assert whole == 4 * 8 * 256 * 151_936 * 4
    small = learner_memory(shape, lora, "float32", MicroBatch(1, 100), logits_chunk_mib=256).terms["logits"]
    assert small == 3 * 100 * 151_936 * 4  # a micro-batch smaller than a chunk


def test_largest_micro_batch():
    assert largest_micro_batch(64, 256, 2048) == MicroBatch(8, 256)
    assert largest_micro_batch(4, 256, 2048) == MicroBatch(4, 256)  # the shard is smaller than the budget
    assert largest_micro_batch(64, 4096, 2048) == MicroBatch(1, 4096)  # a longer sequence goes alone
    assert largest_micro_batch(64, 256, None) == MicroBatch(64, 256)


def test_phase_micro_batches_split_the_step_over_ranks():
    run = RunConfig.model_validate(
        {
            "learner": {"num_workers": 3},
            "phases": [
                {"type": "sft", "batch_size": 32},
                {"type": "polychromic_sft", "name": "poly", "batch_size": 10, "prompts_per_step": 4, "n_samples": 3},
                {"type": "grpo", "prompts_per_step": 16, "group_size": 8, "sampling": {"max_tokens": 40}},
            ],
        }
    )
    lengths = bound_lengths(run, longest_prompt=30, longest_reference=50)
    assert phase_micro_batch(run, 0, lengths) == MicroBatch(math.ceil(32 / 3), 50)
    assert phase_micro_batch(run, 1, lengths) == MicroBatch(4 + 2 * 3, 30 + 24)  # references + whole groups
    assert phase_micro_batch(run, 2, lengths) == MicroBatch(math.ceil(128 / 3), 70)
    capped = bound_lengths(run)  # no tokenizer: rollout.max_model_len bounds every sequence
    assert phase_micro_batch(run, 2, capped).length == run.rollout.max_model_len


def test_a_multi_turn_run_bounds_its_sampled_sequences_by_the_episode_budget():
    run = load_config("configs/multiturn.yaml")
    lengths = bound_lengths(run, longest_prompt=30, longest_reference=50)
    # a whole episode, not the prompt and one turn
    assert lengths.sampled == {"grpo": run.env.max_total_tokens} and lengths.references == 50
    assert "env.max_total_tokens" in lengths.source


def test_a_phase_with_its_own_ranks_splits_its_step_over_them():
    run = RunConfig.model_validate(
        {
            "learner": {"num_workers": 2},
            "phases": [
                {"type": "sft", "batch_size": 32},
                {"type": "grpo", "prompts_per_step": 16, "group_size": 8, "learner_workers": 1},
            ],
        }
    )
    lengths = bound_lengths(run, longest_prompt=30, longest_reference=50)
    assert [run.phase_workers(i) for i in range(2)] == [2, 1] and run.most_learner_workers == 2
    assert phase_micro_batch(run, 0, lengths).sequences == 16  # 32 over 2 ranks
    assert phase_micro_batch(run, 1, lengths).sequences == 128  # the whole step on its one rank


def _gpu_run(**learner) -> RunConfig:
    return load_config("configs/gpu/qwen3_0.6b.yaml", [f"learner.{k}={v}" for k, v in learner.items()])


def test_a_config_that_cannot_fit_is_refused_in_one_line_naming_the_field():
    config = QWEN3["Qwen/Qwen3-0.6B"]
    run = _gpu_run(micro_batch_tokens="null", gpu_memory_gib=80)
    with pytest.raises(ConfigError) as err:
        check_run(run, config, bound_lengths(run))
    message = str(err.value)
    assert (
        message.startswith("learner.micro_batch_tokens: a learner rank needs ~")
        and "> learner.gpu_memory_gib 80" in message
    )
    assert "\n" not in message and "gradient_checkpointing" in message
    shallow = {**config, "num_hidden_layers": 2}  # few layers: the logits outweigh the activations
    whole = _gpu_run(micro_batch_tokens=16384, logits_chunk_mib=0, gpu_memory_gib=20)
    with pytest.raises(ConfigError, match=r"^learner.logits_chunk_mib: "):
        check_run(whole, shallow, bound_lengths(whole))
    assert check_run(_gpu_run(micro_batch_tokens=16384, gpu_memory_gib=20), shallow, bound_lengths(whole))


def test_weights_that_cannot_fit_name_the_dtype_or_the_model():
    config = QWEN3["Qwen/Qwen3-8B"]
    run = _gpu_run(micro_batch_tokens=256, gpu_memory_gib=16)  # 15.3 GiB of untied bfloat16 weights
    with pytest.raises(ConfigError, match=r"^model.source: a learner rank needs ~"):
        check_run(run, config, bound_lengths(run))
    fp32 = load_config(
        "configs/gpu/qwen3_0.6b.yaml",
        ["model.dtype=float32", "learner.micro_batch_tokens=256", "learner.gpu_memory_gib=32"],
    )
    with pytest.raises(ConfigError, match=r"^model.dtype: "):
        check_run(fp32, config, bound_lengths(fp32))  # untied 8B in float32: 61 GiB of weights


def test_rollout_worker_that_cannot_fit_is_refused():
    config = QWEN3["Qwen/Qwen3-8B"]
    run = load_config(
        "configs/gpu/replies_qwen3_8b.yaml",
        ["rollout.gpu_memory_gib=16", "rollout.tensor_parallel_size=1", "rollout.gpus_per_worker=1"],
    )
    with pytest.raises(ConfigError, match=r"^rollout.tensor_parallel_size: a rollout worker needs ~.*> 0.92 x"):
        check_run(run, config, bound_lengths(run))
    cpu = RunConfig.model_validate({"rollout": {"max_model_len": 4096}})
    with pytest.raises(ConfigError, match=r"^rollout.kv_cache_gib: "):
        check_run(cpu, _config(num_hidden_layers=512, num_key_value_heads=6, head_dim=128), bound_lengths(cpu))


def test_the_rollout_plan_takes_the_configured_share_of_the_gpu():
    """vLLM's engine takes rollout.gpu_memory_utilization of each GPU (vLLM's 0.92 by default): the plan's
    limit, its header line and its refusal use that share."""
    run = load_config("configs/gpu/qwen3_0.6b.yaml", ["rollout.gpu_memory_gib=80"])
    lines = check_run(run, QWEN3["Qwen/Qwen3-0.6B"], bound_lengths(run))
    assert "of 0.92 x 80 GiB" in lines[-1]
    small = load_config(
        "configs/gpu/qwen3_0.6b.yaml", ["rollout.gpu_memory_utilization=0.03", "rollout.gpu_memory_gib=80"]
    )
    with pytest.raises(ConfigError, match=r"^rollout.tensor_parallel_size: .*> 0.03 x rollout.gpu_memory_gib 80"):
        check_run(small, QWEN3["Qwen/Qwen3-0.6B"], bound_lengths(small))


def test_a_gpu_engine_steps_by_vllms_default_unless_set():
    """On GPU max_num_batched_tokens is left to vLLM (chunked prefill: at most its largest default step, and
    never more than max_num_seqs x max_model_len); one set explicitly is planned as set, and a step the GPU
    cannot hold is refused naming it."""
    from polyray.config import RolloutConfig
    from polyray.learner.memory import rollout_memory

    shape = ModelShape.from_config(QWEN3["Qwen/Qwen3-1.7B"])
    plan = lambda **kw: rollout_memory(shape, RolloutConfig(gpus_per_worker=1, **kw), "bfloat16")  # noqa: E731
    default = plan(max_model_len=2048, max_num_seqs=128)
    assert default.terms == plan(max_model_len=2048, max_num_seqs=128, max_num_batched_tokens=16384).terms
    assert (
        plan(max_model_len=512, max_num_seqs=4).terms
        == plan(max_model_len=512, max_num_seqs=4, max_num_batched_tokens=2048).terms
    )
    huge = load_config(
        "configs/gpu/replies_qwen3_8b.yaml", ["rollout.max_num_batched_tokens=1310720", "rollout.gpu_memory_gib=40"]
    )
    with pytest.raises(ConfigError, match=r"^rollout.max_num_batched_tokens: a rollout worker needs"):
        check_run(huge, QWEN3["Qwen/Qwen3-8B"], bound_lengths(huge))


def test_a_config_that_fits_passes_and_prints_its_plan():
    from polyray.models.tiny import tiny_model_config

    run = load_config("configs/quickstart.yaml")
    lines = check_run(run, tiny_model_config(run.model.tiny), bound_lengths(run))
    assert len(lines) == 2 and lines[0].startswith("memory plan: learner rank ~") and "rollout worker (CPU)" in lines[1]
    gpu = load_config("configs/gpu/qwen3_0.6b.yaml", ["learner.gpu_memory_gib=80", "rollout.gpu_memory_gib=80"])
    lines = check_run(gpu, QWEN3["Qwen/Qwen3-0.6B"], bound_lengths(gpu))
    assert "of 80 GiB" in lines[0] and "the KV cache gets" in lines[1]


@pytest.mark.parametrize(
    "path",
    [
        "configs/gpu/qwen3_0.6b.yaml",
        "configs/gpu/code_qwen3.yaml",
        "configs/gpu/replies_qwen3.yaml",
        "configs/gpu/replies_qwen3_8b.yaml",
    ],
)
def test_gpu_presets_fit_the_gpus_they_were_sized_for(path):
    """At worst-case lengths (every sequence rollout.max_model_len long), so any data fits; on the GPUs the
    preset's header names (its ``polyray check ... --gpu-memory-gib N`` line); the memory itself is left to
    the cluster (read from its GPUs at start), so a smaller GPU is refused rather than trusted."""
    import re

    from polyray.cluster import with_gpu_memory

    run = load_config(path)
    assert run.learner.gpu_memory_gib is None and run.rollout.gpu_memory_gib is None
    sized_for = float(re.search(r"--gpu-memory-gib (\d+)", open(path).read()).group(1))
    check_run(with_gpu_memory(run, sized_for), QWEN3[run.model.source], bound_lengths(run))
    with pytest.raises(ConfigError):
        check_run(with_gpu_memory(run, 12), QWEN3[run.model.source], bound_lengths(run))


def test_gpu_memory_fields_need_a_gpu():
    with pytest.raises(ConfigError, match="learner.*gpu_memory_gib is a learner rank's GPU memory"):
        load_config(None, ["learner.gpu_memory_gib=80"])
    with pytest.raises(ConfigError, match="rollout.*gpu_memory_gib is a rollout worker's GPU memory"):
        load_config(None, ["rollout.gpu_memory_gib=80"])


def test_the_driver_plans_the_embedded_model_before_and_after_it_is_built(tmp_path):
    """Before the build: the embedded model's settings, lengths bounded by max_model_len; with a model
    directory: its config.json, lengths bounded by its tokenizer's count of the training prompts."""
    from support.phase_harness import tiny_model_dir
    from polyray.drivers.preflight import plan_memory

    run = load_config("configs/quickstart.yaml")
    before = plan_memory(run, None)
    assert "bounded by rollout.max_model_len" in before[0]
    after = plan_memory(run, tiny_model_dir(tmp_path))
    assert "bounded by longest training prompt + max_tokens" in after[0]
    hub = load_config("configs/quickstart.yaml", ["model.source=someone/not-downloaded"])
    assert plan_memory(hub, None) == []  # planned once prepare_inputs has it


def test_plan_describes_its_terms_in_gib():
    plan = learner_memory(ModelShape.from_config(_config()), LoraConfig(), "float32", MicroBatch(2, 8))
    text = plan.describe()
    assert text.startswith(f"~{plan.total / GIB:.1f} GiB (weights ") and "runtime" in text


def test_expandable_segments_are_set_unless_the_user_set_the_allocator(monkeypatch):
    from polyray.learner.memory import EXPANDABLE_SEGMENTS, expandable_cuda_segments

    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    assert expandable_cuda_segments() and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == EXPANDABLE_SEGMENTS
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
        monkeypatch.setenv(name, "max_split_size_mb:128")
        assert not expandable_cuda_segments() and os.environ[name] == "max_split_size_mb:128"
        assert name == "PYTORCH_CUDA_ALLOC_CONF" or "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
        monkeypatch.delenv(name)
