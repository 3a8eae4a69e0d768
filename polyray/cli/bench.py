"""``polyray bench <part>``: the benchmarks of :mod:`polyray.drivers.bench`, figures printed
side by side (and written with ``--json``), never asserted."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any, List, Optional

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: ratios measured side by side in one run.")
# the embedded default (configs/quickstart.yaml), shipped with the package: the benchmarks run from any directory
QUICKSTART = str(Path(__file__).resolve().parents[1] / "config" / "quickstart.yaml")

_json = typer.Option(None, "--json", help="Also write the figures here.")
_config = typer.Option(
    QUICKSTART,
    "--config",
    show_default="the embedded default, configs/quickstart.yaml",
    help="Run config whose model, task and settings to measure.",
)


def _command(name: Optional[str] = None):
    """``bench_app.command``, with a user's mistake (a config that is not there or not valid, bad data)
    reported in one line, as every other command reports it."""

    def register(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            from polyray.cli.common import user_errors

            with user_errors():
                return fn(*args, **kwargs)

        return bench_app.command(name)(run)

    return register


# a callback keeps subcommands named
@bench_app.callback()
def _group() -> None:
    """Benchmarks: ratios measured side by side in one run."""


def _write(results: dict[str, Any], path: Optional[Path]) -> None:
    if path is not None:
        path.write_text(json.dumps(results, indent=2))


@_command("all")
def all_parts(
    parts: List[str] = typer.Option(
        ["rollout", "grpo", "polychromic", "reward"], "--parts", help="Parts to run (repeatable)."
    ),
    smoke: bool = typer.Option(False, "--smoke", help="Each part at a tiny size (CI)."),
    json_path: Optional[Path] = _json,
):
    """Each part in its own process, then one summary table of ratios against their goals."""
    from polyray.cli.common import fail
    from polyray.drivers.bench import PARTS

    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        fail(f"--parts: unknown part {unknown[0]!r} (choose from {', '.join(PARTS)})")
    from polyray.drivers.bench.suite import run_all

    _write(run_all(parts, smoke), json_path)


@_command()
def rollout(
    prompts: Optional[int] = typer.Option(
        None, "--prompts", help="Prompts in the batch (default: the GRPO phase's prompts per step; n = its group size)."
    ),
    repeats: int = typer.Option(5, "--repeats", help="Timed repeats of the batch per engine."),
    syncs: int = typer.Option(5, "--syncs", help="Weight syncs timed per method."),
    vllm_lora_ops: bool = typer.Option(
        True,
        "--vllm-lora-ops/--no-vllm-lora-ops",
        help="Also a bare engine with vLLM's own CPU LoRA ops (polyray's plugin off): one more engine start.",
    ),
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """Pool / bare engine / transformers tokens/s; adapter sync vs full reload; 1 -> 2 workers."""
    from polyray.drivers.bench.rollout_part import bench_rollout, print_rollout

    results = bench_rollout(config, prompts, repeats, syncs, vllm_lora_ops=vllm_lora_ops)
    print_rollout(results)
    _write(results, json_path)


@_command()
def multiturn(
    prompts: int = typer.Option(16, "--prompts", help="Prompts in the batch."),
    episodes: int = typer.Option(8, "--episodes", help="Episodes per prompt."),
    turns: int = typer.Option(4, "--turns", help="Turns per episode (the single-turn side: one of them all)."),
    turn_tokens: int = typer.Option(16, "--turn-tokens", help="Tokens per turn (EOS ignored)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed repeats of each workload, alternating."),
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """Multi-turn episodes against single turns of the same tokens, with the engine's prefix cache and without."""
    from polyray.drivers.bench.episodes import bench_multiturn, print_multiturn

    results = bench_multiturn(
        config, prompts=prompts, episodes=episodes, turns=turns, turn_tokens=turn_tokens, repeats=repeats
    )
    print_multiturn(results)
    _write(results, json_path)


@_command()
def grpo(
    steps: int = typer.Option(12, "--steps", help="Steps per phase (each mode runs --rounds times)."),
    rounds: int = typer.Option(2, "--rounds", help="Times each mode runs, alternating."),
    modes: List[str] = typer.Option(
        [],
        "--modes",
        help="Modes to run, a fit each (repeatable): sync, async, async_waits, async_unpacked, async_rollout_reference."
        " Default: all (async_rollout_reference only when the phase has a KL term); the ratios of those that ran.",
    ),
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """GRPO step time, rollouts one step ahead / synchronous, and one ahead against its variants (a fit per mode)."""
    from polyray.drivers.bench.grpo import bench_grpo, print_grpo

    results = bench_grpo(steps, config, rounds=rounds, modes=list(modes) or None)
    print_grpo(results)
    _write(results, json_path)


@_command()
def polychromic(
    steps: int = typer.Option(30, "--steps"),
    diversity: List[str] = typer.Option(
        ["semantic", "countdown_expr"], "--diversity", help="Diversity functions (repeatable)."
    ),
    no_async: bool = typer.Option(False, "--no-async", help="Leave out the variant with rollouts one step ahead."),
    canary: bool = typer.Option(True, "--canary/--no-canary", help="Also the variant with the canary on every step."),
    floor: bool = typer.Option(True, "--floor/--no-floor", help="Also SFT on as many sequences as a polychromic step."),
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """Polychromic SFT step time / SFT step time."""
    from polyray.drivers.bench.polychromic import bench_polychromic, print_polychromic

    results = bench_polychromic(steps, config, diversity, with_async=not no_async, with_canary=canary, with_floor=floor)
    print_polychromic(results)
    _write(results, json_path)


@_command()
def reward(
    requests: int = typer.Option(300, "--requests", help="Requests per (reward, concurrency) cell."),
    max_seconds: float = typer.Option(20.0, "--max-seconds", help="Time cap per cell."),
    pairs: int = typer.Option(256, "--pairs", min=2, help="Pairs the engagement model scores batched and one by one."),
    json_path: Optional[Path] = _json,
):
    """Reward service throughput and latency; engagement model batched / unbatched."""
    from polyray.drivers.bench.reward import bench_reward, print_reward

    results = bench_reward(requests, max_seconds, pairs)
    print_reward(results)
    _write(results, json_path)


@_command()
def experiment(
    seeds: int = typer.Option(3, "--seeds", min=1, help="Runs of the experiment in each round (one per seed)."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Rounds; each runs cold, then warm."),
    sft_steps: int = typer.Option(20, "--sft-steps", min=1),
    grpo_steps: int = typer.Option(20, "--grpo-steps", min=1),
    concurrent: int = typer.Option(
        1, "--concurrent", min=1, help="Also run the trials this many at once (a third mode, beside warm)."
    ),
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """Runs per hour of a small experiment with fresh learner ranks per phase (cold) and kept ones (warm)."""
    from polyray.drivers.bench.experiment import bench_experiment, print_experiment

    results = bench_experiment(
        config, seeds=seeds, repeats=repeats, sft_steps=sft_steps, grpo_steps=grpo_steps, concurrent=concurrent
    )
    print_experiment(results)
    _write(results, json_path)


@_command()
def generation(
    requests: int = typer.Option(64, "--requests", help="Requests per cell."),
    n: int = typer.Option(4, "--n", help="Completions per request."),
    max_tokens: int = typer.Option(32, "--max-tokens"),
    publishes: int = typer.Option(5, "--publishes"),
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """Generation service tokens/s vs a direct engine; publish -> latest."""
    from polyray.drivers.bench.generation import bench_generation, print_generation

    results = bench_generation(requests, n, max_tokens, config, publishes=publishes)
    print_generation(results)
    _write(results, json_path)


@_command()
def chaos(
    services: List[str] = typer.Option(
        ["reward", "generation"], "--services", help="Services to load and kill (repeatable)."
    ),
    clients: int = typer.Option(16, "--clients", help="Concurrent clients."),
    seconds: float = typer.Option(
        30.0, "--seconds", help="Seconds of load per run (the kill run goes on until recovered)."
    ),
    kill_at: float = typer.Option(10.0, "--kill-at", help="Seconds into the kill run when the replica is SIGKILLed."),
    max_recovery_s: float = typer.Option(120.0, "--max-recovery-s", help="Give up waiting for the service after this."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Replicas per service (one of them is killed)."),
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """Each service under load, then the same load with one replica SIGKILLed: latency, errors, recovery, leftovers."""
    from polyray.cli.common import fail

    unknown = [s for s in services if s not in ("reward", "generation")]
    if unknown:
        fail(f"--services: unknown service {unknown[0]!r} (choose from reward, generation)")
    from polyray.drivers.bench.chaos import bench_chaos, print_chaos

    results = bench_chaos(
        list(services), clients, seconds, kill_at, config=config, max_recovery_s=max_recovery_s, replicas=replicas
    )
    print_chaos(results)
    _write(results, json_path)


@_command()
def canary(
    layers: int = typer.Option(28, "--layers", help="Decoder layers (Qwen3-0.6B's width and vocabulary; it has 28)."),
    probes: int = typer.Option(32, "--probes", min=2, help="Probe completions, each scored under every version."),
    probe_tokens: int = typer.Option(32, "--probe-tokens", min=2, help="Tokens of each probe completion."),
    short_tokens: int = typer.Option(8, "--short-tokens", min=1, help="Also judged on the first N tokens alone."),
    logit_scale: float = typer.Option(6.0, "--logit-scale", help="Final norm scale: how peaked the predictions are."),
    vocab: int = typer.Option(151_936, "--vocab", min=16, help="Vocabulary size (Qwen3's by default)."),
    threads: int = typer.Option(2, "--threads"),
    json_path: Optional[Path] = _json,
):
    """The sync canary in bfloat16 on the CPU: the learner - worker log-prob gap with the right adapter, the
    rule's false alarms beside the old rule's, and how far an adapter must move for a stale worker to be caught."""
    from polyray.cli.common import fail

    if short_tokens > probe_tokens:
        fail(f"--short-tokens {short_tokens} is more than --probe-tokens {probe_tokens}")
    from rich.console import Console

    from polyray.drivers.bench.canary import bench_canary, print_canary

    console = Console(width=140)
    with console.status("building the model") as status:
        results = bench_canary(
            layers,
            probes,
            probe_tokens=probe_tokens,
            short_tokens=short_tokens,
            logit_scale=logit_scale,
            threads=threads,
            vocab=vocab,
            progress=status.update,
        )
    print_canary(results, console)
    _write(results, json_path)


# bench learner's options whose help runs past a line
_WholeBatchSizes = Annotated[
    List[int],
    typer.Option(
        "--whole-batch-sizes",
        help="Sizes also run on the whole-batch path (repeatable): its logits grow with the batch, 64 x 256 tokens"
        " need ~20 GB for two copies alone.",
    ),
]
_Length = Annotated[
    int, typer.Option("--length", help="Tokens per sequence (a prompt of 32-64, the completion the rest).")
]
_MicroBatchTokens = Annotated[
    int, typer.Option("--micro-batch-tokens", help="The micro-batched path's learner.micro_batch_tokens.")
]
_LogitsChunkMib = Annotated[
    float, typer.Option("--logits-chunk-mib", help="The micro-batched path's learner.logits_chunk_mib.")
]
_PackingSizes = Annotated[
    List[int],
    typer.Option(
        "--packing-sizes",
        help="Sizes also run with samples of varied lengths on shared prompts, packed and one a row (repeatable;"
        " default: the smallest --sizes; none with --gradient-checkpointing).",
    ),
]
_GradientCheckpointing = Annotated[
    bool, typer.Option("--gradient-checkpointing", help="learner.gradient_checkpointing.")
]
_MeasuredSteps = Annotated[
    int, typer.Option("--measured-steps", min=1, help="Steps timed after the warm-up one (their mean).")
]


@_command()
def learner(
    sizes: List[int] = typer.Option([8, 16, 32, 64], "--sizes", help="Sequences per step, micro-batched (repeatable)."),
    whole_batch_sizes: _WholeBatchSizes = [8, 16],
    length: _Length = 256,
    micro_batch_tokens: _MicroBatchTokens = 2048,
    logits_chunk_mib: _LogitsChunkMib = 256,
    layers: int = typer.Option(2, "--layers", help="Decoder layers of the benchmark model."),
    hidden: int = typer.Option(1024, "--hidden"),
    intermediate: int = typer.Option(3072, "--intermediate"),
    heads: int = typer.Option(16, "--heads"),
    kv_heads: int = typer.Option(8, "--kv-heads"),
    head_dim: int = typer.Option(128, "--head-dim"),
    vocab: int = typer.Option(151_936, "--vocab"),
    threads: int = typer.Option(2, "--threads", help="Torch threads of each measured process."),
    packing_sizes: _PackingSizes = [],
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda: the learner on the GPU, its memory the GPU's."),
    dtype: str = typer.Option("float32", "--dtype", help="The base weights' dtype (model.dtype): float32 or bfloat16."),
    gradient_checkpointing: _GradientCheckpointing = False,
    measured_steps: _MeasuredSteps = 1,
    json_path: Optional[Path] = _json,
):
    """Peak memory and tokens/s of one GRPO learner step per size, micro-batched vs whole batch, beside the memory
    plan; varied-length samples packed vs one a row. On the CPU, or on a CUDA GPU with --device cuda."""
    _check_learner_device(device, dtype)
    from polyray.drivers.bench.common import console
    from polyray.drivers.bench.learner import BenchShape, bench_learner, print_learner

    shape = BenchShape(
        layers=layers,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=vocab,
    )
    with console.status("building the benchmark model") as status:
        results = bench_learner(
            sizes,
            whole_batch_sizes,
            length=length,
            micro_batch_tokens=micro_batch_tokens,
            logits_chunk_mib=logits_chunk_mib,
            shape=shape,
            threads=threads,
            on_case=lambda c: status.update(f"{c.path}, {c.sequences} sequences x {c.length} tokens"),
            packing_sizes=packing_sizes or None,
            device=device,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            measured_steps=measured_steps,
        )
    print_learner(results, console)
    _write(results, json_path)


def _check_learner_device(device: str, dtype: str) -> None:
    """``--device`` and ``--dtype`` name ones the learner runs on, and ``cuda`` a GPU that PyTorch can use."""
    from polyray.cli.common import fail

    if device not in ("cpu", "cuda"):
        fail(f"--device: {device!r} is not cpu or cuda")
    if dtype not in ("float32", "bfloat16"):
        fail(f"--dtype: {dtype!r} is not float32 or bfloat16")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda: this machine has no CUDA GPU that PyTorch can use")


# bench peer's options whose help runs past a line
_Seeds = Annotated[
    int, typer.Option("--seeds", min=1, help="Seeds 0..N-1; polyray and TRL run each, then a paired comparison.")
]
_Overrides = Annotated[
    List[str], typer.Option("--set", help="Dotted override of the config for both trainers (repeatable).")
]
_TrlThreads = Annotated[
    int, typer.Option("--threads", min=1, help="Torch threads of the TRL process (the cores polyray's workers share).")
]
_Margin = Annotated[
    float,
    typer.Option("--margin", help="Non-inferiority margin (> 0) of test pass@k: polyray at least TRL's minus this."),
]
_LargeShape = Annotated[
    str,
    typer.Option(
        "--large-shape",
        help="The larger model: layers,hidden,intermediate,heads,kv_heads,head_dim,vocab (Qwen3-0.6B's width and"
        " vocabulary, 2 layers).",
    ),
]
_LargeTokens = Annotated[
    int, typer.Option("--large-tokens", min=1, help="Tokens of every completion (end token ignored).")
]
_LargeLearnerSequences = Annotated[
    int, typer.Option("--large-learner-sequences", min=0, help="Sequences of the learner step (0: none).")
]


@_command()
def peer(
    seeds: _Seeds = 3,
    overrides: _Overrides = [],
    warmup: int = typer.Option(2, "--warmup", min=0, help="Steps left out of each phase's step statistics."),
    threads: _TrlThreads = 2,
    margin: _Margin = 0.02,
    large: bool = typer.Option(True, "--large/--no-large", help="Also the larger-model generation and learner ratios."),
    large_shape: _LargeShape = "2,1024,3072,16,8,128,151936",
    large_prompts: int = typer.Option(4, "--large-prompts", min=1),
    large_n: int = typer.Option(4, "--large-n", min=1, help="Samples per prompt on the larger model."),
    large_tokens: _LargeTokens = 128,
    large_repeats: int = typer.Option(2, "--large-repeats", min=1),
    large_learner_sequences: _LargeLearnerSequences = 8,
    config: str = _config,
    json_path: Optional[Path] = _json,
):
    """polyray vs TRL (SFTTrainer, GRPOTrainer) on one config's model, task, reward and settings; the larger-model ratios."""
    run = _peer_config(config, overrides, margin)
    shape = _large_shape(large_shape)
    from polyray.drivers.bench.common import console
    from polyray.drivers.bench.peer import bench_peer, print_peer
    from polyray.drivers.bench.peer_large import bench_large, print_large

    # no status spinner: the polyray run shows its own progress bars
    stage = console.rule
    results = bench_peer(
        config, list(overrides), list(range(seeds)), warmup=warmup, threads=threads, on_stage=stage, margin=margin
    )
    if large:
        results["large"] = bench_large(
            shape,
            prompts=large_prompts,
            n=large_n,
            tokens=large_tokens,
            repeats=large_repeats,
            threads=threads,
            lora=run.learner.lora,
            learner_sequences=large_learner_sequences,
            on_stage=stage,
        )
    print_peer(results, console)
    if large:
        print_large(results["large"], console)
    _write(results, json_path)


def _peer_config(config: str, overrides: List[str], margin: float):
    """The run config both trainers read, refused in one line before anything starts: TRL not installed, a
    margin not > 0, a setting TRL cannot express."""
    from polyray.cli.common import fail, user_errors

    try:
        import trl  # noqa: F401
    except ImportError:
        fail("bench peer: TRL is not installed (pip install -e '.[bench]')")
    from polyray.config import load_config
    from polyray.drivers.bench.peer import peer_settings

    if not margin > 0:
        fail(f"--margin: must be > 0, got {margin}")
    with user_errors():
        run = load_config(config, list(overrides))
        # a setting TRL cannot express: one line, before anything starts
        peer_settings(run)
    return run


def _large_shape(text: str):
    """``--large-shape``'s seven positive integers as the larger model's :class:`BenchShape`."""
    from polyray.cli.common import fail
    from polyray.drivers.bench.learner import BenchShape

    try:
        dims = [int(v) for v in text.split(",")]
    except ValueError:
        dims = []
    if len(dims) == 7 and min(dims) > 0:
        return BenchShape(*dims)
    fail(f"--large-shape: {text!r} is not 7 positive integers layers,hidden,intermediate,heads,kv_heads,head_dim,vocab")
