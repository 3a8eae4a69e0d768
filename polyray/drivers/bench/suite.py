"""Benchmarks, each printed as figures measured side by side in one run (never asserted in tests).

Each part's driver is in its own module (:mod:`.rollout_part`, :mod:`.grpo`, :mod:`.polychromic`, :mod:`.reward`,
:mod:`.generation`, :mod:`.chaos`, :mod:`.learner`, :mod:`.peer`, :mod:`.canary`); this one runs them all
(:func:`run_all`) and sums their ratios up against their goals.

The commands are ``polyray bench <part>`` (``python -m jobs.benchmark <part>`` as a Ray job):

``polyray bench all [--json out.json]``
    every part below at its default size (generation, learner, peer and chaos only when named in ``--parts``), then
    one summary table of ratios against their goals.
``polyray bench rollout [--no-vllm-lora-ops]``
    RolloutPool / a bare ``vllm.LLM`` and vLLM / transformers ``generate`` tokens/s on the same
    multi-candidate batch (and polyray's CPU LoRA ops / vLLM's own, unless left out); the adapter sync
    (learner weights -> generating on every worker) against a full-weights reload; 1 -> 2 rollout workers.
``polyray bench grpo [--steps 12] [--modes sync --modes async ...]``
    GRPO step time with rollouts one step ahead / synchronous, 1 rollout worker + 1 learner worker; and one
    step ahead against its variants (each publish waited for, samples one a row, the KL reference scored by
    the rollout worker). Each mode is a fit of its own; ``--modes`` runs some of them, and only the ratios
    whose modes ran.

``polyray bench polychromic [--steps 30] [--no-canary]``
    polychromic SFT step time / standard SFT step time on the embedded default (same model,
    batch, learner and rollout pool), with where the polychromic step's time goes (and the sync canary's
    cost on every step, unless left out).
``polyray bench reward``
    the reward service: requests/s and p50/p99 latency on loopback for 1 and 32 clients,
    and the batched / unbatched throughput of the engagement model.
``polyray bench learner [--sizes 8 --sizes 16 ...] [--device cuda --dtype bfloat16]``
    peak memory (resident, or the GPU's) and tokens/s of one GRPO learner step at each size, micro-batched
    with chunked logits against the whole-batch, whole-logits path, each in a fresh process, beside the
    memory plan's estimate (:mod:`.learner`).
``polyray bench peer [--seeds 3] [--set phases.1.steps=20 ...]``
    polyray against TRL (``SFTTrainer``, ``GRPOTrainer``) on one config's model, task, reward and settings:
    step times, tokens/s, end to end, test pass@k with polyray's evaluator, paired over seeds; then
    vLLM / transformers tokens/s and learner tokens/s on a model of Qwen3-0.6B's width (:mod:`.peer`).
``polyray bench generation [--requests 64]``
    the generation service: output tokens/s through its HTTP API / the same requests straight into
    a vLLM engine with the same settings, at 1 and 16 concurrent clients; and the time from a
    version's publish to ``latest`` serving it.
``polyray bench chaos [--clients 16 --seconds 30 --kill-at 10]``
    each service on loopback under a fixed load, then the same load with its replica SIGKILLed: p50/p99,
    requests/s, back-pressure apart from errors, the time until it answers again, the learner's retrying
    reward calls lost, and what outlived the replica (processes, directories) (:mod:`.chaos`).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from polyray.drivers.bench.common import console
from polyray.drivers.bench.polychromic import polychromic_floors


# the GRPO part's ratio -> (measure, goal), in the summary's order
GRPO_GOALS = {
    "ratio": ("GRPO step, one ahead / synchronous", "<= 0.65"),
    "async_vs_floor": ("GRPO step, one ahead / max(rollout + reward, update + publish)", "<= 1.1"),
    "publish_behind_vs_waits": ("GRPO step, one ahead: publish behind the step / waited for", "-"),
    "packed_vs_unpacked": ("GRPO step, one ahead: samples packed / one a row", "-"),
    "rollout_reference_vs_learner": ("GRPO step, one ahead: KL reference on the rollout worker / on the learner", "-"),
}


def summary_rows(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(measure, ratio, goal) for each ratio ``results`` holds (parts that ran)."""
    rows = []
    if "rollout" in results:
        r = results["rollout"]["ratios"]
        rows.append(("RolloutPool / bare vllm.LLM tokens/s", r["pool_vs_raw_llm"], ">= 0.95"))
        # (left out with --no-vllm-lora-ops)
        if "cpu_lora_plugin_vs_vllm_ops" in r:
            rows.append(("polyray's CPU LoRA ops / vLLM's, tokens/s", r["cpu_lora_plugin_vs_vllm_ops"], "-"))
        rows += [
            ("token ids + one decode / vLLM's detokenizer, tokens/s", r["ids_then_decode_vs_vllm_detokenizer"], "-"),
            ("vLLM / transformers generate tokens/s", r["vllm_vs_transformers"], ">= 2"),
            ("adapter sync / full-weights reload (ms)", r["adapter_sync_vs_full_reload"], "< 1"),
            ("adapter publish / copy + write of its bytes (ms)", r["adapter_publish_vs_floor"], "-"),
            ("2 / 1 rollout workers tokens/s", r["two_vs_one_worker"], "-"),
        ]
    # the ratios whose modes ran
    if "grpo" in results:
        grpo = results["grpo"]
        rows += [(name, grpo[key], goal) for key, (name, goal) in GRPO_GOALS.items() if key in grpo]
    if "polychromic" in results:
        p = results["polychromic"]
        rows += [
            (f"{name} step / SFT step", r["step_s"] / p["sft"]["step_s"], "-")
            for name, r in p.items()
            if not name.startswith("sft")
        ]
        rows += [
            (f"{name} step / SFT step on references + samples", ratio, "<= 1.2")
            for name, ratio in polychromic_floors(p)
        ]
    if "peer" in results:
        r, large = results["peer"]["ratios"], results["peer"].get("large")
        rows += [
            ("GRPO step, polyray / TRL", r["grpo_step_polyray_vs_trl"], "<= 0.5"),
            ("SFT step, polyray / TRL", r["sft_step_polyray_vs_trl"], "<= 1.0"),
            ("end to end (short run), polyray / TRL", r["end_to_end_polyray_vs_trl"], "-"),
        ]
        if large:
            rows.append(
                (
                    f"vLLM / transformers generate tokens/s, larger model, {large['tokens']} tokens",
                    large["vllm_vs_transformers"],
                    ">= 2",
                )
            )
    if "reward" in results:
        rows.append(
            ("reward model batched / unbatched items/s", results["reward"]["engagement_batching"]["ratio"], "-")
        )
    if "learner" in results:
        rows += learner_rows(results["learner"]["ratios"])
    return rows


def learner_rows(ratios: dict[str, float]) -> list[tuple[str, float, str]]:
    """The learner part's ratios as summary rows, with their goals."""
    goals = {
        "peak_": ("learner peak, largest / smallest step (micro-batched)", "<= 1.15"),
        "whole_vs_micro_peak_": ("learner peak, whole batch / micro-batched", ">= 3"),
        "micro_vs_whole_tokens_per_s_": ("learner tokens/s, micro-batched / whole batch", ">= 1"),
        "micro_vs_whole_tokens_per_cpu_s_": ("learner tokens per CPU s, micro-batched / whole batch", ">= 1"),
        "packed_vs_one_a_row_step_s_": ("learner step, varied-length samples packed / one a row", "-"),
        "estimate_vs_measured_": ("memory plan estimate / measured peak", "0.75-1.25"),
    }
    rows = []
    for key, value in ratios.items():
        prefix = max((p for p in goals if key.startswith(p)), key=len)
        name, goal = goals[prefix]
        rows.append((f"{name} ({key[len(prefix) :].replace('_vs_', ' vs ')})", value, goal))
    return rows


def print_summary(results: dict[str, Any]) -> None:
    table = Table(title="polyray benchmark: ratios measured side by side in one run")
    for col in ("measure", "ratio", "goal"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for name, value, goal in summary_rows(results):
        table.add_row(escape(name), f"{value:.2f}", goal)
    console.print(table)


# --smoke runs each harness function once, leaving out the fits and engines that only repeat one with another setting:
# rollout: vLLM's own LoRA ops (raw_llm's harness, polyray's plugin off: a reference measurement only)
# grpo: the KL reference scored by the rollout worker, one step ahead (the one fit with a real pool that takes it);
# the other modes change one setting each and their ratios are the same division (grpo_ratios, unit-tested)
# polychromic: standard SFT and polychromic SFT, not the floor (SFT with another batch size) nor the canary on
# every step (the run-recovery e2e test runs it); peer: the larger model's learner step (run_case:
# tests/unit/drivers/test_bench_learner.py)
SMOKE = {
    "rollout": ["--prompts", "4", "--repeats", "1", "--syncs", "2", "--no-vllm-lora-ops"],
    "grpo": ["--steps", "4", "--rounds", "1", "--modes", "async_rollout_reference"],
    "polychromic": ["--steps", "4", "--diversity", "countdown_expr", "--no-async", "--no-canary", "--no-floor"],
    "reward": ["--requests", "20", "--max-seconds", "2", "--pairs", "32"],
    "generation": ["--requests", "4", "--n", "2", "--max-tokens", "8", "--publishes", "2"],
    "chaos": ["--clients", "2", "--seconds", "3", "--kill-at", "1"],
    "learner": [
        "--sizes",
        "2",
        "--sizes",
        "4",
        "--whole-batch-sizes",
        "2",
        "--length",
        "32",
        "--micro-batch-tokens",
        "64",
        "--layers",
        "1",
        "--hidden",
        "64",
        "--intermediate",
        "128",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--head-dim",
        "32",
        "--vocab",
        "512",
        "--threads",
        "1",
    ],
    "peer": [
        "--seeds",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--set",
        "phases.0.steps=2",
        "--set",
        "phases.0.batch_size=4",
        "--set",
        "phases.1.steps=2",
        "--set",
        "phases.1.prompts_per_step=2",
        "--set",
        "phases.1.group_size=4",
        "--set",
        "task.n_test=8",
        "--large-shape",
        "1,64,128,2,1,32,512",
        "--large-prompts",
        "2",
        "--large-n",
        "2",
        "--large-tokens",
        "16",
        "--large-repeats",
        "1",
        "--large-learner-sequences",
        "0",
    ],
}
# `all` runs every part back to back: fewer steps keep the whole table's run short
DEFAULTS = {"polychromic": ["--steps", "12"]}


def run_all(parts: list[str], smoke: bool) -> dict[str, Any]:
    """Each part in its own interpreter (``polyray bench <part>``: a clean process for Ray and an
    in-process engine), then the summary table."""
    import subprocess

    results = {}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-all-") as tmp:
        for part in parts:
            console.rule(part)
            json_path = Path(tmp) / f"{part}.json"
            extra = SMOKE[part] if smoke else DEFAULTS.get(part, [])
            cmd = [sys.executable, "-m", "polyray.cli", "bench", part, *extra, "--json", str(json_path)]
            subprocess.run(cmd, check=True)
            results[part] = json.loads(json_path.read_text())
    print_summary(results)
    return results
