"""Measurements behind ``polyray bench rollout`` (figures printed, never asserted).

All of them generate the same :class:`RolloutBatch` (prompts, ``n`` samples each, the run's
sampling, one seed per prompt) under the same LoRA adapter (rollouts always sample the policy's
adapter; vLLM's LoRA kernels are part of the cost) and count completion tokens per second of wall time,
with a digest of the sampled token ids (``token_ids_sha256``, :func:`token_ids_sha256`): two engines
with the same digest sampled the same tokens, not only as many:

- :func:`pool_throughput`: through :class:`~polyray.rollout.pool.RolloutPool` (Ray actors, samples
  with their log-probs and versions back in the caller): what the learner sees;
- :func:`raw_llm_throughput`: one ``vllm.LLM`` in this process, built with the rollout worker's own
  engine arguments and sampling parameters: the pool's overhead is the ratio of the two;
- :func:`hf_throughput`: transformers ``generate`` with ``num_return_sequences`` and the sampled
  tokens' log-probs (what a rollout without vLLM would run);

and the two ways of getting new weights into every rollout worker, each timed from the learner's
weights to a token generated with them on every worker:

- :func:`adapter_sync_latency`: the LoRA adapter (extract, publish through the adapter store, first use);
- :func:`full_reload_latency`: the merged full weights (merge, write a checkpoint, reload in place in
  every engine, first use): what a system that syncs whole weights pays.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyray.config import RolloutConfig, SamplingConfig
from polyray.rollout.request import GenerationRequest


@dataclass(frozen=True)
class RolloutBatch:
    prompts: list[str]
    n: int
    sampling: SamplingConfig
    seeds: list[int]


# per prompt, its samples' token ids
Samples = list[list[list[int]]]


def token_ids_sha256(repeats: Iterable[Samples]) -> str:
    """sha256 over the sampled token ids of every timed repeat, in order: per repeat, prompt by prompt, each
    prompt's samples in the order the engine returned them (vLLM: by sample index)."""
    digest = hashlib.sha256()
    for groups in repeats:
        ids = [[[int(t) for t in sample] for sample in group] for group in groups]
        digest.update(json.dumps(ids, separators=(",", ":")).encode())
    return digest.hexdigest()


def _rate(samples: list[Samples], seconds: list[float]) -> dict[str, Any]:
    """Tokens/s over the timed repeats (the same batch each time), and the digest of what they sampled."""
    tokens = sum(len(ids) for groups in samples for group in groups for ids in group)
    return {
        "repeats": len(seconds),
        "tokens": tokens,
        "seconds": round(sum(seconds), 3),
        "tokens_per_s": tokens / sum(seconds),
        "token_ids_sha256": token_ids_sha256(samples),
    }


def _timed(run: Callable[[], Any], ids: Callable[[Any], Samples], repeats: int, warmups: int = 2) -> dict[str, Any]:
    """``run()`` (one generation of the batch), ``warmups`` times untimed (an engine's first calls are slower
    than one warm-up shows: kernels for new shapes), then ``repeats`` times timed; ``ids(what run returned)``:
    the sampled token ids, read after the clock stopped."""
    for _ in range(warmups):
        run()
    samples, seconds = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        out = run()
        seconds.append(time.perf_counter() - started)
        samples.append(ids(out))
    return _rate(samples, seconds)


def _vllm_ids(outputs) -> Samples:
    """Token ids of vLLM ``RequestOutput``s: one group per request, its completions in order."""
    return [[list(c.token_ids) for c in out.outputs] for out in outputs]


def _hf_ids(new, ended, n: int) -> Samples:
    """Token ids of transformers ``generate`` rows (``n`` consecutive rows per prompt), each up to ``ended``."""
    rows = [ids[~stop].tolist() for ids, stop in zip(new, ended)]
    return [rows[i : i + n] for i in range(0, len(rows), n)]


def pool_throughput(pool, batch: RolloutBatch, version: int, repeats: int = 3) -> dict[str, Any]:
    """The batch under the published adapter ``version``."""

    def run():
        request = GenerationRequest(
            prompts=batch.prompts, n=batch.n, sampling=batch.sampling, version=version, seeds=batch.seeds
        )
        return pool.submit(request).result()

    return _timed(run, lambda groups: [[s.token_ids for s in g] for g in groups], repeats)


def raw_llm_throughput(
    model_dir: str,
    config: RolloutConfig,
    dtype: str,
    batch: RolloutBatch,
    adapter_dir: str,
    repeats: int = 3,
    polyray_plugin: bool = True,
    detokenizer: bool = False,
) -> dict[str, Any]:
    """The batch through a bare ``vllm.LLM`` in a fresh process with the rollout worker's environment
    (set before torch loads: thread caps), engine arguments and sampling parameters, under the peft
    adapter saved in ``adapter_dir``. ``polyray_plugin=False``: without polyray's CPU LoRA ops
    (:mod:`polyray.rollout.cpu_lora`), i.e. vLLM's own (the whole plugin is off in that process).
    ``detokenizer``: then, on the same engine, :func:`detokenizer_ways` (under ``"detokenizer"``)."""
    env = {}
    if not polyray_plugin:
        from importlib.metadata import entry_points

        others = [e.name for e in entry_points(group="vllm.general_plugins") if e.name != "polyray_cpu_lora"]
        env["VLLM_PLUGINS"] = ",".join(others)
    args = (model_dir, config, dtype, batch, adapter_dir, repeats, detokenizer)
    return _in_rollout_process(config, env, _raw_llm, *args)


def _in_rollout_process(config: RolloutConfig, env: dict[str, str], fn, *args):
    """``fn(*args)`` in a fresh (spawned) process with the rollout worker's environment plus ``env``, set
    before torch loads there (thread caps); this process's environment is put back after."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from polyray.rollout.worker import rollout_env

    saved = dict(os.environ)
    # the child inherits the environment it is spawned with
    os.environ.update({**rollout_env(config), **env})
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            return child.submit(fn, *args).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _raw_llm(
    model_dir: str,
    config: RolloutConfig,
    dtype: str,
    batch: RolloutBatch,
    adapter_dir: str,
    repeats: int,
    detokenizer: bool = False,
):
    from polyray.rollout.worker import sampling_params, start_engine

    llm = start_engine(model_dir, config, dtype)
    # after start_engine, which imports vLLM as a rollout worker does (without scikit-learn)
    from vllm.lora.request import LoRARequest

    params = [sampling_params(batch.n, batch.sampling, seed) for seed in batch.seeds]
    lora = LoRARequest("policy-v1", 1, adapter_dir)
    result = _timed(lambda: llm.generate(batch.prompts, params, lora_request=lora, use_tqdm=False), _vllm_ids, repeats)
    if detokenizer:
        result["detokenizer"] = detokenizer_ways(llm, batch, lora, repeats)
    return result


def detokenizer_ways(llm, batch: RolloutBatch, lora, repeats: int = 3) -> dict[str, Any]:
    """The batch through ``llm`` two ways, alternating repeat by repeat: token ids with each completion
    decoded once after the engine returns, as the rollout workers do
    (:func:`~polyray.rollout.worker.decode_completions`), and with vLLM's own detokenizer (a
    completion's text at every engine step, and a string for every log-prob's token)."""
    from polyray.rollout.worker import decode_completions, sampling_params

    tokenizer = llm.get_tokenizer()
    ids_only = [sampling_params(batch.n, batch.sampling, seed) for seed in batch.seeds]
    with_text = [p.clone() for p in ids_only]
    for p in with_text:
        p.detokenize = True

    def run(params, decode: bool) -> Samples:
        outs = llm.generate(batch.prompts, params, lora_request=lora, use_tqdm=False)
        completions = _vllm_ids(outs)
        if decode:
            for out, ids in zip(outs, completions):
                decode_completions(tokenizer, out.prompt_token_ids, ids)
        return completions

    ways = {"ids_then_decode": (ids_only, True), "vllm_detokenizer": (with_text, False)}
    # warm-up (kernels for new shapes)
    for _ in range(2):
        for params, decode in ways.values():
            run(params, decode)
    samples: dict[str, list[Samples]] = {key: [] for key in ways}
    seconds: dict[str, list[float]] = {key: [] for key in ways}
    for _ in range(repeats):
        for key, (params, decode) in ways.items():
            started = time.perf_counter()
            samples[key].append(run(params, decode))
            seconds[key].append(time.perf_counter() - started)
    return {key: _rate(samples[key], seconds[key]) for key in ways}


def hf_throughput(model_dir: str, dtype: str, batch: RolloutBatch, adapter_dir: str, threads: int, repeats: int = 3):
    """The batch through transformers ``generate`` on the base with the peft adapter in ``adapter_dir``
    (left-padded, ``num_return_sequences = n``, the task's stop strings, the sampled tokens' log-probs
    from the returned logits). A sequence's tokens count up to its end (EOS or stop string), as vLLM's do."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    enc = tokenizer(batch.prompts, return_tensors="pt", padding=True)
    s = batch.sampling
    stop = {"stop_strings": list(s.stop), "tokenizer": tokenizer} if s.stop else {}
    width = enc["input_ids"].shape[1]

    def run():
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=0,
                max_new_tokens=s.max_tokens,
                num_return_sequences=batch.n,
                return_dict_in_generate=True,
                output_logits=True,
                pad_token_id=tokenizer.pad_token_id,
                **stop,
            )
            new = out.sequences[:, width:]
            logits = torch.stack(out.logits, dim=1).float() / s.temperature
            logp = torch.log_softmax(logits, -1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        # generated tokens end at the first pad after the start (generate pads finished sequences)
        done = (new == tokenizer.pad_token_id).int().cumsum(1) > 0
        assert torch.isfinite(logp[~done]).all()
        return new, done

    return _timed(run, lambda out: _hf_ids(*out, batch.n), repeats)


def _first_use(pool, version: int | None) -> None:
    """One token with ``version`` on every worker (its first request under a new adapter loads it into the engine)."""
    probe = SamplingConfig(max_tokens=1)
    pool.submit(GenerationRequest(prompts=["x"] * len(pool.workers), n=1, sampling=probe, version=version)).result()


def _perturb(model, seed: int) -> None:
    """New LoRA B weights (a learner step's worth of change)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _latency(seconds: list[float], loaded: list[float]) -> dict[str, Any]:
    """``seconds``: per sync, the whole; ``loaded``: the part until every worker held the weights (the rest
    is the first generate with them). The first sync warms the engines up: not counted."""
    timed, load = seconds[1:], loaded[1:]
    return {
        "syncs": len(timed),
        "first_ms": 1000 * seconds[0],
        "median_ms": 1000 * statistics.median(timed),
        "max_ms": 1000 * max(timed),
        "load_median_ms": 1000 * statistics.median(load),
        "first_use_median_ms": 1000 * statistics.median(t - lo for t, lo in zip(timed, load)),
    }


def adapter_sync_latency(pool, model, extract_adapter, syncs: int) -> dict[str, Any]:
    """Milliseconds from the learner's LoRA weights to every worker generating with them, per sync,
    published as the learner publishes (:meth:`~polyray.rollout.pool.RolloutPool.publish_next`).
    ``extract_adapter(model)``: the learner's extraction (:func:`polyray.learner.lora.extract_adapter`)."""
    seconds, loaded = [], []
    for i in range(syncs + 1):
        _perturb(model, seed=i)
        started = time.perf_counter()
        version, _ = pool.publish_next(extract_adapter(model), "bench", i)
        loaded.append(time.perf_counter() - started)
        _first_use(pool, version)
        seconds.append(time.perf_counter() - started)
    return _latency(seconds, loaded)


def merged_state_dict(model) -> dict[str, Any]:
    """The base model's weights with the adapter merged in, under the base checkpoint's names."""
    model.merge_adapter()
    try:
        state = model.get_base_model().state_dict()
        return {k.replace(".base_layer", ""): v.detach().clone() for k, v in state.items() if "lora_" not in k}
    finally:
        model.unmerge_adapter()


def _reload(worker, path: str) -> None:
    worker.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})


def full_reload_latency(pool, model, syncs: int) -> dict[str, Any]:
    """Seconds from the learner's weights to every worker generating with them when the whole model
    is synced instead: merge, write safetensors (on tmpfs, as adapters are), reload in place in every
    worker's engine, first use. Leaves the workers on merged weights: run it last."""
    import ray
    from safetensors.torch import save_file

    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    seconds, loaded = [], []
    with tempfile.TemporaryDirectory(prefix="polyray-full-", dir=shm) as tmp:
        for i in range(syncs + 1):
            _perturb(model, seed=100 + i)
            started = time.perf_counter()
            path = Path(tmp) / f"v{i}"
            path.mkdir()
            save_file({k: v.contiguous() for k, v in merged_state_dict(model).items()}, str(path / "model.safetensors"))
            ray.get([w.__ray_call__.remote(_reload, str(path)) for w in pool.workers])
            loaded.append(time.perf_counter() - started)
            _first_use(pool, None)
            seconds.append(time.perf_counter() - started)
    return _latency(seconds, loaded)


# --------------------------------------------------------------------------- fixed-length generation (larger model)


@dataclass(frozen=True)
class FixedLengthBatch:
    """Prompts as token ids, ``n`` samples each, every completion exactly ``tokens`` long (the end token
    ignored, ``min_tokens = max_tokens``): both engines then generate the same number of tokens, so
    tokens/s compares the engines and not how soon a random model happens to stop."""

    prompt_ids: list[list[int]]
    n: int
    tokens: int
    seeds: list[int]
    temperature: float = 1.0

    @property
    def total_tokens(self) -> int:
        return len(self.prompt_ids) * self.n * self.tokens


def fixed_length_vllm(
    model_dir: str, config: RolloutConfig, dtype: str, batch: FixedLengthBatch, adapter_dir: str, repeats: int = 2
) -> dict[str, Any]:
    """The batch through a bare ``vllm.LLM`` (the rollout worker's engine arguments and environment, in a
    fresh process) under the peft adapter in ``adapter_dir``; no detokenization (the model's tokenizer
    may know only its special tokens)."""
    return _in_rollout_process(config, {}, _fixed_length_vllm, model_dir, config, dtype, batch, adapter_dir, repeats)


def _fixed_length_vllm(model_dir, config, dtype, batch: FixedLengthBatch, adapter_dir: str, repeats: int):
    from polyray.rollout.worker import start_engine

    llm = start_engine(model_dir, config, dtype, skip_tokenizer_init=True)
    # after start_engine, which imports vLLM as a rollout worker does (without scikit-learn)
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in batch.prompt_ids]
    params = [
        SamplingParams(
            n=batch.n,
            temperature=batch.temperature,
            max_tokens=batch.tokens,
            min_tokens=batch.tokens,
            ignore_eos=True,
            detokenize=False,
            logprobs=0,
            seed=seed,
        )
        for seed in batch.seeds
    ]
    lora = LoRARequest("policy-v1", 1, adapter_dir)

    def run():
        return llm.generate(prompts, params, lora_request=lora, use_tqdm=False)

    return _timed(run, _vllm_ids, repeats, warmups=1)


def fixed_length_hf(
    model_dir: str, dtype: str, batch: FixedLengthBatch, adapter_dir: str, threads: int, repeats: int = 2
) -> dict[str, Any]:
    """The batch through transformers ``generate`` (left-padded, ``num_return_sequences = n``, KV cache,
    ``min_new_tokens = max_new_tokens``, the sampled tokens' log-probs) on the base with the peft adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    pad = base.config.pad_token_id or 0
    eos = base.config.eos_token_id
    width = max(len(ids) for ids in batch.prompt_ids)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch.prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch.prompt_ids])

    def run():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=batch.temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=batch.tokens,
                min_new_tokens=batch.tokens,
                num_return_sequences=batch.n,
                return_dict_in_generate=True,
                output_logits=True,
                pad_token_id=pad,
            )
            new = out.sequences[:, width:]
            logp = torch.log_softmax(torch.stack(out.logits, dim=1).float() / batch.temperature, -1)
            logp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        assert torch.isfinite(logp).all()
        # a sequence's tokens end at its first end token (generate pads after it): what was generated
        ended = (new == eos).int().cumsum(1) - (new == eos).int() > 0
        return new, ended

    # a long batch: one warm-up settles the shapes
    return _timed(run, lambda out: _hf_ids(*out, batch.n), repeats, warmups=1)


def sync_floor(adapter: dict[str, Any], directory: str | Path, repeats: int = 5) -> dict[str, Any]:
    """What moving the adapter's bytes costs at the least, measured here: one copy in memory (``clone`` of
    every tensor) and one write of its peft directory (:func:`polyray.rollout.store.write_adapter_dir`,
    the store's own writer) under ``directory`` (where the store keeps its versions). Medians of
    ``repeats`` after one warm-up. An adapter sync moves the bytes at least that far: learner -> store
    (a copy), store -> file, file -> every worker's engine."""
    from polyray.rollout.store import write_adapter_dir

    tensors = adapter["tensors"]
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    copy_s, write_s = [], []
    with tempfile.TemporaryDirectory(prefix="polyray-floor-", dir=directory) as tmp:
        for i in range(repeats + 1):
            started = time.perf_counter()
            copies = {k: v.clone() for k, v in tensors.items()}
            copy_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            write_adapter_dir(Path(tmp) / f"v{i}", {"config": adapter["config"], "tensors": copies})
            write_s.append(time.perf_counter() - started)
    copy, write = statistics.median(copy_s[1:]), statistics.median(write_s[1:])
    return {
        "bytes": nbytes,
        "memcpy_ms": 1000 * copy,
        "write_ms": 1000 * write,
        "floor_ms": 1000 * (copy + write),
        "memcpy_bytes_per_s": nbytes / copy,
        "write_bytes_per_s": nbytes / write,
    }
