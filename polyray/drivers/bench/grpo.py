"""``polyray bench grpo``: GRPO step time in each mode (synchronous, rollouts one step ahead and its variants),
the ratios of the modes that ran, the floor of one step ahead, and their table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from polyray.drivers.bench.common import _step_stats, console, kept_ranks

GRPO_MODES = (
    "sync",
    "async",
    "async_waits",
    "async_unpacked",
    "async_rollout_reference",
    "async_unmeasured",
    "async_learner_tis",
)
# ratio -> (numerator mode, denominator mode), of the modes' median step times
GRPO_RATIOS = {
    "ratio": ("async", "sync"),
    "publish_behind_vs_waits": ("async", "async_waits"),
    "packed_vs_unpacked": ("async", "async_unpacked"),
    "rollout_reference_vs_learner": ("async_rollout_reference", "async"),
    # the forward under the sampling version's weights, for the mismatch measures / pi_old and tis
    "measured_vs_unmeasured": ("async", "async_unmeasured"),
    "learner_tis_vs_unmeasured": ("async_learner_tis", "async_unmeasured"),
}


def bench_grpo(
    steps: int, config: str, warmup: int = 2, rounds: int = 2, modes: list[str] | None = None
) -> dict[str, Any]:
    """The config's first GRPO phase, ``steps`` steps in each of ``modes`` (default: all of
    :data:`GRPO_MODES`; synchronous, rollouts one step ahead, and one ahead with each publish waited for,
    samples one a row, the KL reference scored by the rollout worker; the last only when the phase has a
    KL term), ``rounds`` times alternating (a slow spell of this shared machine then hits every mode),
    continuing one adapter, on 1 rollout worker + 1 learner worker (a core each here); rewards scored
    in the learner (no reward replica competing for the cores). Medians over the pooled steps, then the
    ratios whose modes ran (:func:`grpo_ratios`)."""
    from polyray.cluster import init_ray, needed_cpus
    from polyray.config import load_config
    from polyray.learner.logs import StepLogs
    from polyray.learner.trainer import run_phase
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    base = load_config(config)
    index = next(i for i, p in enumerate(base.phases) if p.type == "grpo")
    common = [
        "learner.num_workers=1",
        "rollout.num_workers=1",
        "reward.endpoint=false",
        "dynamics.every=0",
        f"phases.{index}.steps={steps}",
        f"phases.{index}.checkpoint_every=1000",
        "learner.sync_check_every=0",
    ]
    variants = grpo_variants(index, bool(base.phases[index].kl_beta), modes)
    sync = load_config(config, common)
    model_dir = prepare_model_dir(sync.model, sync.task)
    init_ray(sync.cluster, needed_cpus(sync))
    results: dict[str, Any] = {"steps": steps, "warmup": warmup, "rounds": rounds, "modes": list(variants)}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-grpo-") as tmp:
        out = Path(tmp)
        pool = RolloutPool.launch(
            str(model_dir), sync.rollout, sync.engine_dtype, store=open_store(out / "adapter_store")
        )
        # one step-log actor and one set of kept ranks for every fit, as `polyray run` holds them
        logs = StepLogs.on_driver_node(out)
        where = {"model_dir": str(model_dir), "output_dir": out, "pool": pool, "init_adapter": None, "logs": logs}
        try:
            version = 0
            with kept_ranks(sync) as group:
                for i in range(rounds):
                    for name, extra in variants.items():
                        run = load_config(config, [*common, *extra, f"phases.{index}.name=grpo_{name}_{i}"])
                        with console.status(f"GRPO {name}, {steps} steps (round {i + 1} of {rounds})"):
                            trained = run_phase(run, index, start_version=version, group=group, **where)
                        version = trained["version"]
            for name in variants:
                results[name] = _step_stats(out / "metrics.jsonl", [f"grpo_{name}_{i}" for i in range(rounds)], warmup)
        finally:
            logs.close()
            pool.shutdown()
    return {**results, **grpo_ratios(results)}


def grpo_variants(index: int, kl: bool, modes: list[str] | None = None) -> dict[str, list[str]]:
    """mode -> the overrides of GRPO phase ``index`` that make it, for each of ``modes`` in the order of
    :data:`GRPO_MODES` (None: all of them; the KL reference's mode only when the phase has a KL term, ``kl``)."""
    from polyray.io import ConfigError

    ahead = [f"phases.{index}.async_rollouts=true", f"phases.{index}.max_lag=1"]
    variants = {
        "sync": [f"phases.{index}.async_rollouts=false", f"phases.{index}.max_lag=0"],
        "async": ahead,
        # each publish waits for the loads
        "async_waits": [*ahead, "learner.publish_behind_step=false"],
        # one sample a row in the update
        "async_unpacked": [*ahead, "learner.pack_samples=false"],
        "async_rollout_reference": [*ahead, f"phases.{index}.kl_reference_logprobs=rollouts"],
        # no engine-mismatch forward
        "async_unmeasured": [*ahead, f"phases.{index}.off_policy.measure_every=0"],
        "async_learner_tis": [
            *ahead,
            f"phases.{index}.off_policy.old_logprobs=learner",
            f"phases.{index}.off_policy.correction=tis",
        ],
    }
    unknown = [m for m in modes or [] if m not in variants]
    if unknown:
        raise ConfigError(f"--modes: unknown mode {unknown[0]!r} (choose from {', '.join(GRPO_MODES)})")
    # no KL term: nothing to score under a reference
    if not kl:
        if modes and "async_rollout_reference" in modes:
            raise ConfigError(f"--modes async_rollout_reference: phases.{index}.kl_beta is 0, no KL reference to score")
        variants.pop("async_rollout_reference")
    return {name: extra for name, extra in variants.items() if not modes or name in modes}


def grpo_ratios(modes: dict[str, Any]) -> dict[str, Any]:
    """The ratios of :data:`GRPO_RATIOS` whose two modes are in ``modes`` (mode -> its step statistics), and,
    when the synchronous mode ran, the floor of one step ahead (:func:`grpo_floor`) and, when that ran too,
    one step ahead against it."""
    out: dict[str, Any] = {
        name: modes[a]["step_s"] / modes[b]["step_s"]
        for name, (a, b) in GRPO_RATIOS.items()
        if a in modes and b in modes
    }
    if "sync" in modes:
        out["floor"] = grpo_floor(modes["sync"])
        if "async" in modes:
            out["async_vs_floor"] = modes["async"]["step_s"] / out["floor"]["floor_s"]
    return out


def grpo_floor(sync: dict[str, float]) -> dict[str, float]:
    """The shortest step rollouts one step ahead can reach, from the synchronous steps of the same run:
    ahead, the generation and its scoring (rollout s + reward s) overlap everything else (advantages,
    update, publish: step s − both), so a step is at least the longer of the two."""
    rollout = sync["rollout_s"] + sync.get("reward_s", 0.0)
    rest = sync["step_s"] - rollout
    return {"rollout_s": rollout, "update_publish_s": rest, "floor_s": max(rollout, rest)}


def print_grpo(results: dict[str, Any]) -> None:
    table = Table(
        title=f"GRPO step, 1 rollout worker + 1 learner worker: median step time after warm-up"
        f" ({results['rounds']} rounds of {results['steps']} steps per mode, alternating)"
    )
    table.caption = (
        "rollout s / reward s = the generation / its scoring the step waits for (ahead: what is left of them);"
        " sync s = publish + load"
    )
    for col in ("mode", "step s", "rollout s", "reward s", "sync s", "rest s"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    labels = {
        "sync": "sync",
        "async": "one step ahead",
        "async_waits": "one ahead, each publish waits for its loads",
        "async_unpacked": "one ahead, one sample a row in the update (learner.pack_samples false)",
        "async_rollout_reference": "one ahead, KL reference scored by the rollout worker",
        "async_unmeasured": "one ahead, engine mismatch not measured (off_policy.measure_every 0)",
        "async_learner_tis": "one ahead, learner pi_old and tis (off_policy)",
    }
    for name, label in labels.items():
        # (a run before the third mode)
        if name not in results:
            continue
        r = results[name]
        waits = [r["rollout_s"], r.get("reward_s", 0.0), r["sync_s"]]
        table.add_row(label, f"{r['step_s']:.3f}", *(f"{w:.3f}" for w in waits), f"{r['step_s'] - sum(waits):.3f}")
    console.print(table)
    if "ratio" in results:
        console.print(f"one step ahead / synchronous: {results['ratio']:.2f}")
    if "publish_behind_vs_waits" in results:
        console.print(
            f"one step ahead, publish behind the step / each publish waiting: {results['publish_behind_vs_waits']:.2f}"
        )
    if "packed_vs_unpacked" in results:
        console.print(
            f"one step ahead, samples packed into shared rows / one sample a row: {results['packed_vs_unpacked']:.2f}"
        )
    if "rollout_reference_vs_learner" in results:
        console.print(
            f"one step ahead, KL reference scored by the rollout worker / by the learner:"
            f" {results['rollout_reference_vs_learner']:.2f}"
        )
    if "measured_vs_unmeasured" in results:
        console.print(
            f"one step ahead, engine mismatch measured every off_policy.measure_every steps / not:"
            f" {results['measured_vs_unmeasured']:.2f}"
        )
    if "learner_tis_vs_unmeasured" in results:
        console.print(
            f"one step ahead, learner pi_old and tis / engine pi_old, not measured:"
            f" {results['learner_tis_vs_unmeasured']:.2f}"
        )
    if "async_vs_floor" in results:
        f = results["floor"]
        console.print(
            f"one step ahead / its floor max(rollout + reward {f['rollout_s']:.3f}, update + publish"
            f" {f['update_publish_s']:.3f}) = {results['async_vs_floor']:.2f}"
        )
