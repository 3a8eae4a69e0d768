"""``polyray experiment``'s results: experiment.json's statistics, its report and its table.

:func:`aggregate` turns the runs' evaluation records into per model means and intervals over seeds
and per comparison tests paired by seed id (docs/algorithms.md §5, :mod:`polyray.eval.stats`), with
the hypotheses' verdicts and the pass@1 x pass@10 Pareto frontier; :func:`report_results` gives the
evaluation report's input and :func:`summary_table` the console table. Nothing here runs anything:
:mod:`polyray.drivers.experiment` runs the experiment and makes its selections first.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polyray.config.experiment import HEADLINE, ExperimentConfig, headline_metrics
from polyray.config.sweep import SELECTED_ON
from polyray.drivers.results import RunResults, read_results
from polyray.drivers.selection import record_on_test

if TYPE_CHECKING:
    from polyray.eval.record import EvalRecord


def _brief(stats: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a :func:`polyray.eval.stats.compare_over_seeds` result, flat and JSON-safe.

    ``ci95`` is the t-interval of the difference (paired: of the mean per-seed difference; unpaired:
    Welch's), conditional on the test prompts; ``<test>_p_holm`` and ``equivalent`` (TOST's Holm p
    < 0.05) are added by :func:`aggregate` once every comparison is known.
    """
    from polyray.eval.stats import finite_or_none as _num

    if not stats:
        return {}
    paired = stats["design"] == "paired"
    t = stats.get("paired_t" if paired else "welch_t") or {}
    keep: dict[str, Any] = {"design": stats["design"], "n_seeds": stats["n"][0]}
    keep.update(conditional_on=stats["conditional_on"], ci95=[_num(t.get("low")), _num(t.get("high"))])
    if paired:
        w = stats["wilcoxon"]
        keep.update(
            {
                "paired_t": _num(t.get("statistic")),
                "paired_t_df": _num(t.get("df")),
                "paired_t_p": _num(t.get("pvalue")),
                "wilcoxon_w": w["statistic"],
                "wilcoxon_p": w["pvalue"],
                "wilcoxon_method": w["method"],
                "wilcoxon_min_p": w["min_pvalue"],
                "cohens_dz": _num(stats.get("cohens_dz")),
            }
        )
        rank = w
    else:
        rank = stats["mann_whitney"]
        keep.update(
            {
                "welch_t": _num(t.get("statistic")),
                "welch_df": _num(t.get("df")),
                "welch_p": _num(t.get("pvalue")),
                "mann_whitney_u": rank["statistic"],
                "mann_whitney_p": rank["pvalue"],
                "mann_whitney_method": rank["method"],
                "cohens_d": _num(stats.get("cohens_d")),
            }
        )
    eq = stats.get("equivalence") or {}
    if eq:
        keep.update(
            {
                "equivalence_margin": eq["margin"],
                "tost_p": _num(eq.get("pvalue")),
                "tost_ci90": [_num(eq.get("low")), _num(eq.get("high"))],
            }
        )
    notes = [n for n in (stats.get("note"), t.get("note"), rank.get("note"), eq.get("note")) if n]
    if notes:
        keep["note"] = "; ".join(dict.fromkeys(notes))
    return keep


def _prompt_level(
    a_phases: dict[int, EvalRecord], b_phases: dict[int, EvalRecord], seeds: list[int], metric: str
) -> dict[str, Any]:
    """Prompt-level view, valid only within a seed (:func:`polyray.eval.stats.compare_within_seeds`)."""
    from polyray.eval.stats import compare_within_seeds

    return compare_within_seeds(
        [
            (
                s,
                a_phases[s].per_prompt_values(metric),
                b_phases[s].per_prompt_values(metric),
                _texts(a_phases[s]),
                _texts(b_phases[s]),
            )
            for s in seeds
        ]
    )


def _texts(phase: EvalRecord) -> list[str | None]:
    return [r.prompt for r in phase.per_prompt or []]


def _load_phases(
    refs: dict[str, str | None], out: Path, ids: list[int], split: str = "test"
) -> dict[str, dict[int, EvalRecord]]:
    """Per reported model label, seed -> its phase's evaluation record on ``split``; a seed whose
    results.json lacks it is absent (every seed, for a selection with nothing chosen)."""

    def record(results: RunResults, phase: str) -> EvalRecord:
        if split == "test":
            return record_on_test(results, phase)
        if results.eval_split != split:
            raise KeyError(f"{phase}: not evaluated on {split}")
        return results.evaluations[phase]

    per_seed: dict[str, dict[int, EvalRecord]] = {}
    for label, ref in refs.items():
        per_seed[label] = {}
        if ref is None:
            continue
        run_name, _, phase = ref.partition("/")
        for seed in ids:
            try:
                results = read_results(out / "runs" / f"{run_name}-s{seed}" / "results.json")
                per_seed[label][seed] = record(results, phase)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return per_seed


# one Holm family per test
HOLM_KEYS = ("paired_t_p", "wilcoxon_p", "tost_p", "welch_p", "mann_whitney_p")


def _model_entry(
    by_seed: dict[int, EvalRecord], ref: str | None, ids: list[int], selection: dict[str, Any] | None
) -> dict[str, Any]:
    """One model's experiment.json entry: per headline metric and diversity the mean and t-interval over
    its seeds (conditional on the test prompts) and the bootstrap over seeds and prompts."""
    from polyray.eval.stats import CONDITIONAL_ON_TEST_PROMPTS, interval_over_seeds_and_prompts, mean_ci

    have = sorted(by_seed)
    entry: dict[str, Any] = {
        "run": ref,
        "n_seeds": len(have),
        "seeds": have,
        "missing_seeds": [s for s in ids if s not in by_seed],
    }
    if selection is not None:
        entry.update(selected_on=SELECTED_ON, selected=selection["chosen"], among=list(selection["among"]))
    if not have:
        return entry
    rows = [by_seed[s].means() for s in have]
    for m in rows[0]:
        if not (HEADLINE.match(m) or m.startswith("diversity/")) or not all(m in r for r in rows):
            continue
        values = [r[m] for r in rows]
        entry[m] = (
            {**mean_ci(values).to_json(), "values": values, "conditional_on": CONDITIONAL_ON_TEST_PROMPTS}
            if len(values) > 1
            else {"mean": values[0], "values": values}
        )
        joint = interval_over_seeds_and_prompts(
            [(s, by_seed[s].per_prompt_values(m), _texts(by_seed[s])) for s in have]
        )
        if joint:
            entry[m]["over_seeds_and_prompts"] = joint
    return entry


def _comparison(
    exp: ExperimentConfig,
    phases: dict[str, dict[int, EvalRecord]],
    means: dict[str, dict[int, dict[str, float]]],
    treat: str,
    ctrl: str,
    ids: list[int],
) -> dict[str, Any]:
    """One comparison's entry: per headline metric the tests over the seeds both models have, paired by
    seed id (Holm comes after, across the experiment), and the within-seed prompt-level view."""
    from polyray.eval.stats import compare_over_seeds

    a_phases, b_phases = phases[treat], phases[ctrl]
    a_means, b_means = means[treat], means[ctrl]
    common = sorted(set(a_phases) & set(b_phases))
    entry: dict[str, Any] = {
        "treatment": treat,
        "control": ctrl,
        "seeds": common,
        "missing_seeds": {lab: [s for s in ids if s not in phases[lab]] for lab in (treat, ctrl)},
        "metrics": {},
    }
    if not common:
        entry["note"] = "no seed has results for both models"
        return entry
    for m in headline_metrics(a_means[common[0]]):
        if not all(m in a_means[s] and m in b_means[s] for s in common):
            continue
        # paired by seed id
        a, b = {s: a_means[s][m] for s in common}, {s: b_means[s][m] for s in common}
        entry["metrics"][m] = {
            "mean_treatment": sum(a.values()) / len(a),
            "mean_control": sum(b.values()) / len(b),
            "difference": sum(a.values()) / len(a) - sum(b.values()) / len(b),
            "over_seeds": _brief(compare_over_seeds(a, b, margin=exp.margin(m))),
            "within_seed": _prompt_level(a_phases, b_phases, common, m),
        }
    return entry


def aggregate(
    exp: ExperimentConfig, out: Path, ids: list[int], selections: dict[str, dict[str, Any]], refs: dict[str, str | None]
) -> dict[str, Any]:
    """experiment.json: per model the mean and t-interval over seeds (conditional on the test prompts)
    and a bootstrap interval over seeds and prompts; per comparison tests paired by seed id over
    the seeds both models have, a TOST equivalence test, Holm-adjusted across the experiment,
    and the within-seed prompt-level view."""
    from polyray.eval.stats import ALPHA, CONDITIONAL_ON_NOTHING, CONDITIONAL_ON_TEST_PROMPTS, CONFIDENCE, holm_families

    phases = _load_phases(refs, out, ids, exp.split)
    models = {
        label: _model_entry(by_seed, refs[label], ids, selections.get(label)) for label, by_seed in phases.items()
    }
    means = {label: {s: r.means() for s, r in by_seed.items()} for label, by_seed in phases.items()}
    comparisons = {
        f"{treat} vs {ctrl}": _comparison(exp, phases, means, treat, ctrl, ids) for treat, ctrl in exp.compare
    }
    # Holm across the experiment: every comparison x metric's over-seeds p, one family per test
    entries = [m["over_seeds"] for c in comparisons.values() for m in c["metrics"].values()]
    holm = holm_families(entries, [k for k in HOLM_KEYS if any(k in e for e in entries)])
    for e in entries:
        # a claim of equivalence over the experiment's family, as a difference is
        if "tost_p" in e:
            e["equivalent"] = None if e["tost_p_holm"] is None else bool(e["tost_p_holm"] < ALPHA)
    summary = {
        "name": exp.name,
        "seeds": len(ids),
        "seed_ids": ids,
        "split": exp.split,
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "hypotheses": hypothesis_verdicts(exp, means),
        "conditional_on": {"over_seeds": CONDITIONAL_ON_TEST_PROMPTS, "over_seeds_and_prompts": CONDITIONAL_ON_NOTHING},
        "holm_family_sizes": holm,
        "models": models,
        "comparisons": comparisons,
        "selections": selections,
    }
    summary["pareto_pass1_pass10"] = pareto_frontier_labels(summary)
    return on_split(summary, exp.split)


ON_VALIDATION_PROMPTS = "validation prompts"


def on_split(data: Any, split: str) -> Any:
    """``data`` with every ``conditional_on`` label that names the test prompts naming the validation
    prompts instead, for an experiment on ``split: val`` (the statistics are the same; what they hold
    fixed is not)."""
    from polyray.eval.stats import CONDITIONAL_ON_TEST_PROMPTS

    if split == "test":
        return data
    if isinstance(data, dict):
        return {k: on_split(v, split) for k, v in data.items()}
    if isinstance(data, list):
        return [on_split(v, split) for v in data]
    return ON_VALIDATION_PROMPTS if data == CONDITIONAL_ON_TEST_PROMPTS else data


def split_words(summary: dict[str, Any]) -> tuple[str, str]:
    """("test set", "test prompts") or the validation ones: what a table of ``summary`` is on."""
    return ("validation set", "validation prompts") if summary.get("split") == "val" else ("test set", "test prompts")


def hypothesis_verdicts(exp: ExperimentConfig, means: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    """Per declared hypothesis its verdict (:func:`polyray.eval.stats.raised_and_kept`) over the seeds
    both models have; with several, a claim stands only if its Holm-adjusted intersection-union p
    (``pvalue_holm``) is below alpha too."""
    from polyray.eval.stats import ALPHA, holm_families, raised_and_kept

    verdicts: dict[str, Any] = {}
    for name, hyp in exp.hypotheses.items():
        a, b = means.get(hyp.treatment, {}), means.get(hyp.control, {})
        raise_a, raise_b, keep_a, keep_b = (
            {s: row[m] for s, row in by_seed.items() if m in row}
            for by_seed, m in ((a, hyp.raise_metric), (b, hyp.raise_metric), (a, hyp.keep_metric), (b, hyp.keep_metric))
        )
        verdicts[name] = {
            **hyp.model_dump(),
            **raised_and_kept(raise_a, raise_b, keep_a, keep_b, keep_within=hyp.keep_within, min_seeds=hyp.min_seeds),
        }
    if len(verdicts) > 1:
        holm_families(list(verdicts.values()), ["pvalue"])
        for v in verdicts.values():
            if v["verdict"] == "supported" and not (v["pvalue_holm"] is not None and v["pvalue_holm"] < ALPHA):
                v["verdict"] = "not supported"
                v["reasons"].append(f"not after Holm across {len(verdicts)} hypotheses (p {v['pvalue_holm']:.3g})")
    return verdicts


def pareto_frontier_labels(summary: dict[str, Any], x: str = "pass@1", y: str = "pass@10") -> list[str]:
    """Models no other model beats on both mean ``x`` and mean ``y`` (ties do not dominate)."""
    from polyray.eval.analysis import pareto_frontier

    points = [(label, m[x]["mean"], m[y]["mean"]) for label, m in summary["models"].items() if x in m and y in m]
    return [p[0] for p, on in zip(points, pareto_frontier(points)) if on]


def _dynamics_records(
    exp: ExperimentConfig, out: Path, seed: int = 0, refs: dict[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """Seed ``seed``'s diversity dynamics per model, labelled by model; a branch run's records follow
    those of the run it branches from (its steps after that run's), so a recipe reads SFT then GRPO."""
    from polyray.eval.analysis import load_dynamics

    # a root's records are read once, however many runs branch from it
    @functools.cache
    def load(run: str) -> list[dict[str, Any]]:
        path = out / "runs" / f"{run}-s{seed}" / "dynamics.jsonl"
        return load_dynamics(path) if path.is_file() else []

    origins, records = exp.origins(), []
    for label, ref in (exp.models if refs is None else refs).items():
        if ref is None:
            continue
        run, _, phase = ref.partition("/")
        rows = [r for r in load(run) if r["phase"] == phase or phase == "base"]
        if run in origins:
            root, _, root_phase = origins[run].partition("/")
            before = [r for r in load(root) if r["phase"] == root_phase]
            shift = 1 + max((r.get("global_step", r["step"]) for r in before), default=-1)
            rows = [*before, *({**r, "global_step": shift + r.get("global_step", r["step"])} for r in rows)]
        records += [{**r, "run": label} for r in rows]
    return records


def report_results(exp: ExperimentConfig, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """The experiment as the evaluation report's ``results`` (polyray.eval.report): per model mean
    and 95% t-interval over seeds (conditional on the test prompts) of pass@k, USQ and diversity;
    the comparisons' tests over seeds (``seed_comparisons``); the Pareto figure is pass@1 against
    pass@10 (both maximised); the dynamics are seed 0's; ``selection``: what was chosen on validation."""
    from polyray.eval.record import records_from_summaries

    models = records_from_summaries(summary["models"])
    real = list(dict.fromkeys(d for m in models.values() for d in sorted(m.diversity)))
    selections = summary.get("selections") or {}
    refs = {label: m.get("run") for label, m in summary["models"].items()}
    note = "; ".join(f"{label} = {s['chosen']} selected on {s['selected_on']}" for label, s in selections.items())
    return {
        "title": f"polyray experiment: {summary['name']} ({split_words(summary)[0]}: mean and 95% t-interval over"
        f" {summary['seeds']} seeds, conditional on the {split_words(summary)[1]}"
        + (f"; {note}" if note else "")
        + ")",
        "models": models,
        "table": {"diversity": sorted(real)},
        "pareto": {"diversity": "pass@10", "quality_label": "pass@1"},
        "dynamics": _dynamics_records(exp, out, refs=refs),
        "seed_comparisons": summary.get("comparisons") or {},
        "hypotheses": summary.get("hypotheses") or {},
        "selection": [
            {
                "what": label,
                "chosen": s["chosen"] or "none measured",
                "metric": s["metric"],
                "selected_on": s["selected_on"],
                "among": {c: a["mean"] for c, a in s["among"].items()},
            }
            for label, s in selections.items()
        ],
    }


def _p(entry: dict[str, Any], key: str) -> str:
    """'p (Holm p)' for the table."""
    p, adj = entry.get(key), entry.get(f"{key}_holm")
    return "-" if p is None else f"{p:.3g} ({adj:.3g})" if adj is not None else f"{p:.3g}"


def _interval(lo: float | None, hi: float | None) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None and hi is not None else "-"


def summary_table(summary: dict[str, Any]):
    """Per model mean ±95% CI over seeds; below it, per comparison the over-seeds tests (raw p, Holm p),
    TOST equivalence at its margin and the bootstrap interval over seeds and prompts."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [_models_table(summary)]
    selections = summary.get("selections") or {}
    # what the table holds that was chosen, and on which split (a line of its own: no wrap)
    if selections:
        parts.append(
            Text(
                "; ".join(
                    f"{label} = {s['chosen'] or 'none measured'}, selected on {s['selected_on']} by mean {s['metric']} over"
                    f" seeds among {', '.join(s['among'])}"
                    for label, s in selections.items()
                )
            )
        )
    if summary.get("hypotheses"):
        parts.append(_hypotheses_table(summary))
    if summary.get("comparisons"):
        parts.append(_tests_table(summary))
    return Group(*parts)


def _models_table(summary: dict[str, Any]):
    from rich.table import Table

    from polyray.eval.record import metric_label

    models = summary["models"]
    div = sorted({m for v in models.values() for m in v if m.startswith("diversity/")})
    headline = headline_metrics({m for v in models.values() for m in v})
    split, prompts = split_words(summary)
    table = Table(
        title=f"experiment {summary['name']}, {split}: mean ±95% t-interval over {summary['seeds']} seeds "
        f"(conditional on the {prompts})"
    )
    table.add_column("model", no_wrap=True)
    table.add_column("seeds", justify="right", no_wrap=True)
    for m in [*headline, *div]:
        table.add_column(metric_label(m), justify="right", no_wrap=True)
    for label, v in models.items():
        cells = []
        for m in [*headline, *div]:
            cell = v.get(m)
            if cell is None:
                cells.append("-")
            elif cell.get("half_width") is not None and math.isfinite(cell["half_width"]):
                cells.append(f"{cell['mean']:.3f}±{cell['half_width']:.3f}")
            else:
                cells.append(f"{cell['mean']:.3f}")
        table.add_row(label, str(v.get("n_seeds", 0)), *cells)
    return table


def _hypotheses_table(summary: dict[str, Any]):
    from rich.table import Table

    from polyray.eval.report_tables import HYPOTHESIS_COLUMNS, hypothesis_rows

    hyp = Table(title=f"hypotheses declared in advance (paired over seeds, given the {split_words(summary)[1]})")
    for col in HYPOTHESIS_COLUMNS:
        hyp.add_column(col, overflow="fold")
    for name, cells in hypothesis_rows(summary["hypotheses"]):
        hyp.add_row(name, *cells)
    return hyp


def _tests_table(summary: dict[str, Any]):
    from rich.table import Table

    from polyray.eval.record import metric_label

    comparisons = summary["comparisons"]
    tests = Table(
        title="treatment − control over seeds, paired by seed id: p (Holm p); 95% t-interval given the "
        f"{split_words(summary)[1]}; TOST equivalence within ±margin; bootstrap 95% CI over seeds and"
        " prompts"
    )
    for col in (
        "comparison",
        "metric",
        "seeds",
        "difference [95% CI]",
        "t p",
        "rank p",
        "effect",
        "equivalent (TOST p)",
        "bootstrap 95% CI",
    ):
        tests.add_column(col, justify="left" if col in ("comparison", "metric") else "right", no_wrap=True)
    for name, c in comparisons.items():
        if not c["metrics"]:
            tests.add_row(name, "-", ",".join(map(str, c["seeds"])) or "none", *["-"] * 6)
        for m, e in c["metrics"].items():
            tests.add_row(name, metric_label(m), ",".join(map(str, c["seeds"])), *_test_cells(e))
    floors = {o["over_seeds"].get("wilcoxon_min_p") for c in comparisons.values() for o in c["metrics"].values()}
    floors = sorted(f for f in floors if f is not None and f > summary.get("alpha", 0.05))
    if floors:
        tests.caption = (
            f"with these seeds the exact Wilcoxon p cannot go below {floors[0]:.3g}: "
            "it cannot reject at 0.05, whatever the effect"
        )
    return tests


def _test_cells(e: dict[str, Any]) -> list[str]:
    """One comparison x metric's cells: difference and interval, t and rank p, effect size, TOST, bootstrap."""
    o = e["over_seeds"]
    paired = o.get("design") == "paired"
    t_key, rank_key, d_key = (
        ("paired_t_p", "wilcoxon_p", "cohens_dz") if paired else ("welch_p", "mann_whitney_p", "cohens_d")
    )
    d = o.get(d_key)
    eq = o.get("equivalent")
    tost = (
        "-"
        if o.get("tost_p") is None
        else f"{'yes' if eq else 'not shown'} ±{o['equivalence_margin']:g}, p {_p(o, 'tost_p')}"
    )
    boot = e["within_seed"].get("hierarchical_bootstrap")
    return [
        f"{e['difference']:+.3f} {_interval(*o['ci95'])}",
        ("paired " if paired else "Welch ") + _p(o, t_key),
        ("Wilcoxon " if paired else "M-W ") + _p(o, rank_key),
        "-" if d is None else f"{'d_z' if paired else 'd'} {d:+.2f}",
        tost,
        _interval(boot["low"], boot["high"]) if boot else "-",
    ]
