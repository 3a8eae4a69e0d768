"""``polyray bench polychromic``: polychromic SFT step time against standard SFT's and against its floor (SFT on
as many sequences), and their table."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from polyray.drivers.bench.common import _step_stats, console, kept_ranks

# an override -> what it adds to a polychromic variant's label
VARIANT_TAGS = {
    "phases.0.async_rollouts=true": ", async",
    "learner.sync_check_every=1": ", canary every step",
    "learner.publish_behind_step=false": ", publish waits",
    "phases.0.embedding_dtype=float32": ", float32 encoder",
}


def bench_polychromic(
    steps: int,
    config: str,
    diversity: list[str],
    warmup: int = 3,
    with_async: bool = True,
    with_canary: bool = True,
    with_floor: bool = True,
) -> dict[str, dict[str, float]]:
    """Run SFT (and its floor, SFT on as many sequences as a polychromic step, when ``with_floor``), then
    polychromic SFT (per diversity function, with rollouts one step ahead when ``with_async``, with the sync
    canary on every step when ``with_canary``) for ``steps`` steps each from a fresh adapter,
    on one pool of 1 rollout worker + 1 learner worker (a core each here, as in :func:`.grpo.bench_grpo`: the
    floor hides the sampling behind the update, which needs a core for the sampler)."""
    from polyray.cluster import init_ray, needed_cpus
    from polyray.config import load_config
    from polyray.learner.logs import StepLogs
    from polyray.learner.trainer import run_phase
    from polyray.models.source import prepare_model_dir
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    phases = [
        f"phases.0.steps={steps}",
        "phases.0.checkpoint_every=1000",
        "learner.num_workers=1",
        "rollout.num_workers=1",
    ]
    sft = load_config(config, phases)
    model_dir = prepare_model_dir(sft.model, sft.task)
    init_ray(sft.cluster, needed_cpus(sft))
    results = {}
    with tempfile.TemporaryDirectory(prefix="polyray-bench-") as tmp:
        out = Path(tmp)
        pool = RolloutPool.launch(
            str(model_dir), sft.rollout, sft.engine_dtype, store=open_store(out / "adapter_store")
        )
        # one step-log actor and one set of kept ranks for every fit
        logs = StepLogs.on_driver_node(out)
        where = {"model_dir": str(model_dir), "output_dir": out, "pool": pool, "init_adapter": None, "logs": logs}

        def fit(run, name: str, label: str, version: int, what: str | None = None) -> int:
            """Run phase ``name`` (shown as ``what``, default ``label``) for ``steps`` steps from adapter ``version``,
            its step statistics into ``results[label]``; the version after it."""
            with console.status(f"{what or label}, {steps} steps"):
                trained = run_phase(run, 0, start_version=version, group=group, **where)
            version = trained["version"]
            results[label] = _step_stats(out / "metrics.jsonl", name, warmup)
            return version

        try:
            with kept_ranks(sft) as group:
                version = _fit_sft(config, phases, with_floor, fit)
                variants = polychromic_variants(diversity, with_async, with_canary)
                _fit_polychromic(config, phases, variants, fit=fit, version=version)
        finally:
            logs.close()
            pool.shutdown()
    return results


def _fit_sft(config: str, phases: list[str], with_floor: bool, fit) -> int:
    """Standard SFT, then (``with_floor``) its floor; the adapter version after them."""
    from polyray.config import load_config

    version = fit(load_config(config, phases), "sft", "sft", version=0, what="standard SFT")
    # the floor: an SFT step through as many sequences as a polychromic step trains on (references +
    # samples), its sampling hidden behind the update (rollouts one step ahead)
    poly0 = load_config(config, [*phases, "phases.0.type=polychromic_sft"]).phases[0]
    same = poly0.batch_size + poly0.prompts_per_step * poly0.n_samples
    if with_floor:
        big = load_config(config, [*phases, f"phases.0.batch_size={same}", "phases.0.name=sft_same"])
        what = f"standard SFT on {same} sequences (references + samples)"
        version = fit(big, "sft_same", floor_label(same), version=version, what=what)
    return version


def _fit_polychromic(config: str, phases: list[str], variants: list[tuple[str, list[str]]], fit, version: int) -> int:
    """Polychromic SFT, one fit per variant (diversity function, overrides) from adapter ``version``; the version
    after them."""
    from polyray.config import load_config

    for i, (name, extra) in enumerate(variants):
        poly = load_config(
            config,
            [
                *phases,
                "phases.0.type=polychromic_sft",
                f"phases.0.name=poly{i}",
                f"phases.0.diversity={name}",
                *extra,
            ],
        )
        version = fit(poly, f"poly{i}", variant_label(name, extra), version)
    return version


def polychromic_variants(diversity: list[str], with_async: bool, with_canary: bool) -> list[tuple[str, list[str]]]:
    """(diversity function, overrides) of each polychromic fit: every function, then the first one ahead
    (``with_async``: also with each publish waited for, and with a float32 encoder when it embeds) and
    with the canary on every step (``with_canary``)."""
    from polyray.diversity import EMBEDDING_DIVERSITY_FUNCTIONS

    variants = [(name, []) for name in diversity]
    if with_async:
        ahead = ["phases.0.async_rollouts=true", "phases.0.max_lag=1"]
        variants.append((diversity[0], ahead))
        variants.append((diversity[0], [*ahead, "learner.publish_behind_step=false"]))
        if diversity[0] in EMBEDDING_DIVERSITY_FUNCTIONS:
            variants.append((diversity[0], [*ahead, "phases.0.embedding_dtype=float32"]))
    # the sync canary on every publish (default: every 50th): its cost per check
    if with_canary:
        variants.append((diversity[0], ["learner.sync_check_every=1"]))
    return variants


def variant_label(name: str, extra: list[str]) -> str:
    return f"polychromic_sft[{name}{''.join(VARIANT_TAGS.get(e, '') for e in extra)}]"


def floor_label(sequences: int) -> str:
    return f"sft[{sequences} sequences: references + samples]"


def polychromic_floor(results: dict[str, dict[str, float]], variant: str = ", async]") -> tuple[str, float] | None:
    """(variant, its step / the floor's): the polychromic variant whose name ends with ``variant`` (default:
    one step ahead; else the first) against the SFT step on as many sequences."""
    floor = next((k for k in results if k.startswith("sft[")), None)
    poly = [k for k in results if k.startswith("polychromic_sft[")]
    if floor is None or not poly:
        return None
    name = next((k for k in poly if k.endswith(variant)), poly[0])
    return name, results[name]["step_s"] / results[floor]["step_s"]


def polychromic_floors(results: dict[str, dict[str, float]]) -> list[tuple[str, float]]:
    """:func:`polychromic_floor` of the one-step-ahead variant (its encoder's dtype ``auto``) and, when it ran,
    of the one with the float32 encoder."""
    floors = [polychromic_floor(results)]
    if any(k.endswith(", async, float32 encoder]") for k in results):
        floors.append(polychromic_floor(results, ", async, float32 encoder]"))
    return [f for f in floors if f is not None]


def print_polychromic(results: dict[str, dict[str, float]]) -> None:
    base = results["sft"]["step_s"]
    table = Table(
        title="polychromic SFT vs standard SFT, 1 rollout worker + 1 learner worker: median step time after warm-up"
    )
    table.caption = (
        "rollout s = generation the step waits for; canary s = the sync check after publishing;"
        " update s = the rest (forward/backward, optimizer, broadcast)"
    )
    for col in ("phase", "step s", "÷ SFT", "rollout s", "diversity s", "sync s", "canary s", "update s"):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for name, r in results.items():
        parts = [r.get(k, 0.0) for k in ("rollout_s", "diversity_s", "sync_s")]
        canary = r.get("canary_s", 0.0)
        table.add_row(
            escape(name),
            f"{r['step_s']:.3f}",
            f"{r['step_s'] / base:.2f}x",
            *(f"{v:.3f}" for v in parts),
            f"{canary:.3f}" if "canary_s" in r else "–",
            f"{r['step_s'] - sum(parts) - canary:.3f}",
        )
    console.print(table)
    for name, ratio in polychromic_floors(results):
        console.print(f"{escape(name)} / its floor (SFT on as many sequences, sampling hidden): {ratio:.2f}")
