"""``polyray bench learner``: peak memory and speed of one GRPO learner step, each size in a fresh process.

The model has Qwen3-0.6B's width and vocabulary (hidden 1024, MLP 3072, 16 query and 8 key/value heads
of 128, 151,936 tokens, tied embeddings) and only a few layers, built locally with random weights and
saved once; the vocabulary is what makes the logits large, the layers only add activations. A stand-in
pool (:class:`~.learner_step.StandInPool`) gives every step the same samples: fixed random token ids, a
prompt of 32-64 tokens and a completion that fills the sequence to ``length``, with a fixed sampling
log-prob (that of a uniform draw, so importance ratios are near 1). Each measured step is the real thing: a
:class:`~polyray.learner.phases.GRPOPhase` with its :class:`~polyray.learner.phases.StepContext`
(KL to the adapter-disabled base, so the reference forward runs), peft LoRA on every projection and the
learner loop's update (:func:`polyray.learner.loop._train_step`: forwards and backwards, clip, AdamW).

Two paths side by side: **micro-batched** (``learner.micro_batch_tokens`` fixed, logits in chunks of
``learner.logits_chunk_mib``) at every size, and **whole batch** (no micro-batches, the whole logits
tensor: ``micro_batch_tokens: null, logits_chunk_mib: 0``, the learner before both existed) at the
small sizes only: its logits grow with the batch (at 64 sequences x 256 tokens two float32 copies alone
are 20 GB). Every (path, size) runs in its own interpreter (:mod:`.learner_step`, ``python -m
polyray.drivers.bench.learner_step``), so one measurement's peak never carries into the next. A process
runs one warm-up step, then the measured one, as a run's steps after its first (the optimizer's state
exists, and the C allocator has settled: in a fresh process it returns large freed blocks at first, then
keeps them). The peak is the high-water resident memory over the measured step alone: the kernel's mark is reset
(``/proc/self/clear_refs``) after the warm-up; where the reset is refused the peak is the process's
whole life (``resource.getrusage``), and the figures say so. Beside each measurement is the memory
plan's estimate (:func:`polyray.learner.memory.learner_memory`) and their ratio.

On a CUDA GPU (``--device cuda``, usually with ``--dtype bfloat16``: a bfloat16 base, float32 LoRA, as a
run with ``model.dtype: bfloat16`` trains) the same cases run on the GPU, and memory is the GPU's: the
CUDA context (what the device holds once the context exists, before the model loads) plus the caching
allocator's high-water reserve over the measured steps (``torch.cuda.max_memory_reserved``, its mark
reset after the warm-up), which is what a second process on the card would find taken; the allocated
high-water mark is reported beside it. The allocator grows its segments, as the learner's does
(:func:`polyray.learner.memory.expandable_cuda_segments`), unless ``PYTORCH_CUDA_ALLOC_CONF`` says otherwise. Step times are taken between ``torch.cuda.synchronize`` calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from polyray.drivers.bench.learner_step import StepCase

GIB = 2**30


@dataclass(frozen=True)
class BenchShape:
    """The benchmark model's sizes: Qwen3-0.6B's width and vocabulary with ``layers`` decoder layers."""

    layers: int = 2
    hidden: int = 1024
    intermediate: int = 3072
    heads: int = 16
    kv_heads: int = 8
    head_dim: int = 128
    vocab: int = 151_936


# the stand-in tokenizer's only tokens (the model's other ids are never decoded)
PAD, EOS, UNK = 0, 1, 2


def build_bench_model(out: Path, shape: BenchShape, seed: int = 0) -> Path:
    """A random-init Qwen3 of ``shape`` (tied embeddings, as Qwen3-0.6B) with a three-token tokenizer that
    knows the pad and end ids, saved to ``out`` as a Hugging Face model directory."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

    from polyray.models.tiny import qwen3_config

    config = qwen3_config(**asdict(shape), max_positions=4096, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    del model
    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )
    tokenizer.save_pretrained(out)
    return out


def estimate(model_dir: str, case: StepCase) -> dict[str, float]:
    """The memory plan's estimate of the step of ``case`` (bytes per term and the total): its largest
    micro-batch, equal-length sequences (no padding), the KL reference forward, the case's device, dtype and checkpointing."""
    from polyray.config import LoraConfig
    from polyray.learner.memory import MicroBatch, ModelShape, largest_micro_batch, learner_memory

    shape = ModelShape.from_config(json.loads((Path(model_dir) / "config.json").read_text()))
    biggest = largest_micro_batch(case.sequences, case.length, case.micro_batch_tokens)
    plan = learner_memory(
        shape,
        LoraConfig(r=case.lora_r, alpha=2 * case.lora_r),
        case.dtype,
        MicroBatch(biggest.sequences, case.length, False),
        case.logits_chunk_mib,
        kl_reference=case.kl_beta > 0,
        gradient_checkpointing=case.gradient_checkpointing,
        device="gpu" if case.device == "cuda" else "cpu",
    )
    return {**plan.terms, "total": plan.total}


def run_case(model_dir: str, case: StepCase, timeout: float = 1800) -> dict[str, Any]:
    """:func:`measure_step` in a fresh interpreter; a case that dies (out of memory, say) is reported, not raised."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(case.threads),
        "MKL_NUM_THREADS": str(case.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "polyray.drivers.bench.learner_step", model_dir, json.dumps(asdict(case))]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {**asdict(case), "path": case.path, "error": f"exit status {done.returncode}: {tail}"}
    return json.loads(lines[-1])


def bench_learner(
    sizes: list[int],
    whole_batch_sizes: list[int],
    length: int = 256,
    micro_batch_tokens: int = 2048,
    logits_chunk_mib: float = 256,
    shape: BenchShape | None = None,
    threads: int = 2,
    on_case=None,
    packing_sizes: list[int] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    measured_steps: int = 1,
) -> dict[str, Any]:
    """Every size micro-batched, the ``whole_batch_sizes`` also on the whole-batch path, side by side (size
    by size, each in its own process), with the plan's estimate beside each; then, at ``packing_sizes``
    (default: the smallest size; none with ``gradient_checkpointing``, which turns prompt sharing off),
    samples of varied lengths on shared prompts, packed and one a row (micro-batched); then the ratios."""
    shape = shape or BenchShape()
    if packing_sizes is None:
        packing_sizes = [] if gradient_checkpointing else [min(sizes)]
    common = {
        "threads": threads,
        "device": device,
        "dtype": dtype,
        "gradient_checkpointing": gradient_checkpointing,
        "measured_steps": measured_steps,
    }
    cases = []
    for n in sorted(set(sizes) | set(whole_batch_sizes) | set(packing_sizes)):
        if n in sizes:
            cases.append(StepCase(n, length, micro_batch_tokens, logits_chunk_mib, **common))
        if n in whole_batch_sizes:
            cases.append(StepCase(n, length, None, 0, **common))
        if n in packing_sizes:
            cases += [
                StepCase(n, length, micro_batch_tokens, logits_chunk_mib, packing=p, **common)
                for p in ("packed", "one a row")
            ]
    results: dict[str, Any] = {
        "shape": asdict(shape),
        "length": length,
        "micro_batch_tokens": micro_batch_tokens,
        "logits_chunk_mib": logits_chunk_mib,
        **common,
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="polyray-bench-learner-") as tmp:
        model_dir = str(build_bench_model(Path(tmp) / "model", shape))
        for case in cases:
            if on_case is not None:
                on_case(case)
            row = run_case(model_dir, case)
            row["estimate"] = estimate(model_dir, case)
            # (the plan's sequences are all ``length`` long)
            if "peak_bytes" in row and case.packing is None:
                row["estimate_ratio"] = row["estimate"]["total"] / row["peak_bytes"]
            results["cases"].append(row)
    results["ratios"] = learner_ratios(results["cases"])
    return results


def learner_ratios(cases: list[dict[str, Any]]) -> dict[str, float]:
    """Peak at the largest / smallest micro-batched size; whole batch / micro-batched peak and micro-batched /
    whole-batch tokens/s at each size both ran; varied-length samples, packed / one a row step time where
    both ran; the estimate / measured range."""
    ok = [c for c in cases if "peak_bytes" in c]
    micro = {c["sequences"]: c for c in ok if c["path"] == "micro-batched"}
    whole = {c["sequences"]: c for c in ok if c["path"] == "whole batch"}
    packed = {c["sequences"]: c for c in ok if c["path"] == "varied lengths, packed"}
    one_a_row = {c["sequences"]: c for c in ok if c["path"] == "varied lengths, one a row"}
    ratios: dict[str, float] = {}
    if len(micro) > 1:
        small, large = min(micro), max(micro)
        ratios[f"peak_{large}_vs_{small}"] = micro[large]["peak_bytes"] / micro[small]["peak_bytes"]
    for n in sorted(set(micro) & set(whole)):
        ratios[f"whole_vs_micro_peak_{n}"] = whole[n]["peak_bytes"] / micro[n]["peak_bytes"]
        ratios[f"micro_vs_whole_tokens_per_s_{n}"] = micro[n]["tokens_per_s"] / whole[n]["tokens_per_s"]
        ratios[f"micro_vs_whole_tokens_per_cpu_s_{n}"] = micro[n]["tokens_per_cpu_s"] / whole[n]["tokens_per_cpu_s"]
    for n in sorted(set(packed) & set(one_a_row)):
        ratios[f"packed_vs_one_a_row_step_s_{n}"] = packed[n]["step_s"] / one_a_row[n]["step_s"]
    estimated = [c for c in ok if "estimate_ratio" in c]
    if estimated:
        ratios["estimate_vs_measured_min"] = min(c["estimate_ratio"] for c in estimated)
        ratios["estimate_vs_measured_max"] = max(c["estimate_ratio"] for c in estimated)
    return ratios


def print_learner(results: dict[str, Any], console) -> None:
    from rich.table import Table

    s, device = results["shape"], results.get("device", "cpu")
    gpu = next((c["gpu"] for c in results["cases"] if "gpu" in c), None)
    where = f"on {gpu}, {results.get('dtype', 'float32')} base" if device == "cuda" else f"{results['threads']} threads"
    checkpointing = ", gradient checkpointing" if results.get("gradient_checkpointing") else ""
    table = Table(
        title=f"one GRPO learner step, {s['layers']}-layer Qwen3 (hidden {s['hidden']}, vocabulary"
        f" {s['vocab']}), LoRA r 16, sequences of {results['length']} tokens, {where}{checkpointing};"
        " each in a fresh process"
    )
    peak = (
        "GPU high-water memory (CUDA context + the allocator's reserve) over the measured steps after a warm-up one"
        if device == "cuda"
        else "high-water resident memory over a step after a warm-up one"
    )
    table.caption = (
        f"micro-batched: learner.micro_batch_tokens {results['micro_batch_tokens']}, logits_chunk_mib"
        f" {results['logits_chunk_mib']:g}; whole batch: micro_batch_tokens null, logits_chunk_mib 0."
        f" peak: {peak}; estimate: the memory plan"
    )
    for col in (
        "sequences",
        "path",
        "peak GiB",
        "estimate GiB",
        "est. / peak",
        "loaded GiB",
        "step s",
        "tokens/s",
        "tokens/CPU s",
    ):
        table.add_column(col, justify="left" if col == "path" else "right")
    for c in results["cases"]:
        est = c["estimate"]["total"] / GIB
        if "error" in c:
            table.add_row(str(c["sequences"]), c["path"], "-", f"{est:.2f}", "-", "-", "-", "-", c["error"][:40])
            continue
        peak = c["peak_bytes"] / GIB
        mark = "" if c["peak_of"] == "step" else " (process)"
        ratio = f"{c['estimate_ratio']:.2f}" if "estimate_ratio" in c else "-"
        step = f"{c['step_s']:.3f}" if c["step_s"] < 1 else f"{c['step_s']:.1f}"
        table.add_row(
            str(c["sequences"]),
            c["path"],
            f"{peak:.2f}{mark}",
            f"{est:.2f}",
            ratio,
            f"{c['loaded_bytes'] / GIB:.2f}",
            step,
            f"{c['tokens_per_s']:.0f}",
            f"{c['tokens_per_cpu_s']:.0f}",
        )
    console.print(table)
    for name, value in results["ratios"].items():
        console.print(f"{name}: {value:.2f}")
