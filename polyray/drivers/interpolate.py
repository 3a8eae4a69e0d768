"""``polyray interpolate RUN``: the SFT ↔ GRPO adapter-interpolation curve, or a grid of adapter mixes, chosen
on validation, read on test.

No training. For each α of the grid, the adapter of W0 + (1 − α)·ΔW_from + α·ΔW_to
(:func:`polyray.models.interpolate.interpolate_adapters`, WiSE-FT, arXiv 2504.10478; docs/algorithms.md
§8) is written under ``<out>/adapters/a<α>/``; ``from`` defaults to the adapter the run started from
(its ``init_adapter``: an experiment branch's SFT adapter) or else the phase before ``to``, ``to`` to
the run's last phase. α outside [0, 1] (down to −1, up to 2) extrapolates past an endpoint. With
``--other`` (a third adapter, e.g. another arm grown from the same SFT adapter) each point is a pair
(α, b) of the α grid crossed with ``--other-coefs``, the adapter of W0 + α·ΔW_to + b·ΔW_other
(:func:`polyray.models.interpolate.mix_adapters`), under ``<out>/adapters/a<α>_b<b>/``: no ``from`` term,
every ΔW being its adapter's whole delta from W0 (the SFT adapter as ``other`` gives the curve at b = 1 − α).
Then polyray's evaluation job (:func:`polyray.drivers.evaluate.run_eval`, the same sampling, pass@k and
diversity as ``polyray eval``) runs twice with the run's model, rollout, task and eval settings:

1. on the task's **validation** split (``<out>/val/``): the point is chosen there
   (:func:`choose_alpha`, by :func:`polyray.drivers.selection.best_keeping`: the best val pass@K among the
   points whose val pass@1 is within ``tolerance`` of the 'to' adapter's, α = 1 (b = 0), always evaluated);
2. on the **test** split once (``<out>/test/``), every point in one job, for the table; each is
   compared with the 'to' adapter over the test prompts (paired, Holm), nothing is chosen there.

With ``validation_only`` (``--validation-only``, for a first stage that must not see test) step 2 is not
run: no test job is built and ``<out>/test/`` is not written; the point is still chosen on validation.

``<out>/interpolation.json``: the grid, the adapters, the rule, the chosen point with ``selected_on:
validation``, ``validation_only``, and per point its coefficients, validation and test pass@k and
diversity (test null with ``validation_only``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from polyray.config import RunConfig
from polyray.config.eval import EVAL_TASK_CONFIGS
from polyray.config.rollout import MaxLoraRank
from polyray.drivers.selection import SELECTED_ON, best_keeping
from polyray.io import ConfigError, console, load_yaml_model
from polyray.models.interpolate import (
    alpha_label,
    check_alphas,
    check_other_coefs,
    interpolate_adapters,
    interpolated_rank,
    mix_adapters,
)
from polyray.tasks import diversities_for

# the 'to' adapter: the pass@1 the selection must keep
REFERENCE = 1.0
# the same adapter among the mixes (α, b) with --other
MIX_REFERENCE = (1.0, 0.0)
# b's grid when --other comes without --other-coefs
OTHER_COEFS = (0.0, 0.5, 1.0)
# α, or (α, b) with --other
Point = float | tuple[float, float]


def point_label(point: Point) -> str:
    """The point's name: its adapter's directory under ``adapters/`` and its model in the evaluation job."""
    return alpha_label(*point) if isinstance(point, tuple) else alpha_label(point)


def coefficients(point: Point) -> dict[str, float]:
    """Each adapter's weight on its delta at ``point``: {from: 1 − α, to: α}, or {to: α, other: b}."""
    return {"to": point[0], "other": point[1]} if isinstance(point, tuple) else {"from": 1.0 - point, "to": point}


def reference_of(points: Sequence[Point]) -> Point:
    """The 'to' adapter's point in this grid's form."""
    return MIX_REFERENCE if isinstance(next(iter(points)), tuple) else REFERENCE


def _json_point(point: Point) -> float | list[float]:
    return list(point) if isinstance(point, tuple) else point


def _point(value: Any) -> Point:
    return tuple(value) if isinstance(value, list) else value  # type: ignore[return-value]


def _row_point(row: dict[str, Any]) -> Point:
    return (row["alpha"], row["b"]) if "b" in row else row["alpha"]


def check_grid(alphas: Sequence[float], other_coefs: Sequence[float] | None = None) -> list[Point]:
    """The points, in order, the 'to' adapter's added: the α grid, or with ``other_coefs`` every (α, b);
    a ConfigError naming the option of a value out of range or repeated."""
    try:
        grid = check_alphas(alphas)
        coefs = None if other_coefs is None else check_other_coefs(other_coefs)
    except ValueError as exc:
        raise ConfigError(f"--{exc}") from None
    points: list[Point] = list(grid) if coefs is None else [(a, b) for a in grid for b in coefs]
    if reference_of(points) not in points:
        # the 'to' adapter's pass@1 is what the choice keeps
        points.append(reference_of(points))
    return points


def mix_request(from_: str | None, other: str | None, other_coefs: Sequence[float] | None) -> Sequence[float] | None:
    """b's grid with ``--other`` (default :data:`OTHER_COEFS`), None without; a ConfigError for options that
    do not go together."""
    if other is None:
        if other_coefs is not None:
            raise ConfigError("--other-coefs: give --other, the adapter whose delta b weighs")
        return None
    if from_ is not None:
        raise ConfigError(
            "--from: not used with --other (the mix W0 + α·ΔW_to + b·ΔW_other has no 'from' term;"
            " give the SFT adapter as --other to mix with it)"
        )
    return OTHER_COEFS if other_coefs is None else other_coefs


def _run_adapters(run_dir: Path) -> dict[str, Path]:
    from polyray.drivers.evaluate.models import resolve_adapter_dirs

    try:
        return dict(resolve_adapter_dirs(run_dir))
    except ValueError as exc:
        raise ConfigError(f"RUN: {exc}") from None


def _to_phase(phases: dict[str, Path], to: str | None) -> str:
    to_name = to or list(phases)[-1]
    if to_name not in phases:
        raise ConfigError(f"--to: the run has no adapter for phase {to_name!r} (phases: {list(phases)})")
    return to_name


def _adapter(phases: dict[str, Path], value: str, option: str) -> Path:
    """A phase of the run or an adapter directory (a run directory holding exactly one)."""
    from polyray.drivers.evaluate.models import resolve_adapter_dirs

    if value in phases:
        return phases[value]
    try:
        found = resolve_adapter_dirs(value)
    except ValueError as exc:
        raise ConfigError(f"{option}: {value!r} is not a phase of the run ({list(phases)}) and {exc}") from None
    if len(found) != 1:
        raise ConfigError(f"{option}: {value} holds {len(found)} adapters; name one adapter directory")
    return found[0][1]


def resolve_endpoints(run_dir: Path, cfg: RunConfig, from_: str | None, to: str | None) -> tuple[Path, Path]:
    """(from adapter dir, to adapter dir): phases of ``run_dir`` or adapter/run directories; errors name the option."""
    phases = _run_adapters(run_dir)
    names = list(phases)
    to_name = _to_phase(phases, to)
    if from_ is not None:
        start = _adapter(phases, from_, "--from")
    elif cfg.init_adapter:
        start = _adapter(phases, cfg.init_adapter, "init_adapter (the run's starting adapter)")
    elif names.index(to_name) > 0:
        start = phases[names[names.index(to_name) - 1]]
    else:
        raise ConfigError(f"--from: the run started from no adapter and {to_name!r} is its first phase: name one")
    if start == phases[to_name]:
        raise ConfigError("--from and --to are the same adapter")
    return start, phases[to_name]


def resolve_mix(run_dir: Path, to: str | None, other: str) -> tuple[Path, Path]:
    """(to adapter dir, other adapter dir) of a mix, each resolved like ``--to`` and ``--from``."""
    phases = _run_adapters(run_dir)
    end = phases[_to_phase(phases, to)]
    mate = _adapter(phases, other, "--other")
    if mate == end:
        raise ConfigError("--other and --to are the same adapter")
    return end, mate


def lora_rank_slot(rank: int) -> int:
    """The smallest LoRA rank vLLM reserves for that holds ``rank``."""
    fits = [r for r in get_args(MaxLoraRank) if r >= rank]
    if not fits:
        raise ConfigError(
            f"the interpolated adapters' rank {rank} exceeds vLLM's largest ({max(get_args(MaxLoraRank))})"
        )
    return min(fits)


def eval_job(
    cfg: RunConfig,
    adapters: dict[Point, Path],
    rank: int,
    split: str,
    n_prompts: int | None,
    n_samples: int | None,
    name: str,
):
    """The evaluation job of every point's adapter (of LoRA rank ``rank``) on ``split``, with the run's model, rollout,
    task and eval settings; vLLM's max_lora_rank raised to hold ``rank``."""
    from polyray.drivers.evaluate import EvalJobConfig

    n = n_samples or cfg.eval.n_samples
    # fewer samples: pass@n the largest
    ks = sorted({k for k in cfg.eval.ks if k <= n} | {min(n, max(cfg.eval.ks))})
    task = cfg.task.model_dump()
    default_prompts = task.get(f"n_{split}")
    entry = EVAL_TASK_CONFIGS[cfg.task.type](
        **task, split=split, **({"n_prompts": n_prompts or default_prompts} if (n_prompts or default_prompts) else {})
    )
    rank = max(cfg.rollout.max_lora_rank, lora_rank_slot(rank))
    reference = point_label(reference_of(adapters))
    labels = [point_label(p) for p in adapters]
    return EvalJobConfig(
        name=name,
        seed=cfg.seed,
        model=cfg.model,
        rollout=cfg.rollout.model_copy(update={"max_lora_rank": rank}),
        cluster=cfg.cluster,
        tasks=[entry],
        n_samples=n,
        ks=ks,
        sampling=cfg.eval.sampling,
        diversity=diversities_for(cfg.eval.diversity, cfg.task.type),
        models=[{"name": label, "kind": "adapter", "path": str(p)} for label, p in zip(labels, adapters.values())],
        compare=[(label, reference) for label in labels if label != reference] if split == "test" else [],
        lora=[],
    )


def _metrics(results: dict[str, Any], label: str, ks: Sequence[int]) -> dict[str, float]:
    record = results["models"][label]
    out = {f"pass@{k}": record[f"pass@{k}"]["mean"] for k in ks}
    out.update(
        {key: (v["mean"] if isinstance(v, dict) else v) for key, v in record.items() if key.startswith("diversity/")}
    )
    return out


def _distance(point: Point, reference: Point) -> tuple[float, ...]:
    """How far ``point`` is from ``reference`` (L1 over the coefficients), then its coefficients: the tie order."""
    p = point if isinstance(point, tuple) else (point,)
    r = reference if isinstance(reference, tuple) else (reference,)
    return (sum(abs(x - y) for x, y in zip(p, r)), *p)


def choose_alpha(
    val_metrics: dict[Point, dict[str, float]], ks: Sequence[int], tolerance: float, reference: Point = REFERENCE
) -> Point:
    """The point to deploy, from validation metrics: the best pass@K (largest k) among the points whose pass@1
    (else pass@ at the smallest k) is at least ``reference``'s (the 'to' adapter) minus ``tolerance``; ties go
    to the point nearest the reference, then to the smaller coefficients."""
    keep = "pass@1" if 1 in ks else f"pass@{min(ks)}"
    # best_keeping's ties go to the first
    nearest_first = sorted(val_metrics, key=lambda p: _distance(p, reference))
    return best_keeping(
        {p: val_metrics[p][f"pass@{max(ks)}"] for p in nearest_first},
        {p: val_metrics[p][keep] for p in nearest_first},
        reference,
        tolerance,
    )


def _check_request(
    run_dir: Path, alphas: Sequence[float], tolerance: float, other_coefs: Sequence[float] | None = None
) -> tuple[RunConfig, list[Point]]:
    """The run's resolved config and the grid (:func:`check_grid`), or a ConfigError naming the bad input."""
    points = check_grid(alphas, other_coefs)
    if tolerance < 0:
        raise ConfigError(f"--tolerance: must be >= 0, got {tolerance}")
    resolved = run_dir / "config.resolved.yaml"
    if not resolved.is_file():
        raise ConfigError(f"RUN: {run_dir} has no config.resolved.yaml (not a polyray run directory)")
    return load_yaml_model(resolved, [], RunConfig), points


def _check_validation_only(validation_only: bool, test_prompts: int | None) -> None:
    if validation_only and test_prompts is not None:
        raise ConfigError("--test-prompts: not used with --validation-only (the test set is not read)")


def run_interpolation(
    run_dir: str | Path,
    alphas: Sequence[float],
    from_: str | None = None,
    to: str | None = None,
    output_dir: str | Path | None = None,
    tolerance: float = 0.01,
    val_prompts: int | None = None,
    test_prompts: int | None = None,
    n_samples: int | None = None,
    other: str | None = None,
    other_coefs: Sequence[float] | None = None,
    validation_only: bool = False,
) -> dict[str, Any]:
    """Write every point's adapter, evaluate them on validation, choose there, evaluate on test once; see the
    module doc. ``other``/``other_coefs``: the mixes W0 + α·ΔW_to + b·ΔW_other instead of the α curve.
    ``validation_only``: no test evaluation at all (each point's ``test`` null, ``test_stats`` empty)."""
    from polyray.drivers.evaluate import run_eval
    from polyray.models.source import prepare_model_dir

    _check_validation_only(validation_only, test_prompts)
    run_dir = Path(run_dir).resolve()
    coefs = mix_request(from_, other, other_coefs)
    cfg, points = _check_request(run_dir, alphas, tolerance, coefs)
    reference = reference_of(points)
    out = Path(output_dir or run_dir / "interpolate").resolve()
    start: Path | None = None
    mate: Path | None = None
    if other is None:
        start, end = resolve_endpoints(run_dir, cfg, from_, to)
        sources, formula = (start, end), "W0 + (1 - alpha) dW_from + alpha dW_to"
        console.print(f"interpolating {start} (α = 0) -> {end} (α = 1) at α = {points}")
    else:
        end, mate = resolve_mix(run_dir, to, other)
        sources, formula = (end, mate), "W0 + alpha dW_to + b dW_other"
        console.print(f"mixing {end} (α) and {mate} (b) at (α, b) = {points}")
    rank = interpolated_rank(*sources)
    model_dir = prepare_model_dir(cfg.model, cfg.task)
    with console.status(f"writing the adapters (rank {rank})"):
        if mate is None:
            adapters: dict[Point, Path] = dict(
                interpolate_adapters(model_dir, sources[0], end, points, out / "adapters", cfg.model.dtype)
            )
        else:
            adapters = dict(mix_adapters(model_dir, end, mate, points, out / "adapters", cfg.model.dtype))
    val_job = eval_job(cfg, adapters, rank, "val", val_prompts, n_samples, f"{cfg.name}-interpolate-val")
    val = run_eval(val_job, out / "val")
    ks, top = val_job.ks, max(val_job.ks)
    val_metrics = {p: _metrics(val, point_label(p), ks) for p in points}
    chosen = choose_alpha(val_metrics, ks, tolerance, reference)
    test_job, test, test_metrics = None, {}, {}
    # a first stage that must not see test builds no test job at all
    if not validation_only:
        test_job = eval_job(cfg, adapters, rank, "test", test_prompts, n_samples, f"{cfg.name}-interpolate-test")
        # read once, for the table: nothing is chosen on it
        test = run_eval(test_job, out / "test")
        test_metrics = {p: _metrics(test, point_label(p), ks) for p in points}
    where = "alpha = 1" if mate is None else "(alpha, b) = (1, 0)"
    summary = {
        "run": str(run_dir),
        "from": None if start is None else str(start),
        "to": str(end),
        "other": None if mate is None else str(mate),
        # the curve's grid: 1 added
        "alphas": list(points) if mate is None else check_alphas(alphas),
        "other_coefs": None if coefs is None else [float(b) for b in coefs],
        "points": [_json_point(p) for p in points],
        "model": f"{formula} (peft cat combination, exact)",
        "validation_only": validation_only,
        "selection": {
            "rule": f"max val pass@{top} among points with val pass@{1 if 1 in ks else min(ks)} >= that of {where}"
            f" minus {tolerance}; ties to the point nearest {where}",
            "chosen": _json_point(chosen),
            "chosen_label": point_label(chosen),
            "selected_on": SELECTED_ON,
            "tolerance": tolerance,
            "among": {point_label(p): m for p, m in val_metrics.items()},
        },
        "curve": [
            {
                "alpha": p[0] if isinstance(p, tuple) else p,
                **({"b": p[1]} if isinstance(p, tuple) else {}),
                "label": point_label(p),
                "coefficients": coefficients(p),
                "adapter": str(adapters[p]),
                "val": val_metrics[p],
                # None with validation_only
                "test": test_metrics.get(p),
            }
            for p in points
        ],
        "test_stats": test.get("stats", {}),
        "splits": {
            "val": {"n_prompts": val_job.tasks[0].n_prompts},
            "test": None if test_job is None else {"n_prompts": test_job.tasks[0].n_prompts},
        },
    }
    (out / "interpolation.json").write_text(json.dumps(summary, indent=2))
    show_curve(summary, ks, out)
    return summary


def show_curve(summary: dict[str, Any], ks: Sequence[int], out: Path) -> None:
    from rich.table import Table

    chosen = _point(summary["selection"]["chosen"])
    mix = isinstance(chosen, tuple)
    table = Table(title=f"adapter {'mixes' if mix else 'interpolation'} (* = chosen on validation)")
    table.add_column("α", justify="right")
    if mix:
        table.add_column("b", justify="right")
    splits = ("val",) if summary.get("validation_only") else ("val", "test")
    for split in splits:
        for k in ks:
            table.add_column(f"{split} pass@{k}", justify="right")
    for row in summary["curve"]:
        mark = " *" if _row_point(row) == chosen else ""
        point = [f"{row['alpha']:g}", f"{row['b']:g}"] if mix else [f"{row['alpha']:g}"]
        point[-1] += mark
        table.add_row(*point, *(f"{row[s][f'pass@{k}']:.3f}" for s in splits for k in ks))
    console.print(table)
    name = f"(α, b) = ({chosen[0]:g}, {chosen[1]:g})" if mix else f"α = {chosen:g}"
    console.print(f"{name} chosen on validation: {summary['selection']['rule']}")
    console.print(f"written to {out} (interpolation.json, adapters/, {', '.join(f'{s}/' for s in splits)})")


def _labels(summary: dict[str, Any]) -> list[str]:
    return sorted(row.get("label") or point_label(_row_point(row)) for row in summary["curve"])


def interpolate_seeds(
    runs: Sequence[str | Path],
    alphas: Sequence[float],
    summary_path: str | Path | None = None,
    tolerance: float = 0.01,
    validation_only: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """:func:`run_interpolation` on each run (one per seed), then :func:`summarize_seeds` on test, or with
    ``validation_only`` on validation, written to ``summary_path`` (default ``interpolation_seeds.json`` in the
    runs' common directory) and printed.

    A run whose ``interpolation.json`` has this grid and tolerance is read back, not run again, when it was
    run in the same mode or is a full run and validation only is asked for (its validation numbers and choice
    are the same; only they are read); a validation-only file, which has no test, is never read back for a
    full request: that run is interpolated again."""
    import os

    _check_validation_only(validation_only, options.get("test_prompts"))
    coefs = mix_request(options.get("from_"), options.get("other"), options.get("other_coefs"))
    wanted = sorted(point_label(p) for p in check_grid(alphas, coefs))
    done = []
    for run in map(Path, runs):
        previous = run / "interpolate" / "interpolation.json"
        found = json.loads(previous.read_text()) if previous.is_file() else None
        if (
            found
            and _labels(found) == wanted
            and found["selection"]["tolerance"] == tolerance
            and (validation_only or not found.get("validation_only", False))
        ):
            console.print(f"{run}: read back {previous}")
            done.append(found)
        else:
            done.append(run_interpolation(run, alphas, tolerance=tolerance, validation_only=validation_only, **options))
    result = summarize_seeds(done, split="val" if validation_only else "test")
    out = Path(summary_path or Path(os.path.commonpath([Path(r).resolve() for r in runs])) / "interpolation_seeds.json")
    out.write_text(json.dumps(result, indent=2))
    show_seeds(result, out)
    return result


def _common_grid(summaries: Sequence[dict[str, Any]], split: str = "test") -> tuple[list[Point], list[int]]:
    """The grid and the ks every seed's summary shares (on ``split``), or a ConfigError saying why they cannot
    be pooled."""
    if len(summaries) < 2:
        raise ConfigError(f"RUN: a summary over seeds needs 2 or more runs, got {len(summaries)}")
    if split not in ("val", "test"):
        raise ValueError(f"split: 'val' or 'test', got {split!r}")
    if any(row.get(split) is None for s in summaries for row in s["curve"]):
        raise ConfigError(f"RUN: a run was not evaluated on {split} (validation only): its curve has no {split}")
    grids = {tuple(_point(p) for p in s.get("points", s["alphas"])) for s in summaries}
    if len(grids) != 1:
        raise ConfigError(
            f"RUN: the runs were interpolated at different grids {sorted(map(str, grids))}: use one --alphas"
            " (and --other-coefs)"
        )
    grid = list(next(iter(grids)))
    if _baseline(grid)[0] not in grid:
        raise ConfigError(
            "--alphas, --other-coefs: a summary over seeds compares with (α, b) = (0, 1) ('other' alone):"
            " include α = 0 and b = 1"
            if isinstance(grid[0], tuple)
            else "--alphas: a summary over seeds compares with α = 0 ('from'): include 0"
        )
    return grid, sorted(int(k.split("@")[1]) for k in summaries[0]["curve"][0][split] if k.startswith("pass@"))


def _baseline(grid: Sequence[Point]) -> tuple[Point, str]:
    """The point the largest pass@k is tested against over seeds, and its adapter's name: α = 0 ('from'),
    or with --other (α, b) = (0, 1) ('other' alone; the SFT adapter when it is the other)."""
    return ((0.0, 1.0), "other") if isinstance(grid[0], tuple) else (0.0, "from")


def summarize_seeds(summaries: Sequence[dict[str, Any]], margin: float = 0.01, split: str = "test") -> dict[str, Any]:
    """The curve over seeds: one :func:`run_interpolation` summary per seed (the same grid), on ``split``
    (``test``; ``val`` for a validation-only stage), recorded as ``split`` in the result.

    Per point, each pass@k's mean and 95% t-interval over seeds, conditional on that split's prompts; pass@1
    against the 'to' adapter (α = 1, b = 0; e.g. GRPO) by paired TOST at ±``margin`` (docs/algorithms.md §5)
    and the largest pass@k against the baseline (:func:`_baseline`: α = 0, 'from', e.g. SFT; with --other,
    'other' alone) by paired t. Then the point each seed chose on validation, read on ``split`` as one model
    ("chosen"), with the same two tests and its largest pass@k against the 'to' adapter, Holm across those
    three (on ``val`` the chosen point is read on the prompts it was chosen on: optimistic). Pairing: every
    point of a seed is evaluated in one job, on the same prompts."""
    import numpy as np

    from polyray.eval.stats import equivalence_tost, holm, interval_over_seeds, paired_t

    grid, ks = _common_grid(summaries, split)
    top = f"pass@{max(ks)}"
    reference = reference_of(grid)
    baseline, base_name = _baseline(grid)

    def values(points: Sequence[Point], metric: str) -> np.ndarray:
        return np.array(
            [next(r for r in s["curve"] if _row_point(r) == p)[split][metric] for s, p in zip(summaries, points)]
        )

    def at(point: Point, metric: str) -> np.ndarray:
        return values([point] * len(summaries), metric)

    def equivalent_to(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        return {"difference": float((a - b).mean()), **equivalence_tost(a, b, margin, paired=True).to_json()}

    def above(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
        return {"difference": float((a - b).mean()), **paired_t(a, b).to_json()}

    curve = []
    for point in grid:
        row: dict[str, Any] = {
            "alpha": point[0] if isinstance(point, tuple) else point,
            **({"b": point[1]} if isinstance(point, tuple) else {}),
            "label": point_label(point),
            **{f"pass@{k}": interval_over_seeds(at(point, f"pass@{k}")) for k in ks},
        }
        if point != reference:
            row["pass@1_vs_to"] = equivalent_to(at(point, "pass@1"), at(reference, "pass@1"))
        if point != baseline:
            row[f"{top}_vs_{base_name}"] = above(at(point, top), at(baseline, top))
        curve.append(row)
    chosen = [_point(s["selection"]["chosen"]) for s in summaries]
    chosen_tests = {
        "pass@1_vs_to": equivalent_to(values(chosen, "pass@1"), at(reference, "pass@1")),
        f"{top}_vs_{base_name}": above(values(chosen, top), at(baseline, top)),
        f"{top}_vs_to": above(values(chosen, top), at(reference, top)),
    }
    holm_p = holm([t["pvalue"] if t["pvalue"] is not None else 1.0 for t in chosen_tests.values()]).adjusted
    for t, adjusted in zip(chosen_tests.values(), holm_p):
        t["pvalue_holm"] = adjusted
    return {
        "runs": [s["run"] for s in summaries],
        # each α, or [α, b] with --other
        "alphas": [_json_point(p) for p in grid],
        "ks": ks,
        "n_seeds": len(summaries),
        "split": split,
        "conditional_on": f"{split} prompts",
        "margin": margin,
        "reference": point_label(reference),
        "baseline": {"name": base_name, "label": point_label(baseline)},
        "curve": curve,
        "chosen": {
            "alphas": [_json_point(p) for p in chosen],
            "labels": [point_label(p) for p in chosen],
            "selected_on": SELECTED_ON,
            "rule": summaries[0]["selection"]["rule"],
            **{f"pass@{k}": interval_over_seeds(values(chosen, f"pass@{k}")) for k in ks},
            "tests": chosen_tests,
        },
    }


def show_seeds(summary: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    top = f"pass@{max(summary['ks'])}"
    base = summary.get("baseline", {"name": "from", "label": "a0"})

    def iv(v):
        return f"{v['mean']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"

    def diff(t):
        return (
            f"{t['difference']:+.3f} [{t['low']:+.3f}, {t['high']:+.3f}] p {t['pvalue']:.3g}"
            if t.get("pvalue") is not None
            else "–"
        )

    split = summary.get("split", "test")
    table = Table(
        title=f"adapter interpolation over {summary['n_seeds']} seeds ({split}; 95% t-interval, conditional on"
        f" the {split} prompts)"
    )
    to = summary.get("reference", "a1")
    for column in ("point", "pass@1", top, f"pass@1 − {to} (90%, TOST)", f"{top} − {base['label']} (95%, paired t)"):
        table.add_column(column, justify="right")
    rows = [(r.get("label") or point_label(_row_point(r)), r) for r in summary["curve"]]
    rows.append(
        (
            f"chosen {summary['chosen'].get('labels', summary['chosen']['alphas'])}",
            {**summary["chosen"], **summary["chosen"]["tests"]},
        )
    )
    vs_base = f"{top}_vs_{base['name']}"
    for label, r in rows:
        table.add_row(label, iv(r["pass@1"]), iv(r[top]), diff(r.get("pass@1_vs_to", {})), diff(r.get(vs_base, {})))
    console.print(table)
    t = summary["chosen"]["tests"]
    holm = ", ".join(f"{name} {v['pvalue_holm']:.3g}" for name, v in t.items())
    console.print(
        f"chosen on validation, read on {split}: {top} − {to} {diff(t[top + '_vs_to'])}; Holm across its 3 tests:"
        f" {holm}"
    )
    console.print(f"written to {out}")
