"""The memory plan: each learner rank's and rollout worker's peak memory, estimated before anything starts.

A config whose learner rank or rollout worker cannot fit the GPU memory it declares
(``learner.gpu_memory_gib``, ``rollout.gpu_memory_gib``) fails after minutes of start-up with an
out-of-memory error deep in a Ray worker; the plan refuses it at load instead, with one line naming
the field to change, and the run header prints it either way (docs/algorithms.md §2 "Memory plan").
Everything here but :func:`expandable_cuda_segments` is arithmetic on the model's ``config.json`` and
the run's config: no torch, no model.

A learner rank's peak, for its largest micro-batch (:func:`learner_memory`), is the sum of

- **weights**: every base parameter in the model's dtype;
- **LoRA**: the adapter's parameters in float32 (peft keeps adapters in float32 under a bf16 base)
  with their gradients and AdamW's two moments (16 bytes a parameter), and a frozen KL reference
  adapter when the phase has one;
- **activations**: what the forward pass keeps for the backward pass, per token per decoder layer,
  from :func:`saved_bytes_per_token` (or with gradient checkpointing each layer's input plus one
  layer recomputed);
- **logits**: the token log-probs' float32 logits, ``LOGITS_COPIES`` chunks of
  ``learner.logits_chunk_mib`` at once (``0``: copies of the whole (sequences x tokens x vocabulary)
  tensor), one more for a sampling temperature other than 1, half a copy more under bfloat16;
- **temporaries**: one decoder layer's intermediate tensors that are not kept (the KL reference
  forward, or a layer's gradients in the backward pass);
- **runtime**: what the process holds besides (CPU: the interpreter with torch, transformers, peft and
  Ray, 0.6 GiB before the model loads, and the freed blocks the C allocator keeps: glibc serves
  tensors under 32 MiB from its heap once a large one was freed, and keeps what it frees there;
  GPU: the CUDA context and what PyTorch's caching allocator reserves beyond what is allocated).

Which numbers are measured and which are fitted: the activation coefficients are counts of the
bytes autograd saves (``torch.autograd.graph.saved_tensors_hooks``, storages counted once) in a
transformers Qwen3 decoder layer with peft LoRA, fitted exactly (zero residual) over shapes that
vary each dimension, in float32 and bfloat16, on CPU (``tests/unit/learner/test_memory_plan.py`` checks the
formula against fresh counts on other shapes); their growth with the micro-batch matches the growth of
measured peaks (+0.26 GiB measured, +0.24 GiB estimated from 1024 to 2048 tokens). ``LOGITS_COPIES``
follows from the backward pass of log-softmax and agrees with the measured growth of the whole-logits
peak (4.0 copies). The CPU runtime is 0.6 GiB measured before the model loads plus 0.6 GiB fitted:
the mean over calibration runs of the benchmark model (micro-batches of 2048 tokens, steps after a
first one, chunks of 256 MiB) of measured peak minus every other term, 1.0-1.6 GiB, so one run's
peak scatters by about +-0.3 GiB around the estimate; with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``, every block over 4 MiB returned when freed) the same steps peak 0.5-1.0
GiB lower, whatever their size. The GPU runtime, 1 GiB, is the CUDA context (0.60 GiB measured on an
H100 with PyTorch 2.11) plus the caching allocator's reserve beyond what is allocated; a learner on a
GPU grows its allocator's segments (:func:`expandable_cuda_segments`), without which that reserve
reached 0.9 GiB on the smallest benchmark model and the plan fell short (0.87 of the measured peak).
The totals are checked against the peak memory of real learner steps by ``polyray bench learner``
(docs/benchmarks.md "Learner memory", "GPU learner benchmark").

A rollout worker's vLLM engine (:func:`rollout_memory`) holds the weights (sharded over its tensor
parallel GPUs), LoRA slots for ``max_loras`` adapters of ``max_lora_rank``, the activations of one
scheduler step (``rollout.max_num_batched_tokens``; on GPU by default vLLM's own step, at most
``VLLM_GPU_STEP_TOKENS``), and a KV cache: on CPU ``rollout.kv_cache_gib``, on GPU whatever is left of
vLLM's share of the GPU (``rollout.gpu_memory_utilization``), which must hold at least one sequence of
``rollout.max_model_len`` tokens. vLLM counts the CUDA graphs it captures on GPU inside that share, so
they come out of the KV cache's rest; the plan does not estimate them. The rollout terms are
first-principles estimates, not measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from polyray.config import LoraConfig, RolloutConfig, RunConfig
from polyray.config.learner import chunk_positions
from polyray.io import ConfigError

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# float32 parameter, gradient, AdamW exp_avg and exp_avg_sq
LORA_BYTES_PER_PARAM = 16
# float32 logits alive at once, in chunks: the log-softmax output, the gradient of the gather and that of the
# log-softmax; the whole tensor: one more, the contiguous copy log-softmax makes of the sliced logits
LOGITS_COPIES = {"chunks": 3, "whole": 4}
# cpu: the interpreter and libraries + what the allocator keeps (fitted, module doc);
# gpu: the CUDA context + the caching allocator's reserve over what is allocated (docs/benchmarks.md)
RUNTIME_BYTES = {"cpu": int(1.2 * GIB), "gpu": 1 * GIB}
# vLLM's own process and CUDA context (not measured)
VLLM_RUNTIME_BYTES = {"cpu": 1 * GIB, "gpu": 1 * GIB}
# the largest of vLLM's default steps for its LLM class on a GPU (EngineArgs.get_batch_defaults), which
# polyray's GPU engines keep unless max_num_batched_tokens is set; longer prefills are split into chunks
VLLM_GPU_STEP_TOKENS = 16384

Device = Literal["cpu", "gpu"]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer (Llama / Qwen family) that memory depends on."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    # the output head shares the input embeddings
    tied: bool = True
    # per-head RMSNorm of queries and keys (Qwen3)
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a transformers ``config.json`` mapping (a multimodal config's ``text_config`` if it has one)."""
        config = config.get("text_config") or config
        missing = [
            k
            for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
            if k not in config
        ]
        if missing:
            raise ValueError(f"the model's config has no {missing[0]} (not a decoder-only transformer config)")
        heads = config["num_attention_heads"]
        kind = str(config.get("model_type", ""))
        attention_bias = bool(config.get("attention_bias", False))
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied=bool(config.get("tie_word_embeddings", False)),
            qk_norm=kind.startswith("qwen3"),
            qkv_bias=attention_bias or kind == "qwen2",
            o_bias=attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each decoder layer's linear projections: name -> (in features, out features)."""
        H, I, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim  # noqa: E741 (the memory model's names)
        return {
            "q_proj": (H, q),
            "k_proj": (H, kv),
            "v_proj": (H, kv),
            "o_proj": (q, H),
            "gate_proj": (H, I),
            "up_proj": (H, I),
            "down_proj": (I, H),
        }

    def parameters(self) -> int:
        """Base parameters: embeddings (and an untied head), the decoder layers, the final norm."""
        dims = self.projections()
        # projections, two RMSNorms
        layer = sum(i * o for i, o in dims.values()) + 2 * self.hidden
        layer += 2 * self.head_dim if self.qk_norm else 0
        layer += (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        layer += self.hidden if self.o_bias else 0
        layer += (2 * self.intermediate + self.hidden) if self.mlp_bias else 0
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return embeddings + self.layers * layer + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV cache bytes of one token over all layers (keys and values)."""
        return 2 * self.layers * self.kv_dim * dtype_bytes


def lora_targets(shape: ModelShape, target_modules: list[str]) -> list[str]:
    """The decoder projections ``target_modules`` names (peft matches a module by its name's last part);
    other names (the head, the embeddings) are outside this estimate."""
    return [name for name in shape.projections() if name in set(target_modules)]


def lora_parameters(shape: ModelShape, r: int, target_modules: list[str]) -> int:
    """Parameters of a rank-``r`` LoRA adapter: A (r x in) and B (out x r) per targeted projection and layer."""
    dims = shape.projections()
    return shape.layers * sum(r * (dims[t][0] + dims[t][1]) for t in lora_targets(shape, target_modules))


def saved_bytes_per_token(
    shape: ModelShape, dtype_bytes: int, lora: LoraConfig, padded: bool = True, length: int = 0
) -> int:
    """Bytes autograd keeps per token per decoder layer for the backward pass (transformers' sdpa attention,
    peft LoRA with dropout 0, frozen base): the counts fitted in the module doc.

    Base layer (nothing of it trains but the input's path): float32 8H + 12I + 12q + 12kv, bfloat16
    8H + 6I + 8q + 8kv (the RMSNorms keep float32 copies either way), plus 8 bytes per query head, 4 per
    key/value head and 8 for the two norms. Each LoRA projection adds its float32 A output (4r) and the
    input A reads: under float32 the input is the base layer's own tensor, kept once per distinct input
    (the attention norm's output for q/k/v, the MLP norm's for gate/up, the MLP product for down; o's is
    already kept); under bfloat16 each projection keeps its own float32 cast. A padded batch also keeps
    keys and values repeated to the query heads and a row of the attention mask (``length`` tokens).
    """
    H, I, q, kv = shape.hidden, shape.intermediate, shape.q_dim, shape.kv_dim  # noqa: E741 (the memory model's names)
    if dtype_bytes >= 4:
        base = 8 * H + 12 * I + 12 * q + 12 * kv
    else:
        base = 8 * H + 6 * I + 8 * q + 8 * kv
    base += 8 * shape.heads + 4 * shape.kv_heads + 8
    targets = lora_targets(shape, lora.target_modules)
    dims = shape.projections()
    adapters = 4 * lora.r * len(targets)
    if dtype_bytes >= 4:
        groups = [("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("down_proj",)]
        adapters += sum(4 * dims[g[0]][0] for g in groups if any(t in targets for t in g))
    else:
        adapters += sum(4 * dims[t][0] for t in targets)
    pad = dtype_bytes * (2 * (q - kv) + length) if padded else 0
    return base + adapters + pad


@dataclass(frozen=True)
class MicroBatch:
    """The largest micro-batch a rank runs: ``sequences`` right-padded to ``length`` tokens."""

    sequences: int
    length: int
    # sequences of unequal length (the mask and repeated keys are kept; see saved_bytes_per_token)
    padded: bool = True

    @property
    def tokens(self) -> int:
        return self.sequences * self.length


def largest_micro_batch(shard: int, length: int, budget: int | None) -> MicroBatch:
    """A rank's largest micro-batch for ``shard`` sequences of at most ``length`` tokens under
    ``learner.micro_batch_tokens`` (``budget``; a longer sequence goes alone, None: the whole shard)."""
    if budget is None:
        return MicroBatch(max(shard, 1), length)
    return MicroBatch(max(1, min(shard, budget // length)), length)


@dataclass
class MemoryPlan:
    """A peak-memory estimate as named terms (bytes), with what it was estimated for."""

    # "learner rank" / "rollout worker"
    role: str
    device: Device
    terms: dict[str, float]
    # the case it is the peak of, e.g. "phase grpo: 8 sequences x 256 tokens"
    what: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.terms.values())

    def describe(self) -> str:
        """``~2.6 GiB (weights 0.70, LoRA 0.01, ...)``."""
        parts = ", ".join(f"{name} {value / GIB:.2f}" for name, value in self.terms.items())
        return f"~{self.total / GIB:.1f} GiB ({parts})"


EXPANDABLE_SEGMENTS = "expandable_segments:True"


def expandable_cuda_segments() -> bool:
    """Have this process's CUDA caching allocator grow its segments in place (``expandable_segments``)
    instead of reserving a new block for each size it has no free block of; False where the user has set
    the allocator's options (``PYTORCH_CUDA_ALLOC_CONF`` / ``PYTORCH_ALLOC_CONF``), which are left as they
    are. The learner's micro-batches and logits chunks come in many sizes: with fixed segments the
    reserve grew up to 1.6x what was allocated on an H100, past the plan's runtime term (module doc).
    Before CUDA starts the variable is enough; after (a Ray Train worker's device is set before the
    train function runs) the allocator is told as well, and the segments made from then on grow."""
    if "PYTORCH_CUDA_ALLOC_CONF" in os.environ or "PYTORCH_ALLOC_CONF" in os.environ:
        return False
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = EXPANDABLE_SEGMENTS
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
        (setter or torch.cuda.memory._set_allocator_settings)(EXPANDABLE_SEGMENTS)
    return True


def learner_memory(
    shape: ModelShape,
    lora: LoraConfig,
    dtype: str,
    micro: MicroBatch,
    logits_chunk_mib: float = 256,
    kl_reference: bool = False,
    reference_adapter: bool = False,
    gradient_checkpointing: bool = False,
    temperature_scaled: bool = False,
    device: Device = "cpu",
) -> MemoryPlan:
    """One learner rank's peak memory for one micro-batch (module doc): forward and backward of ``micro``;
    ``kl_reference``: a no-grad reference forward between them (GRPO with ``kl_beta`` > 0; named in
    ``what``: on top of the kept activations it holds two logits chunks and one layer's temporaries,
    less than the backward pass's three chunks); ``reference_adapter``: a frozen second adapter;
    ``temperature_scaled``: the logits divided by a sampling temperature other than 1 (one more copy)."""
    b = DTYPE_BYTES[dtype]
    H, N = shape.hidden, micro.tokens
    per_layer = saved_bytes_per_token(shape, b, lora, padded=micro.padded, length=micro.length)
    # each layer's input, and one layer recomputed in the backward pass
    if gradient_checkpointing:
        activations = N * (shape.layers * H * b + per_layer)
    else:
        activations = N * shape.layers * per_layer
    # the final hidden states of the completion positions (the head's input)
    activations += N * H * b
    if logits_chunk_mib:
        rows, copies = min(chunk_positions(shape.vocab, logits_chunk_mib), N), LOGITS_COPIES["chunks"]
    else:
        # the (sequences x tokens x vocabulary) logits
        rows, copies = N, LOGITS_COPIES["whole"]
    # bf16: the head's own output
    copies += (1 if temperature_scaled else 0) + (0.5 if b < 4 else 0)
    logits = rows * shape.vocab * 4 * copies
    # one layer's intermediates that are not kept: the MLP's gate, up and product, the norms' in and out
    temporaries = N * (3 * shape.intermediate + 2 * H) * b
    adapter = lora_parameters(shape, lora.r, lora.target_modules)
    terms = {
        "weights": shape.parameters() * b,
        "LoRA": adapter * (LORA_BYTES_PER_PARAM + (4 if reference_adapter else 0)),
        "activations": activations,
        "logits": logits,
        "temporaries": temporaries,
        "runtime": RUNTIME_BYTES[device],
    }
    kind = "whole-logits" if not logits_chunk_mib else f"{logits_chunk_mib:g} MiB logits chunks"
    what = f"{micro.sequences} sequences x {micro.length} tokens, {kind}" + (", KL reference" if kl_reference else "")
    return MemoryPlan("learner rank", device, terms, what)


def rollout_memory(shape: ModelShape, rollout: RolloutConfig, dtype: str) -> MemoryPlan:
    """One rollout worker's vLLM engine: weights and LoRA slots per GPU of its tensor-parallel group, the
    activations of a scheduler step, the KV cache (on GPU: at least one ``max_model_len`` sequence; the
    rest of vLLM's share goes to the cache too, in ``extra``)."""
    b = DTYPE_BYTES[dtype]
    device: Device = "gpu" if rollout.gpus_per_worker > 0 else "cpu"
    tp = rollout.tensor_parallel_size
    step_tokens = rollout.max_num_batched_tokens or rollout.max_num_seqs * rollout.max_model_len
    # vLLM caps its default at a full batch
    if device == "gpu" and rollout.max_num_batched_tokens is None:
        step_tokens = min(step_tokens, VLLM_GPU_STEP_TOKENS)
    slots = rollout.max_loras * lora_parameters(shape, rollout.max_lora_rank, list(PROJECTIONS)) * b
    # a step's widest intermediates (MLP gate and up, attention q/k/v) and the sampler's float32 logits
    step = step_tokens * (2 * shape.intermediate + shape.q_dim + 2 * shape.kv_dim + 2 * shape.hidden) * b / tp
    step += rollout.max_num_seqs * shape.vocab * 4 * 2
    kv_token = shape.kv_bytes_per_token(b) / tp
    terms = {
        "weights": shape.parameters() * b / tp,
        "LoRA slots": slots / tp,
        "activations": step,
        "runtime": VLLM_RUNTIME_BYTES[device],
    }
    if device == "cpu":
        terms["KV cache"] = rollout.kv_cache_gib * GIB
        tokens = int(rollout.kv_cache_gib * GIB // kv_token)
        what = f"KV cache rollout.kv_cache_gib = {rollout.kv_cache_gib} GiB: {tokens} tokens"
    else:
        terms["KV cache (one sequence)"] = rollout.max_model_len * kv_token
        what = f"{tp} GPU(s), max_model_len {rollout.max_model_len}"
    return MemoryPlan("rollout worker", device, terms, what=what, extra={"kv_bytes_per_token": kv_token})


# ---- a run's plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceLengths:
    """Longest sequence (prompt + completion tokens) each kind of step trains on; ``source`` says how it
    was bounded (tokenized prompts, or rollout.max_model_len when no tokenizer was at hand)."""

    # phase name -> longest prompt + sampling.max_tokens (capped at max_model_len)
    sampled: dict[str, int]
    # longest prompt + reference (SFT)
    references: int
    source: str


def bound_lengths(
    run: RunConfig, longest_prompt: int | None = None, longest_reference: int | None = None
) -> SequenceLengths:
    """Sequence lengths per phase: tokenized bounds when given (the longest training prompt and prompt +
    reference, in tokens), else ``rollout.max_model_len`` (what vLLM holds a prompt + completion to)."""
    cap = run.rollout.max_model_len
    sampled = {}
    for phase in run.phases:
        sampling = getattr(phase, "sampling", None)
        # a multi-turn episode's whole history is bounded by its environment
        if run.env is not None and sampling is not None:
            sampled[phase.name] = run.env.max_total_tokens
        elif sampling is not None:
            sampled[phase.name] = min(cap, longest_prompt + sampling.max_tokens) if longest_prompt else cap
    if run.env is not None:
        return SequenceLengths(sampled, longest_reference or cap, "env.max_total_tokens for episodes")
    if longest_prompt:
        return SequenceLengths(sampled, longest_reference or cap, "longest training prompt + max_tokens")
    return SequenceLengths(sampled, longest_reference or cap, "rollout.max_model_len")


def longest_sequences(run: RunConfig, model_dir) -> tuple[int, int]:
    """(longest training prompt, longest prompt + reference + end of sequence) in tokens of the model in
    ``model_dir``, the prompts formatted as the phases see them (the chat template when it applies)."""
    from polyray.models.source import format_for_model, token_counter
    from polyray.tasks import build_task

    task = format_for_model(build_task(run.task), run.model, model_dir)
    prompts = task.prompts("train", run.task.n_train)
    if not prompts:
        return 0, 0
    count = token_counter(model_dir)
    prompt = count([p.text for p in prompts])
    if not any(p.trains_on_references for p in run.phases):
        return max(prompt), 0
    reference = count([p.reference or "" for p in prompts])
    return max(prompt), max(a + b for a, b in zip(prompt, reference)) + 1


def phase_micro_batch(run: RunConfig, index: int, lengths: SequenceLengths) -> MicroBatch:
    """The largest micro-batch of phase ``index`` on one learner rank: its step's sequences split over
    the phase's learner ranks (GRPO by sequence, polychromic SFT by whole groups), ``micro_batch_tokens`` each."""
    phase = run.phases[index]
    shard, length = phase.rank_sequences(
        run.phase_workers(index), references=lengths.references, sampled=lengths.sampled.get(phase.name, 0)
    )
    return largest_micro_batch(shard, length, run.learner.micro_batch_tokens)


def run_learner_memory(run: RunConfig, shape: ModelShape, lengths: SequenceLengths) -> MemoryPlan:
    """The largest learner-rank plan over the run's phases (the phase is named in ``what``)."""
    device: Device = "gpu" if run.learner.use_gpu else "cpu"
    plans = []
    for i, phase in enumerate(run.phases):
        kl = phase.kl_reference_kind()
        reference = kl == "phase_start" and (i > 0 or run.init_adapter is not None)
        sampling = getattr(phase, "sampling", None)
        plan = learner_memory(
            shape,
            run.learner.lora,
            run.model.dtype,
            phase_micro_batch(run, i, lengths),
            logits_chunk_mib=run.learner.logits_chunk_mib,
            kl_reference=kl != "none",
            reference_adapter=reference,
            gradient_checkpointing=run.learner.gradient_checkpointing,
            temperature_scaled=sampling is not None and sampling.temperature != 1,
            device=device,
        )
        plan.what = f"phase {phase.name}: {plan.what}"
        plans.append(plan)
    return max(plans, key=lambda p: p.total)


def check_learner(plan: MemoryPlan, run: RunConfig) -> None:
    """Refuse a learner rank that needs more than ``learner.gpu_memory_gib`` (None: unchecked), naming the
    field to change first: the dtype or the model when the weights alone do not fit, else the micro-batch
    or the logits chunk, whichever is the larger term."""
    limit = run.learner.gpu_memory_gib
    if limit is None or plan.total <= limit * GIB:
        return
    t, learner = plan.terms, run.learner
    fixed = t["weights"] + t["LoRA"] + t["runtime"]
    if fixed > limit * GIB:
        field_name = "model.dtype" if run.model.dtype == "float32" else "model.source"
        hint = "use bfloat16 weights" if run.model.dtype == "float32" else "a smaller model or a larger GPU"
    else:
        field_name = "learner.logits_chunk_mib" if t["logits"] > t["activations"] else "learner.micro_batch_tokens"
        hint = "lower micro_batch_tokens or logits_chunk_mib"
        if not learner.gradient_checkpointing:
            hint += ", or enable learner.gradient_checkpointing"
    raise ConfigError(
        f"{field_name}: a learner rank needs {plan.describe()} > learner.gpu_memory_gib {limit:g} ({plan.what}): {hint}"
    )


def check_rollout(plan: MemoryPlan, run: RunConfig) -> None:
    """Refuse a rollout worker whose engine cannot start: on GPU, weights, LoRA slots, a step's activations
    and one sequence's KV cache beyond vLLM's share of ``rollout.gpu_memory_gib``; on CPU, a KV cache
    (``rollout.kv_cache_gib``) that cannot hold one ``max_model_len`` sequence."""
    rollout = run.rollout
    if plan.device == "cpu":
        tokens = rollout.kv_cache_gib * GIB / plan.extra["kv_bytes_per_token"]
        if tokens < rollout.max_model_len:
            raise ConfigError(
                f"rollout.kv_cache_gib: {rollout.kv_cache_gib} GiB of KV cache holds {int(tokens)} tokens, fewer than"
                f" one sequence of rollout.max_model_len {rollout.max_model_len}: raise kv_cache_gib"
            )
        return
    limit, share = rollout.gpu_memory_gib, rollout.gpu_memory_utilization
    if limit is None or plan.total <= share * limit * GIB:
        return
    weights = plan.terms["weights"] + plan.terms["LoRA slots"]
    lead = "tensor_parallel_size" if weights > plan.terms["activations"] else "max_num_batched_tokens"
    raise ConfigError(
        f"rollout.{lead}: a rollout worker needs {plan.describe()} > {share:g} x"
        f" rollout.gpu_memory_gib {limit:g} (rollout.gpu_memory_utilization; {plan.what}): raise"
        " tensor_parallel_size (and gpus_per_worker) or gpu_memory_utilization, or lower max_num_batched_tokens,"
        " max_num_seqs or max_model_len"
    )


def rollout_kv_note(plan: MemoryPlan, run: RunConfig) -> str:
    """On GPU: how many tokens the KV cache gets from the rest of vLLM's share, against a full batch."""
    rollout = run.rollout
    if plan.device == "cpu" or rollout.gpu_memory_gib is None:
        return ""
    rest = rollout.gpu_memory_utilization * rollout.gpu_memory_gib * GIB - plan.total
    rest += plan.terms["KV cache (one sequence)"]
    tokens = int(rest // plan.extra["kv_bytes_per_token"])
    return (
        f"; the KV cache gets ~{rest / GIB:.1f} GiB = {tokens} tokens (a full batch of max_num_seqs x"
        f" max_model_len is {rollout.max_num_seqs * rollout.max_model_len})"
    )


def plan_lines(learner: MemoryPlan | None, rollout: MemoryPlan, run: RunConfig, lengths: SequenceLengths) -> list[str]:
    """The run header's memory plan: one line per role (no learner line for a run that trains nothing)."""
    limit = run.learner.gpu_memory_gib
    of = f" of {limit:g} GiB" if limit is not None else ""
    lines = (
        []
        if learner is None
        else [
            f"memory plan: learner rank {learner.describe()}{of} at its largest micro-batch ({learner.what};"
            f" sequences bounded by {lengths.source})"
        ]
    )
    limit = run.rollout.gpu_memory_gib
    share = run.rollout.gpu_memory_utilization
    of = f" of {share:g} x {limit:g} GiB" if limit is not None and rollout.device == "gpu" else ""
    lines.append(
        f"memory plan: rollout worker ({rollout.device.upper()}) {rollout.describe()}{of} ({rollout.what})"
        f"{rollout_kv_note(rollout, run)}"
    )
    return lines


def check_run(run: RunConfig, model_config: dict[str, Any], lengths: SequenceLengths) -> list[str]:
    """Plan the run's learner ranks and rollout workers for the model of ``model_config`` (its
    ``config.json``); raise :class:`~polyray.io.ConfigError` (one line naming the field) when one cannot
    fit; return the header lines."""
    try:
        shape = ModelShape.from_config(model_config)
    except ValueError as exc:
        raise ConfigError(f"model.source: {exc}") from None
    # none: evaluation only
    learner = run_learner_memory(run, shape, lengths) if run.phases else None
    rollout = rollout_memory(shape, run.rollout, run.engine_dtype)
    if learner is not None:
        check_learner(learner, run)
    check_rollout(rollout, run)
    return plan_lines(learner, rollout, run, lengths)
