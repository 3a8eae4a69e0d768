"""The report's tables as HTML (:mod:`polyray.eval.report` assembles them with the figures):
``table-main``, ``table-selection``, ``table-hypotheses``, ``table-stats`` and ``table-seeds``;
the main table's rows are the LaTeX table's too."""

from __future__ import annotations

import html
import math
from typing import Any


from polyray.eval.figures import report_ks, report_models, value


# --------------------------------------------------------------------------- values


def _fmt(v: Any, digits: int = 3) -> str:
    m, lo, hi = value(v)
    if not math.isfinite(m):
        return "–"
    if lo is not None and hi is not None:
        return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"
    return f"{m:.{digits}f}"


# --------------------------------------------------------------------------- tables


def _table_columns(results: dict[str, Any]) -> tuple[list[int], int | None, list[str]]:
    models, ks = report_models(results), report_ks(results)
    cfg = results.get("table") or {}
    usq_ks = sorted({k for m in models.values() for k in m.usq_at_k})
    usq_k = int(cfg["usq_k"]) if cfg.get("usq_k") is not None else (max(usq_ks) if usq_ks else None)
    divs = cfg.get("diversity")
    if divs is None:
        divs = list(dict.fromkeys(d for m in models.values() for d in m.diversity))
    return ks, usq_k, list(divs)


def main_table_rows(results: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    """Columns pass@k, USQ@k, distinct samples (where measured), each diversity; one name per measure
    (:func:`polyray.eval.record.metric_label`: "distinct samples" is not "distinct expressions")."""
    from polyray.eval.record import metric_label

    ks, usq_k, divs = _table_columns(results)
    models = report_models(results)
    distinct = any(m.distinct_samples is not None for m in models.values())
    header = (
        [f"pass@{k}" for k in ks]
        + ([f"USQ@{usq_k}"] if usq_k else [])
        + ([metric_label("distinct_samples")] if distinct else [])
        + [metric_label(d) for d in divs]
    )
    rows = []
    for name, m in models.items():
        curve, usq, dv = m.pass_at_k, m.usq_at_k, m.diversity
        cells = (
            [curve.get(k) for k in ks]
            + ([usq.get(usq_k)] if usq_k else [])
            + ([m.distinct_samples] if distinct else [])
            + [dv.get(d) for d in divs]
        )
        rows.append((name, cells))
    return header, rows


def best_per_column(rows: list[tuple[str, list[Any]]]) -> list[float]:
    ncol = len(rows[0][1]) if rows else 0
    best = []
    for j in range(ncol):
        vals = [value(r[1][j])[0] for r in rows]
        vals = [v for v in vals if math.isfinite(v)]
        best.append(max(vals) if len(vals) > 1 else math.nan)
    return best


def html_main_table(results: dict[str, Any]) -> str | None:
    header, rows = main_table_rows(results)
    if not rows or not header:
        return None
    best = best_per_column(rows)
    out = ['<table id="table-main" class="results"><thead><tr><th>model</th>']
    out += [f"<th>{html.escape(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for name, cells in rows:
        out.append(f"<tr><th>{html.escape(name)}</th>")
        for j, c in enumerate(cells):
            is_best = math.isfinite(best[j]) and value(c)[0] == best[j]
            out.append(f"<td{' class=best' if is_best else ''}>{html.escape(_fmt(c))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def html_selection_table(results: dict[str, Any]) -> str | None:
    """What was chosen, on which split and by which metric, with every candidate's value."""
    rows = results.get("selection") or []
    if not rows:
        return None
    out = ['<table id="table-selection" class="results"><thead><tr>']
    out += [f"<th>{h}</th>" for h in ("selection", "chosen", "selected on", "metric", "candidates (mean over seeds)")]
    out.append("</tr></thead><tbody>")
    for r in rows:
        among = ", ".join(
            f"{k}: {v:.4g}" if isinstance(v, (int, float)) else f"{k}: –" for k, v in r.get("among", {}).items()
        )
        cells = [str(r.get("chosen", "–")), str(r.get("selected_on", "–")), str(r.get("metric", "–")), among]
        out.append(
            f"<tr><th>{html.escape(str(r.get('what', '')))}</th>"
            + "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def hypothesis_rows(hypotheses: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """Per declared hypothesis (experiment.json's ``hypotheses``) the cells of its table row: claim,
    seeds, raised (difference, 95% interval, p), kept (difference, 90% interval, margin, TOST p), verdict."""

    def num(x: float | None, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)

    rows = []
    for name, h in hypotheses.items():
        claim = (
            f"{h['treatment']} raises {h['raise_metric']} over {h['control']}, keeps {h['keep_metric']}"
            f" within {h['keep_within']:.0%}"
        )
        r, k = h.get("raise") or {}, h.get("keep") or {}
        raised = (
            (
                f"{num(r.get('difference'), '+.3f')} [{num(r.get('low'), '+.3f')}, {num(r.get('high'), '+.3f')}],"
                f" p {num(r.get('pvalue'), '.3g')}"
            )
            if r
            else "–"
        )
        kept = (
            (
                f"{num(k.get('difference'), '+.3f')} [{num(k.get('low'), '+.3f')}, {num(k.get('high'), '+.3f')}]"
                f" vs ±{num(k.get('margin'), '.3f')}, TOST p {num(k.get('pvalue'), '.3g')}"
            )
            if k
            else "–"
        )
        verdict = h["verdict"] + (f" ({'; '.join(h['reasons'])})" if h.get("reasons") else "")
        rows.append((name, [claim, str(h.get("n_seeds", 0)), raised, kept, verdict]))
    return rows


HYPOTHESIS_COLUMNS = (
    "hypothesis",
    "claim",
    "seeds",
    "raised: difference [95% CI], paired t p",
    "kept: difference [90% CI] vs margin, TOST p",
    "verdict",
)


def html_hypotheses_table(results: dict[str, Any]) -> str | None:
    rows = hypothesis_rows(results.get("hypotheses") or {})
    if not rows:
        return None
    out = ['<table id="table-hypotheses" class="results"><thead><tr>']
    out += [f"<th>{h}</th>" for h in HYPOTHESIS_COLUMNS]
    out.append("</tr></thead><tbody>")
    for name, cells in rows:
        out.append(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def html_stats_table(results: dict[str, Any]) -> str | None:
    stats = results.get("stats") or {}
    if not stats:
        return None

    def p(d: dict, key: str) -> str:
        v = (d.get(key) or {}).get("pvalue")
        return "–" if v is None else f"{v:.3g}"

    head = [
        "comparison",
        "mean diff",
        "95% bootstrap CI over prompts, given the models",
        "Mann–Whitney p",
        "Wilcoxon p",
        "paired t p",
        "Holm p",
        "Cohen's d",
        "d_z",
        "Cliff's δ",
    ]
    out = ['<table id="table-stats" class="results"><thead><tr>']
    out += [f"<th>{h}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for name, d in stats.items():
        ci = d.get("bootstrap_ci") or {}
        cells = [
            f"{d.get('mean_diff', math.nan):+.4f}",
            f"[{ci.get('low', math.nan):+.4f}, {ci.get('high', math.nan):+.4f}]" if ci else "–",
            p(d, "mann_whitney"),
            p(d, "wilcoxon"),
            p(d, "paired_t"),
            f"{d['pvalue_holm']:.3g}" if "pvalue_holm" in d else "–",
            f"{d.get('cohens_d', math.nan):.3f}",
            f"{d['cohens_dz']:.3f}" if "cohens_dz" in d else "–",
            f"{d.get('cliffs_delta', math.nan):.3f}",
        ]
        out.append(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


_SEED_TABLE_HEAD = [
    "comparison",
    "metric",
    "seeds",
    "design",
    "difference",
    "95% CI over seeds (given the test prompts)",
    "t-test p (Holm)",
    "rank test p (Holm)",
    "TOST: equivalent within ±margin (Holm p)",
    "95% bootstrap CI over seeds and prompts",
]


def _interval_cell(lo: Any, hi: Any) -> str:
    return "–" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"


def _p_cell(o: dict, key: str) -> str:
    v, adj = o.get(key), o.get(f"{key}_holm")
    return "–" if v is None else f"{v:.3g}" + (f" ({adj:.3g})" if adj is not None else "")


def _seed_row_cells(metric: str, seeds: list, e: dict[str, Any]) -> list[str]:
    """One comparison metric's cells: its over-seeds tests (paired or Welch) and its bootstrap interval."""
    o = e.get("over_seeds") or {}
    paired = o.get("design") == "paired"
    boot = (e.get("within_seed") or {}).get("hierarchical_bootstrap") or {}
    tost = (
        "–"
        if o.get("tost_p") is None
        else f"{'yes' if o.get('equivalent') else 'not shown'} ±{o['equivalence_margin']:g}, p {_p_cell(o, 'tost_p')}"
    )
    return [
        metric,
        ",".join(map(str, seeds)),
        o.get("design", "–"),
        f"{e.get('difference', math.nan):+.4f}",
        _interval_cell(*(o.get("ci95") or [None, None])),
        ("paired t " if paired else "Welch ") + _p_cell(o, "paired_t_p" if paired else "welch_p"),
        ("Wilcoxon " if paired else "Mann–Whitney ") + _p_cell(o, "wilcoxon_p" if paired else "mann_whitney_p"),
        tost,
        _interval_cell(boot.get("low"), boot.get("high")),
    ]


def html_seed_table(results: dict[str, Any]) -> str | None:
    """An experiment's comparisons (``polyray experiment``'s experiment.json ``comparisons``): per
    comparison and metric the difference with its t-interval over seeds (conditional on the test
    prompts), the t and rank tests with Holm p, TOST equivalence at its margin, and the bootstrap
    interval over seeds and prompts (conditional on nothing)."""
    comparisons = results.get("seed_comparisons") or {}
    if not any(c.get("metrics") for c in comparisons.values()):
        return None
    out = ['<table id="table-seeds" class="results"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in _SEED_TABLE_HEAD]
    out.append("</tr></thead><tbody>")
    floors = set()
    for name, c in comparisons.items():
        for metric, e in (c.get("metrics") or {}).items():
            o = e.get("over_seeds") or {}
            if o.get("wilcoxon_min_p") is not None and o["wilcoxon_min_p"] > 0.05:
                floors.add(o["wilcoxon_min_p"])
            row = "".join(f"<td>{html.escape(x)}</td>" for x in _seed_row_cells(metric, c.get("seeds", []), e))
            out.append(f"<tr><th>{html.escape(name)}</th>{row}</tr>")
    out.append("</tbody></table>")
    if floors:
        out.append(
            f"<p>With these seeds the exact Wilcoxon signed-rank p cannot go below {min(floors):.3g}: "
            "the rank test cannot reject at 0.05 whatever the effect.</p>"
        )
    return "".join(out)
