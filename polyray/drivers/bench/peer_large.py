"""``polyray bench peer``'s second half: vLLM / transformers ``generate`` tokens/s on a model of Qwen3-0.6B's width
and vocabulary (:class:`~polyray.drivers.bench.learner.BenchShape`, random weights, built here) at completions of a
fixed length (``min_tokens = max_tokens``, end token ignored), under the same random LoRA adapter; and one GRPO
learner step's tokens/s on it."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def bench_large(
    shape, prompts: int, n: int, tokens: int, repeats: int, threads: int, lora, learner_sequences: int, on_stage=None
) -> dict[str, Any]:
    """On a random-weights model of ``shape`` (built here, nothing downloaded): vLLM / transformers ``generate``
    tokens/s at completions of exactly ``tokens`` (``prompts`` x ``n``, under the same random LoRA), and one
    GRPO learner step's tokens/s (:func:`polyray.drivers.bench.learner.run_case`, micro-batched)."""
    import random
    from dataclasses import asdict

    from polyray.config import RolloutConfig
    from polyray.drivers.bench.learner import StepCase, build_bench_model, run_case
    from polyray.drivers.bench.rollout import FixedLengthBatch, fixed_length_hf, fixed_length_vllm
    from polyray.drivers.bench.common import _random_adapter
    from polyray.rollout.store import write_adapter_dir

    say = on_stage or (lambda text: None)
    rng = random.Random(0)
    prompt_ids = [[rng.randrange(3, shape.vocab) for _ in range(rng.randint(32, 64))] for _ in range(prompts)]
    batch = FixedLengthBatch(prompt_ids, n, tokens, seeds=list(range(prompts)))
    length = 64 + tokens
    config = RolloutConfig(
        threads=threads, max_model_len=length, max_num_seqs=max(prompts * n, 1), max_lora_rank=max(16, lora.r)
    )
    results: dict[str, Any] = {"shape": asdict(shape), "prompts": prompts, "n": n, "tokens": tokens, "threads": threads}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-large-") as tmp:
        say(f"building a {shape.layers}-layer model of hidden {shape.hidden}, vocabulary {shape.vocab}")
        model_dir = str(build_bench_model(Path(tmp) / "model", shape))
        adapter_dir = Path(tmp) / "policy-v1"
        write_adapter_dir(adapter_dir, _random_adapter(Path(model_dir), lora, seed=1))
        say(f"vLLM: {prompts} prompts x {n}, {tokens} tokens each")
        results["vllm"] = fixed_length_vllm(model_dir, config, "float32", batch, str(adapter_dir), repeats)
        say(f"transformers generate: {prompts} prompts x {n}, {tokens} tokens each")
        results["transformers"] = fixed_length_hf(model_dir, "float32", batch, str(adapter_dir), threads, repeats)
        if learner_sequences:
            say(f"learner: one GRPO step of {learner_sequences} sequences x {length} tokens")
            case = StepCase(
                learner_sequences, length, micro_batch_tokens=2048, logits_chunk_mib=256, lora_r=lora.r, threads=threads
            )
            results["learner"] = run_case(model_dir, case)
    results["vllm_vs_transformers"] = results["vllm"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
    return results


def print_large(results: dict[str, Any], console) -> None:
    s = results["shape"]
    v, t = results["vllm"], results["transformers"]
    console.print(
        f"{s['layers']}-layer Qwen3 (hidden {s['hidden']}, vocabulary {s['vocab']}), {results['prompts']} prompts"
        f" x {results['n']}, {results['tokens']} tokens each, {results['threads']} thread(s): vLLM"
        f" {v['tokens_per_s']:.0f} tokens/s, transformers generate {t['tokens_per_s']:.0f} tokens/s,"
        f" ratio {results['vllm_vs_transformers']:.2f}"
    )
    if "learner" in results:
        case = results["learner"]
        if "error" in case:
            console.print(f"learner step: failed ({case['error'][:80]})")
        else:
            console.print(
                f"learner, one GRPO step of {case['sequences']} x {case['length']} tokens:"
                f" {case['step_s']:.2f} s, {case['tokens_per_s']:.0f} tokens/s"
            )
