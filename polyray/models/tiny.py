"""The embedded base model: a tiny Qwen3 that polyray builds, pretrains and caches itself.

No hub access anywhere: the tokenizer is a byte-level BPE (it covers any text) trained
with ``tokenizers`` on the task's own corpus, the weights are initialised from a
``Qwen3Config`` and fully fine-tuned on that corpus (``Task.pretrain_corpus``, never the
val or test prompts): for countdown, random valid solutions of its ``pretrain`` split mixed
with wrong ones; for a JSONL task, every response of its train prompts, good and bad
alike. Pretraining on many different answers, and stopping early, leaves a base that is
right some of the time and spread over many answers: the regime where sampling k
candidates pays off and where SFT and GRPO have something to do.

The result is a normal Hugging Face model directory (``config.json``, safetensors,
tokenizer files) that transformers, peft and vLLM all load. It is cached under a
content hash of everything that determines it, and written atomically (a build killed
half-way leaves no half-written cache entry). Its settings are
:class:`~polyray.config.model.TinyModelConfig` (``model.tiny``).

The quickstart's model ships with polyray (``polyray/models/embedded/``, a few MB): a first run
copies it into the cache instead of pretraining for minutes, and every install evaluates the same
weights. A build records its weights' digest after its first steps (``trajectory`` in build_info.json):
on a machine whose kernels and libraries match those the shipped model was built with, a test reruns those
steps and compares, and a slower one rebuilds it whole and compares the bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from polyray.config.model import TinyModelConfig
from polyray.io import cache_root
from polyray.tasks import build_task

log = logging.getLogger(__name__)

# bump when the recipe changes so old caches are not reused
BUILD_VERSION = 1
EOS, PAD = "<|endoftext|>", "<|pad|>"
# The embedded model's tokenizer has no chat template of its own: this minimal one makes chat work end to
# end (the generation service serves it, ``polyray export`` writes it beside the model).
EMBEDDED_CHAT_TEMPLATE = (
    "{%- for message in messages -%}{{ message['role'] }}: {{ message['content'] }}\n{% endfor -%}"
    "{%- if add_generation_prompt -%}assistant: {% endif -%}"
)


def recipe(tiny: TinyModelConfig) -> dict:
    """The model settings a build depends on; a setting at its no-op default is left out, so adding one kept
    the keys of the models built before it."""
    return tiny.model_dump(mode="json", exclude=None if tiny.pretrain_retries else {"pretrain_retries"})


def build_key(tiny: TinyModelConfig, task_config) -> str:
    """Content hash of everything that determines the model: the recipe, its settings, the task's corpus."""
    spec = {
        "version": BUILD_VERSION,
        "model": recipe(tiny),
        "task": build_task(task_config).corpus_key(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def cached_model_dir(tiny: TinyModelConfig, task_config) -> Path:
    return cache_root() / "models" / f"tiny-qwen3-{build_key(tiny, task_config)}"


# built models that ship with polyray, by the cache directory's name
SHIPPED_DIR = Path(__file__).parent / "embedded"


def shipped_model_dir(tiny: TinyModelConfig, task_config) -> Path | None:
    """The shipped build of this model (module docstring), or None when polyray ships none."""
    shipped = SHIPPED_DIR / f"tiny-qwen3-{build_key(tiny, task_config)}"
    return shipped if (shipped / "build_info.json").is_file() else None


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, model_max_length=10_000)


def qwen3_config(
    *,
    vocab: int,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    max_positions: int,
    eos_token_id: int,
    pad_token_id: int,
):
    """The ``Qwen3Config`` of a Qwen3 polyray builds with random weights (the embedded model here, the
    benchmarks' models in :mod:`polyray.drivers.bench.learner`): tied embeddings, as Qwen3-0.6B's; the end
    token also the start token; float32."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        bos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        rope_theta=10000.0,
        torch_dtype="float32",
    )


def _qwen3_config(tiny: TinyModelConfig, tokenizer):
    return qwen3_config(
        vocab=len(tokenizer),
        hidden=tiny.hidden_size,
        intermediate=tiny.intermediate_size,
        layers=tiny.num_layers,
        heads=tiny.num_heads,
        kv_heads=tiny.num_kv_heads,
        head_dim=tiny.head_dim,
        max_positions=tiny.max_positions,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_model_config(tiny: TinyModelConfig) -> dict:
    """The ``config.json`` fields of the model :func:`build_tiny_model` builds from ``tiny``, known before it
    is built (what the memory plan reads; the vocabulary is at most ``vocab_size``: BPE may stop short)."""
    return {
        "model_type": "qwen3",
        "vocab_size": tiny.vocab_size,
        "hidden_size": tiny.hidden_size,
        "intermediate_size": tiny.intermediate_size,
        "num_hidden_layers": tiny.num_layers,
        "num_attention_heads": tiny.num_heads,
        "num_key_value_heads": tiny.num_kv_heads,
        "head_dim": tiny.head_dim,
        "tie_word_embeddings": True,
    }


# The steps whose weights' digest a build records (build_info's "trajectory"): a rebuild of that prefix,
# under the full schedule, shows the builder still takes the path that made a shipped model.
TRAJECTORY_STEPS = (150,)


def parameters_digest(model) -> str:
    """SHA-256 (first 16 hex digits) over the names, dtypes, shapes and bytes of a model's parameters."""
    import torch

    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        tensor = param.detach().contiguous().cpu()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _pretrain(
    model,
    tokenizer,
    pairs,
    tiny: TinyModelConfig,
    *,
    progress: Callable[[int, int, float], None] | None,
    stop_after: int | None = None,
) -> tuple[float, dict[str, str]]:
    """Pretrain ``model`` in place (``stop_after``: only that many steps, under the full run's schedule);
    returns the last step's loss and the parameters' digest at each of :data:`TRAJECTORY_STEPS` passed."""
    import torch

    from polyray.models.batching import pack_sequences

    encoded = [
        (
            tokenizer(p, add_special_tokens=False)["input_ids"],
            tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
        )
        for p, c in pairs
    ]
    gen = torch.Generator().manual_seed(tiny.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=tiny.pretrain_lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, tiny.pretrain_steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, tiny.pretrain_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    loss_value, trajectory = float("nan"), {}
    for step in range(tiny.pretrain_steps if stop_after is None else min(stop_after, tiny.pretrain_steps)):
        idx = torch.randint(len(encoded), (tiny.pretrain_batch_size,), generator=gen).tolist()
        batch = pack_sequences([encoded[i][0] for i in idx], [encoded[i][1] for i in idx], tokenizer.pad_token_id)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        targets = batch.input_ids[:, 1:]
        mask = batch.completion_mask[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none"
        )
        loss = (nll * mask.reshape(-1)).sum() / mask.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        if step + 1 in TRAJECTORY_STEPS:
            trajectory[str(step + 1)] = parameters_digest(model)
        if progress:
            progress(step + 1, tiny.pretrain_steps, loss_value)
    model.eval()
    return loss_value, trajectory


def build_tiny_model(
    tiny: TinyModelConfig,
    task_config,
    out_dir: Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    *,
    use_shipped: bool = True,
) -> Path:
    """Build (or reuse from cache, or with ``use_shipped`` copy the shipped build of) the embedded model;
    returns its directory. Processes that ask for the same model at once build it once: the others wait on
    a lock beside it, then reuse it."""
    from filelock import FileLock

    out_dir = Path(out_dir) if out_dir else cached_model_dir(tiny, task_config)
    if (out_dir / "build_info.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        # built while this process waited
        if (out_dir / "build_info.json").is_file():
            return out_dir
        shipped = shipped_model_dir(tiny, task_config) if use_shipped else None
        if shipped is not None:
            return _install(shipped, out_dir)
        return _build(tiny, task_config, out_dir, progress)


def built_with() -> dict:
    """The CPU kernel flags and library versions a build here runs with: another set may round differently."""
    from polyray.fingerprint import cpu_description, library_versions

    return {"kernel_flags": cpu_description()["kernel_flags"], "libraries": library_versions()}


def _install(shipped: Path, out_dir: Path) -> Path:
    """A copy of the shipped build at ``out_dir``, written whole or not at all."""
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        shutil.copytree(shipped, staging, dirs_exist_ok=True)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("installed the shipped tiny model -> %s", out_dir)
    return out_dir


def _initial_model(tiny: TinyModelConfig, task_config):
    """The model before pretraining, its tokenizer (trained here) and the pretraining corpus."""
    import torch
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(tiny.seed)
    task = build_task(task_config)
    pairs = task.pretrain_corpus(tiny.pretrain_prompts, tiny.pretrain_noise, tiny.seed)
    if tiny.pretrain_retries:
        pairs = task.with_retries(pairs, tiny.pretrain_retries, tiny.seed, EOS)
    # the end-of-text marker inside a retry dialogue is the special token, not text to learn merges from
    tokenizer = _train_tokenizer([(p + c).replace(EOS, "\n") for p, c in pairs], tiny.vocab_size)
    return Qwen3ForCausalLM(_qwen3_config(tiny, tokenizer)), tokenizer, pairs


def pretrain_prefix(tiny: TinyModelConfig, task_config, steps: int) -> tuple[str, object]:
    """The first ``steps`` pretraining steps of a build, unsaved: the parameters' digest after them
    (:func:`parameters_digest`) and the tokenizer the build trains."""
    model, tokenizer, pairs = _initial_model(tiny, task_config)
    _pretrain(model, tokenizer, pairs, tiny, progress=None, stop_after=steps)
    return parameters_digest(model), tokenizer


def _build(tiny: TinyModelConfig, task_config, out_dir: Path, progress) -> Path:
    from transformers import GenerationConfig

    started = time.perf_counter()
    model, tokenizer, pairs = _initial_model(tiny, task_config)
    final_loss, trajectory = _pretrain(model, tokenizer, pairs, tiny, progress=progress)

    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    try:
        model.generation_config = GenerationConfig(
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
        )
        _save_quietly(model, tokenizer, staging)
        info = {
            "build_key": build_key(tiny, task_config),
            "tiny": recipe(tiny),
            "task": task_config.model_dump(mode="json"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "final_pretrain_loss": final_loss,
            "trajectory": trajectory,
            "build_seconds": round(time.perf_counter() - started, 1),
            # what the bytes depend on beyond the recipe (polyray.fingerprint)
            "built_with": built_with(),
        }
        (staging / "build_info.json").write_text(json.dumps(info, indent=2))
        # a concurrent build won the race: keep theirs
        if out_dir.exists():
            shutil.rmtree(staging)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("built tiny model in %.1fs -> %s", time.perf_counter() - started, out_dir)
    return out_dir


def _save_quietly(model, tokenizer, out: Path) -> None:
    """``save_pretrained`` without transformers' shard-writing bar: the build's own bar is the progress shown."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    finally:
        if shown:
            hf_logging.enable_progress_bar()
