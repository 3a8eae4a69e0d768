"""``polyray bench canary``: what the adapter sync canary sees in bfloat16, and what its rule decides.

The sync canary (:mod:`polyray.learner.sync`) compares the learner's log-probs of a probe completion with
a rollout worker's under the version the learner published. In float32 both sides agree to ~1e-5; in
bfloat16 they differ by the kernels' rounding (the logits themselves are rounded to 8 bits), and by
how much depends on the model's shape and how peaked its predictions are. This benchmark measures it
on the CPU bfloat16 path with a real model's shape:

- the model: Qwen3-0.6B's shape (28 layers, hidden 1024, 151,936 tokens) with random weights built
  locally (:func:`polyray.drivers.bench.learner.build_bench_model`); its final norm is scaled
  (``logit_scale``) so that its predictions are about as peaked as a trained model's (the probes'
  tokens have mean log-probs of a few nats, not the -12 of a uniform draw over the vocabulary);
- the two sides are the real ones: a :class:`~polyray.rollout.worker.RolloutWorker` (vLLM, the
  worker's engine arguments, adapters loaded as a publish loads them) and the learner's peft model
  (bfloat16 base, float32 LoRA), scored through :class:`~polyray.learner.sync.SyncCanary`;
- adapters: version 1 a random LoRA (``adapter_scale``), then versions that each move by a larger
  step (``steps``), so that a stale worker (serving the previous version) is seen at several
  distances;
- probes: random prompts, each completed by the worker itself at temperature 1 (the tokens a model
  finds likely, as a trained model finds its reference answers).

It reports the fresh gap (worker serving the published version) per probe, RMS and largest token,
at two probe lengths; how often the canary's rule (:func:`~polyray.learner.sync.stale_reason`) and the
old rule (largest token gap past 5e-2) would stop a run whose worker serves the right weights (false
alarms); and how often the rule catches a worker serving the previous version or the base model.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

# the first canary's rule in bfloat16: the largest token gap past it failed the check
OLD_MAX_RULE = 5e-2


def _scale_final_norm(model_dir: Path, scale: float) -> None:
    """Multiply the final norm's weight (and so every logit) by ``scale``, in place."""
    from safetensors.torch import load_file, save_file

    for shard in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(shard)
        if "model.norm.weight" in tensors:
            tensors["model.norm.weight"] = tensors["model.norm.weight"] * scale
            save_file({k: v.contiguous() for k, v in tensors.items()}, shard, metadata={"format": "pt"})
            return
    raise ValueError(f"{model_dir}: no model.norm.weight in its safetensors")


def bench_canary(
    layers: int = 28,
    probes: int = 32,
    prompt_tokens: int = 24,
    probe_tokens: int = 32,
    short_tokens: int = 8,
    logit_scale: float = 6.0,
    adapter_scale: float = 2e-3,
    steps: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3),
    rank: int = 32,
    threads: int = 2,
    seed: int = 0,
    vocab: int = 151_936,
    progress=lambda what: None,
) -> dict[str, Any]:
    """The measurements (module docstring), as a JSON-ready dict."""
    import torch

    from polyray.config import LoraConfig, RolloutConfig
    from polyray.drivers.bench.learner import BenchShape, build_bench_model
    from polyray.learner.lora import build_peft_model
    from polyray.learner.sync import NOISE, TOLERANCE

    torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix="polyray-bench-canary-"))
    progress("building the model")
    model_dir = build_bench_model(root / "model", BenchShape(layers=layers, vocab=vocab), seed)
    _scale_final_norm(model_dir, logit_scale)
    learner, _ = build_peft_model(str(model_dir), LoraConfig(r=rank, alpha=2 * rank), "bfloat16")
    # the versions' steps, then the probes' prompts
    gen = torch.Generator().manual_seed(seed + 1)
    versions = _versions(learner, (adapter_scale, *steps), gen)

    progress("starting the rollout worker")
    config = RolloutConfig(
        max_model_len=prompt_tokens + probe_tokens + 8,
        max_lora_rank=rank,
        max_loras=len(versions),
        max_num_seqs=probes,
        kv_cache_gib=2,
        threads=threads,
    )
    served, scored = _score_both(
        str(model_dir), config, learner, versions, probes, prompt_tokens, probe_tokens, vocab, seed, gen, progress
    )

    tolerance, noise = TOLERANCE["bfloat16"], NOISE["bfloat16"]
    out: dict[str, Any] = {
        "shape": {"layers": layers, "hidden": 1024, "vocab": vocab, "logit_scale": logit_scale, "rank": rank},
        "probes": probes,
        "probe_tokens": probe_tokens,
        "short_tokens": short_tokens,
        "rule": {"tolerance": tolerance, "noise": noise},
        "mean_logprob": statistics.fmean(float(s.mean()) for s in served[1]),
    }
    for label, n in {"probe": None, "short": short_tokens}.items():
        out[label] = _summarise(scored, served, list(versions), probes, n, probe_tokens, tolerance, noise)
    return out


def _versions(learner, sizes: tuple[float, ...], gen) -> dict[int, dict[str, Any]]:
    """Version -> its adapter: each version's LoRA B moved from the last by a random step of its size."""
    import torch

    from polyray.learner.lora import extract_adapter

    versions: dict[int, dict[str, Any]] = {}
    for version, size in enumerate(sizes, start=1):
        with torch.no_grad():
            for name, p in learner.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn(p.shape, generator=gen) * size)
        versions[version] = extract_adapter(learner)
    return versions


def _score_both(
    model_dir: str,
    config,
    learner,
    versions: dict[int, dict[str, Any]],
    probes: int,
    prompt_tokens: int,
    probe_tokens: int,
    vocab: int,
    seed: int,
    gen,
    progress,
) -> tuple[dict[int, list], dict[int, list]]:
    """(served, scored): each probe's token log-probs on the worker / on the learner, per version (0: the base
    model), the probes drawn by the worker itself under version 1."""
    import torch

    from polyray.learner.sync import SyncCanary
    from polyray.rollout.store import to_wire
    from polyray.rollout.worker import RolloutWorker

    worker = RolloutWorker(model_dir, config, "bfloat16", keep_versions=len(versions))
    try:
        for version, adapter in versions.items():
            worker.load_adapter(version, to_wire(adapter))
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompts = [torch.randint(3, vocab, (prompt_tokens,), generator=gen).tolist() for _ in range(probes)]
        params = SamplingParams(
            max_tokens=probe_tokens, min_tokens=probe_tokens, temperature=1.0, seed=seed, detokenize=False
        )
        progress("drawing the probes")
        outs = worker.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            params,
            lora_request=worker._lora_request(1, None),
            use_tqdm=False,
        )
        pairs = [(p, list(o.outputs[0].token_ids)) for p, o in zip(prompts, outs)]

        progress("scoring on the worker")
        served = {
            v: [torch.tensor(s, dtype=torch.float64) for s in worker.score_sequences(pairs, v or None)]
            for v in [0, *versions]
        }
        scored: dict[int, list[torch.Tensor]] = {}
        canaries = [SyncCanary(1, pair, 0, "bfloat16") for pair in pairs]
        for version, adapter in versions.items():
            progress(f"scoring on the learner: version {version}")
            _load(learner, adapter)
            scored[version] = [c.learner_logprobs(learner, *c.probe, 1.0) for c in canaries]
        scored[0] = [c.learner_logprobs(learner, *c.probe, 1.0, adapter=False) for c in canaries]
    finally:
        worker.close()
    return served, scored


def _cut(x, n: int | None):
    return x if n is None else x[:n]


def _caught(
    scored, served, v: int, serves: int, i: int, n: int | None, tolerance, noise, references: bool = True
) -> bool:
    """Whether the rule stops probe ``i`` checked at version ``v`` on a worker serving version ``serves``."""
    from polyray.learner.sync import stale_reason

    refs = _references(scored, v, i, n) if references else {}
    return stale_reason(_cut(scored[v][i], n), _cut(served[serves][i], n), refs, tolerance, noise) is not None


def _summarise(
    scored, served, versions: list[int], probes: int, n: int | None, probe_tokens: int, tolerance, noise
) -> dict[str, Any]:
    """One probe length's figures: the fresh gaps, false alarms (every fresh check as a run makes it, with the
    base model and the version before as references), and stale or base-model workers caught."""
    from polyray.learner.sync import rms

    fresh = [(_cut(scored[v][i], n), _cut(served[v][i], n)) for v in versions for i in range(probes)]
    gaps = [rms(s - ref) for ref, s in fresh]
    tops = [float((s - ref).abs().max()) for ref, s in fresh]
    alarms = sum(_caught(scored, served, v, v, i, n, tolerance, noise) for v in versions for i in range(probes))
    stale = []
    for v in versions[1:]:
        caught = sum(_caught(scored, served, v, v - 1, i, n, tolerance, noise) for i in range(probes))
        alone = sum(_caught(scored, served, v, v - 1, i, n, tolerance, noise, references=False) for i in range(probes))
        moved = statistics.median(rms(_cut(scored[v][i], n) - _cut(scored[v - 1][i], n)) for i in range(probes))
        stale.append({"version": v, "serves": v - 1, "moved_rms": moved, "caught": caught, "by_tolerance": alone})
    base_caught = sum(_caught(scored, served, v, 0, i, n, tolerance, noise) for v in versions for i in range(probes))
    return {
        "tokens": n or probe_tokens,
        "checks": len(fresh),
        "fresh_rms": {"median": statistics.median(gaps), "max": max(gaps)},
        "fresh_token_max": {"median": statistics.median(tops), "max": max(tops)},
        "false_alarms": alarms,
        "old_rule_false_alarms": sum(t > OLD_MAX_RULE for t in tops),
        "stale": stale,
        "base_caught": base_caught,
    }


def _references(scored, version: int, probe: int, n: int | None) -> dict[str, Any]:
    """A check's references as a run's canary holds them: the base model and the version checked before."""
    refs = {"the base model": scored[0][probe]}
    if version > 1:
        refs[f"policy-v{version - 1}"] = scored[version - 1][probe]
    return {k: (r if n is None else r[:n]) for k, r in refs.items()}


def _load(model, adapter: dict[str, Any]) -> None:
    """Write a published adapter's tensors back into the learner's parameters."""
    import torch

    from polyray.learner.lora import adapter_parameters

    with torch.no_grad():
        for key, p in adapter_parameters(model):
            p.copy_(adapter["tensors"][key])


def print_canary(results: dict[str, Any], console) -> None:
    from rich.table import Table

    rule = results["rule"]
    console.print(
        f"bfloat16, {results['shape']['layers']} layers x {results['shape']['hidden']} hidden, vocabulary"
        f" {results['shape']['vocab']}, LoRA rank {results['shape']['rank']}; {results['probes']} probes, mean"
        f" log-prob {results['mean_logprob']:.2f}; rule: tolerance {rule['tolerance']} RMS, noise {rule['noise']}"
    )
    table = Table(
        "probe tokens",
        "checks",
        "fresh RMS median / max",
        "fresh token max median / max",
        "false alarms (rule)",
        f"false alarms (max > {OLD_MAX_RULE})",
        "base model caught",
    )
    for label in ("probe", "short"):
        r = results[label]
        table.add_row(
            str(r["tokens"]),
            str(r["checks"]),
            f"{r['fresh_rms']['median']:.3f} / {r['fresh_rms']['max']:.3f}",
            f"{r['fresh_token_max']['median']:.3f} / {r['fresh_token_max']['max']:.3f}",
            str(r["false_alarms"]),
            str(r["old_rule_false_alarms"]),
            f"{r['base_caught']} / {r['checks']}",
        )
    console.print(table)
    stale = Table(
        "probe tokens", "published", "worker serves", "moved (RMS, median)", "caught", "caught by the tolerance alone"
    )
    for label in ("probe", "short"):
        r = results[label]
        for s in r["stale"]:
            stale.add_row(
                str(r["tokens"]),
                f"v{s['version']}",
                f"v{s['serves']}",
                f"{s['moved_rms']:.3f}",
                f"{s['caught']} / {results['probes']}",
                f"{s['by_tolerance']} / {results['probes']}",
            )
    console.print(stale)
