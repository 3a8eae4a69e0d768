"""Self-contained HTML report and LaTeX tables of an evaluation (docs/design.md "Evaluation").

One report for every producer: the evaluation job, ``polyray sweep`` (a model per setting) and
``polyray experiment`` (a model per recipe); each hands its models as evaluation records.
``write_report(out_dir, results)`` writes

- ``report.html``: one file that opens offline — plotly.js is inlined once in the head
  (what ``include_plotlyjs=True`` does, without repeating 4 MB per figure), no CDN, no
  fonts or favicon fetched. Figures (:mod:`polyray.eval.figures`), each in a div with a stable id:
  ``fig-axis`` (a sweep's pass@k against its swept value), ``fig-passk`` (pass@k curves with CI
  bands), ``fig-usq`` (USQ@k beside pass@k per k), ``fig-pareto`` (quality vs diversity, frontier
  marked), ``fig-dynamics`` (diversity dynamics through SFT and GRPO), ``fig-lora`` (‖ΔW‖_F
  heatmaps layer × module, the two first adapters and their difference); tables ``table-main``,
  ``table-stats`` (the evaluation job's tests over prompts, given the two models) and
  ``table-seeds`` (an experiment's tests over seeds, paired by seed id, each interval labelled
  with what it holds fixed) and ``table-selection`` (what a sweep or an experiment chose, on which
  split, by which metric, among what) and ``table-hypotheses`` (an experiment's declared claims, each
  with its tests and verdict). A figure whose input is missing is replaced by a short note in a div with
  the same id and class ``skipped`` (``fig-axis``, a sweep's own, is left out instead).
- ``tables.tex``: the main table (booktabs): model × pass@k, USQ@k, diversity, mean ±
  CI half-width where given, best mean per column in bold.

``results.json`` and ``samples.jsonl`` are the caller's (``write_samples_jsonl`` helps).

The ``results`` schema (JSON-serialisable; every section optional except ``models``
for the table/curves)::

    V = float | {"mean": m, "low": lo, "high": hi}        # or {"mean", "half_width"}
    results = {
      "title": "polyray evaluation",
      "ks": [1, 5, 10],                    # pass@k columns/curve points (default: all k seen)
      "models": {                          # display order = dict order
        "<model>": EvalRecord | its JSON,  # polyray.eval.record: "pass@k": V, "usq@k": V (USQ of
                                           # "usq_selector"), "diversity/<name>": V, "quality": V
        ...                                # (Pareto quality; default pass@min k)
      },
      "table": {"usq_k": 10, "diversity": ["semantic"]},   # default: max k with USQ; all metrics
      "pareto": {"diversity": "semantic",                   # default: first diversity; or a record
                 "quality_label": "pass@1",                 # key (e.g. "pass@10")
                 "points": [{"name": "λ=0.1", "quality": q, "diversity": d}, ...]},  # extra points
      "axis": {"name": "phases.0.lam", "points": [{"x": 0.3, "pass@1": V, ...}, ...]},  # a sweep's one axis
      "dynamics": [{"run": "poly", "phase": "sft", "step": 0, "diversity/semantic": 0.4, ...}, ...],
      "lora": {"baseline": rows, "polychromic": rows},       # analysis.lora_parameter_analysis rows
      "stats": {"<comparison>": stats.compare_models(...) dict, ...},
      "seed_comparisons": {"<treatment> vs <control>": experiment.json's comparison, ...},
      "selection": [{"what": "setting", "chosen": "λ=0.1", "metric": "grpo/val/pass@1",
                     "selected_on": "validation", "among": {"λ=0.1": 0.21, ...}}, ...],  # what chose what
      "hypotheses": {"H1": experiment.json's verdict, ...},  # declared claims and their verdicts
    }
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from polyray.eval.figures import FIGURE_IDS, FIGURES, ONLY_WITH_INPUT, report_ks, report_models, value

__all__ = ["FIGURE_IDS", "render_html", "render_latex_table", "write_report", "write_samples_jsonl"]


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


def _table_rows(results: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[Any]]]]:
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


def _best_per_column(rows: list[tuple[str, list[Any]]]) -> list[float]:
    ncol = len(rows[0][1]) if rows else 0
    best = []
    for j in range(ncol):
        vals = [value(r[1][j])[0] for r in rows]
        vals = [v for v in vals if math.isfinite(v)]
        best.append(max(vals) if len(vals) > 1 else math.nan)
    return best


def _html_main_table(results: dict[str, Any]) -> str | None:
    header, rows = _table_rows(results)
    if not rows or not header:
        return None
    best = _best_per_column(rows)
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


def _html_selection_table(results: dict[str, Any]) -> str | None:
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


def _html_hypotheses_table(results: dict[str, Any]) -> str | None:
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


def _html_stats_table(results: dict[str, Any]) -> str | None:
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


def _html_seed_table(results: dict[str, Any]) -> str | None:
    """An experiment's comparisons (``polyray experiment``'s experiment.json ``comparisons``): per
    comparison and metric the difference with its t-interval over seeds (conditional on the test
    prompts), the t and rank tests with Holm p, TOST equivalence at its margin, and the bootstrap
    interval over seeds and prompts (conditional on nothing)."""
    comparisons = results.get("seed_comparisons") or {}
    if not any(c.get("metrics") for c in comparisons.values()):
        return None

    def iv(lo: Any, hi: Any) -> str:
        return "–" if lo is None or hi is None else f"[{lo:+.3f}, {hi:+.3f}]"

    def p(o: dict, key: str) -> str:
        v, adj = o.get(key), o.get(f"{key}_holm")
        return "–" if v is None else f"{v:.3g}" + (f" ({adj:.3g})" if adj is not None else "")

    head = [
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
    out = ['<table id="table-seeds" class="results"><thead><tr>']
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    floors = set()
    for name, c in comparisons.items():
        for metric, e in (c.get("metrics") or {}).items():
            o = e.get("over_seeds") or {}
            paired = o.get("design") == "paired"
            boot = (e.get("within_seed") or {}).get("hierarchical_bootstrap") or {}
            if o.get("wilcoxon_min_p") is not None and o["wilcoxon_min_p"] > 0.05:
                floors.add(o["wilcoxon_min_p"])
            tost = (
                "–"
                if o.get("tost_p") is None
                else (
                    f"{'yes' if o.get('equivalent') else 'not shown'} ±{o['equivalence_margin']:g}, p {p(o, 'tost_p')}"
                )
            )
            cells = [
                metric,
                ",".join(map(str, c.get("seeds", []))),
                o.get("design", "–"),
                f"{e.get('difference', math.nan):+.4f}",
                iv(*(o.get("ci95") or [None, None])),
                ("paired t " if paired else "Welch ") + p(o, "paired_t_p" if paired else "welch_p"),
                ("Wilcoxon " if paired else "Mann–Whitney ") + p(o, "wilcoxon_p" if paired else "mann_whitney_p"),
                tost,
                iv(boot.get("low"), boot.get("high")),
            ]
            row = "".join(f"<td>{html.escape(x)}</td>" for x in cells)
            out.append(f"<tr><th>{html.escape(name)}</th>{row}</tr>")
    out.append("</tbody></table>")
    if floors:
        out.append(
            f"<p>With these seeds the exact Wilcoxon signed-rank p cannot go below {min(floors):.3g}: "
            "the rank test cannot reject at 0.05 whatever the effect.</p>"
        )
    return "".join(out)


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(s: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in s)


_DEFAULT_CAPTION = r"Pass@k, USQ@k and diversity per model (mean $\pm$ 95\% CI half-width; best in bold)."


def render_latex_table(results: dict[str, Any], caption: str | None = None, label: str = "tab:main") -> str:
    """The main table as a booktabs LaTeX ``table`` (needs ``\\usepackage{booktabs}``)."""
    header, rows = _table_rows(results)
    if not rows:
        raise ValueError("results['models'] is empty: nothing to tabulate")
    best = _best_per_column(rows)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + (_tex(caption) if caption else _DEFAULT_CAPTION) + "}",
        r"\label{" + label + "}",
        r"\begin{tabular}{l" + "c" * len(header) + "}",
        r"\toprule",
        "Model & " + " & ".join(_tex(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for name, cells in rows:
        out = []
        for j, c in enumerate(cells):
            m, lo, hi = value(c)
            if not math.isfinite(m):
                out.append("--")
                continue
            s = f"{m:.3f}"
            if math.isfinite(best[j]) and m == best[j]:
                s = r"\textbf{" + s + "}"
            if lo is not None and hi is not None:
                s += rf" $\pm$ {(hi - lo) / 2:.3f}"
            out.append(s)
        lines.append(_tex(name) + " & " + " & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
section { margin-bottom: 2.5rem; }
table.results { border-collapse: collapse; margin: 0.5rem 0; }
table.results th, table.results td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: right; }
table.results th:first-child { text-align: left; }
td.best { font-weight: bold; }
.skipped { color: #777; font-style: italic; padding: 1rem; border: 1px dashed #ccc; }
"""


def render_html(results: dict[str, Any]) -> str:
    """The report as one self-contained HTML string (plotly.js inlined, no network)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    title = html.escape(str(results.get("title", "polyray evaluation")))
    body = [f"<h1>{title}</h1>"]
    table = _html_main_table(results)
    body.append('<section id="section-table"><h2>Main table</h2>')
    body.append(table or '<div id="table-main" class="skipped">Skipped: no models in results[\'models\'].</div>')
    body.append("</section>")
    selection = _html_selection_table(results)
    if selection:
        body.append(f'<section id="section-selection"><h2>Selection (validation only)</h2>{selection}</section>')
    hypotheses = _html_hypotheses_table(results)
    if hypotheses:
        body.append(f'<section id="section-hypotheses"><h2>Hypotheses (declared in advance)</h2>{hypotheses}</section>')
    stats = _html_stats_table(results)
    if stats:
        body.append(f'<section id="section-stats"><h2>Statistics</h2>{stats}</section>')
    seeds = _html_seed_table(results)
    if seeds:
        body.append(f'<section id="section-seeds"><h2>Comparisons over seeds</h2>{seeds}</section>')
    for div_id, heading, build in FIGURES:
        fig, reason = build(results)
        if fig is None and div_id in ONLY_WITH_INPUT:
            continue
        body.append(f'<section id="section-{div_id[4:]}"><h2>{html.escape(heading)}</h2>')
        if fig is None:
            body.append(f'<div id="{div_id}" class="skipped">Skipped: {html.escape(reason)}.</div>')
        else:
            height = int(fig.layout.height or 480)
            fig.update_layout(height=height, template="plotly_white")
            body.append(
                pio.to_html(
                    fig,
                    full_html=False,
                    include_plotlyjs=False,
                    include_mathjax=False,
                    div_id=div_id,
                    default_height=f"{height}px",
                    config={"displaylogo": False, "responsive": True},
                )
            )
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<title>{title}</title>\n<link rel="icon" href="data:,">\n<style>{_CSS}</style>\n'
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(out_dir: str | Path, results: dict[str, Any]) -> dict[str, Path]:
    """Write ``report.html`` and ``tables.tex`` (when there are models) into ``out_dir``.

    Returns:
        {"html": path, "tex": path} (``tex`` absent when ``results['models']`` is empty).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html"}
    paths["html"].write_text(render_html(results), encoding="utf-8")
    if report_models(results):
        paths["tex"] = out / "tables.tex"
        paths["tex"].write_text(render_latex_table(results), encoding="utf-8")
    return paths


# --------------------------------------------------------------------------- samples


def _json_default(o: Any) -> Any:
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def write_samples_jsonl(path: str | Path, per_prompt_rows: Iterable[Any]) -> Path:
    """Write one JSON object per line (dicts, ``metrics.PromptResult`` or other dataclasses; numpy ok)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, row in enumerate(per_prompt_rows):
            if dataclasses.is_dataclass(row) and not isinstance(row, type):
                row = dataclasses.asdict(row)
            if not isinstance(row, dict):
                raise ValueError(f"per_prompt_rows[{i}] is a {type(row).__name__}, expected a dict or dataclass")
            f.write(json.dumps(row, default=_json_default, ensure_ascii=False) + "\n")
    return path
