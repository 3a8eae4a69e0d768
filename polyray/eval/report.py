"""Self-contained HTML report and LaTeX tables of an evaluation (docs/design.md "Evaluation").

``write_report(out_dir, results)`` writes

- ``report.html``: one file that opens offline — plotly.js is inlined once in the head
  (what ``include_plotlyjs=True`` does, without repeating 4 MB per figure), no CDN, no
  fonts or favicon fetched. Figures, each in a div with a stable id:
  ``fig-axis`` (a sweep's pass@k against its swept value), ``fig-passk`` (pass@k curves with CI bands), ``fig-usq`` (USQ@k beside pass@k per k),
  ``fig-pareto`` (quality vs diversity, frontier marked), ``fig-dynamics`` (diversity
  dynamics through SFT and GRPO), ``fig-lora`` (‖ΔW‖_F heatmaps layer × module, the
  two first adapters and their difference); tables ``table-main`` and ``table-stats``.
  A figure whose input is missing is replaced by a short note in a div with the same
  id and class ``skipped`` (``fig-axis``, a sweep's own, is left out instead).
- ``tables.tex``: the main table (booktabs): model × pass@k, USQ@k, diversity, mean ±
  CI half-width where given, best mean per column in bold.

``results.json`` and ``samples.jsonl`` are the caller's (``write_samples_jsonl`` helps).

The ``results`` schema (JSON-serialisable; every section optional except ``models``
for the table/curves; dict keys that are k may be ints or strings)::

    V = float | {"mean": m, "low": lo, "high": hi}        # or {"mean", "half_width"};
                                                          # stats.mean_ci output fits
    results = {
      "title": "polyray evaluation",
      "ks": [1, 5, 10],                    # pass@k columns/curve points (default: all keys seen)
      "models": {                          # display order = dict order
        "<model>": {
          "pass_at_k": {k: V, ...},
          "usq": {k: V, ...},              # USQ@k of the deployed selector
          "usq_selector": "reward_model",  # label only
          "quality": V,                    # Pareto quality; default pass@1 (pass_at_k[min k])
          "diversity": {"semantic": V, "distinct_2": V, ...},
        }, ...
      },
      "table": {"usq_k": 10, "diversity": ["semantic"]},   # default: max k with USQ; all metrics
      "pareto": {"diversity": "semantic",                   # default: first diversity metric
                 "quality_label": "pass@1",
                 "points": [{"name": "λ=0.1", "quality": q, "diversity": d}, ...]},  # extra points
      "axis": {"name": "phases.0.lam", "points": [{"x": 0.3, "pass@1": V, ...}, ...]},  # a sweep's one axis
      "dynamics": [{"run": "poly", "phase": "sft", "step": 0, "diversity/semantic": 0.4, ...}, ...],
      "lora": {"baseline": rows, "polychromic": rows},       # analysis.lora_parameter_analysis rows
      "stats": {"<comparison>": stats.compare_models(...) dict, ...},
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

from polyray.eval.analysis import dynamics_trajectories, lora_heatmap_matrix, pareto_frontier

__all__ = ["FIGURE_IDS", "render_html", "render_latex_table", "write_report", "write_samples_jsonl"]

FIGURE_IDS = ("fig-axis", "fig-passk", "fig-usq", "fig-pareto", "fig-dynamics", "fig-lora")
_PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


# --------------------------------------------------------------------------- values


def _val(v: Any) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a V (float or {"mean", "low", "high"} / {"mean", "half_width"})."""
    if v is None:
        return math.nan, None, None
    if isinstance(v, dict):
        m = float(v.get("mean", math.nan))
        lo, hi = v.get("low"), v.get("high")
        if (lo is None or hi is None) and v.get("half_width") is not None:
            lo, hi = m - float(v["half_width"]), m + float(v["half_width"])
        lo = float(lo) if lo is not None and math.isfinite(float(lo)) else None
        hi = float(hi) if hi is not None and math.isfinite(float(hi)) else None
        return m, lo, hi
    return float(v), None, None


def _kdict(d: dict | None) -> dict[int, Any]:
    return {int(k): v for k, v in (d or {}).items()}


def _ks(results: dict[str, Any]) -> list[int]:
    if results.get("ks"):
        return sorted(int(k) for k in results["ks"])
    return sorted({k for m in _models(results).values() for k in _kdict(m.get("pass_at_k"))})


def _models(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    models = results.get("models") or {}
    if not isinstance(models, dict):
        raise ValueError(f"results['models'] must be a dict of model name -> metrics, got {type(models).__name__}")
    return models


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _fmt(v: Any, digits: int = 3) -> str:
    m, lo, hi = _val(v)
    if not math.isfinite(m):
        return "–"
    if lo is not None and hi is not None:
        return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"
    return f"{m:.{digits}f}"


# --------------------------------------------------------------------------- figures


def _fig_passk(results: dict[str, Any]):
    import plotly.graph_objects as go

    models, ks = _models(results), _ks(results)
    fig = go.Figure()
    for i, (name, m) in enumerate(models.items()):
        curve = _kdict(m.get("pass_at_k"))
        pts = [(k, *_val(curve[k])) for k in ks if k in curve]
        if not pts:
            continue
        x = [p[0] for p in pts]
        if all(p[2] is not None and p[3] is not None for p in pts):
            fig.add_trace(
                go.Scatter(
                    x=x + x[::-1],
                    y=[p[3] for p in pts] + [p[2] for p in pts][::-1],
                    fill="toself",
                    mode="lines",
                    fillcolor=_rgba(_color(i), 0.18),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                    name=f"{name} CI",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=x, y=[p[1] for p in pts], mode="lines+markers", name=name, legendgroup=name,
                line={"color": _color(i)},
            )  # fmt: skip
        )
    if not fig.data:
        return None, "no model has a pass_at_k curve"
    fig.update_layout(title="Pass@k (mean over prompts, 95% CI band)", xaxis_title="k", yaxis_title="pass@k")
    fig.update_xaxes(type="log" if ks and max(ks) / min(ks) >= 16 else "linear", tickvals=ks)
    return fig, None


def _fig_usq(results: dict[str, Any]):
    import plotly.graph_objects as go

    models, ks = _models(results), _ks(results)
    fig = go.Figure()
    for i, (name, m) in enumerate(models.items()):
        usq = _kdict(m.get("usq"))
        if not usq:
            continue
        curve = _kdict(m.get("pass_at_k"))
        kk = sorted(usq)
        pk = [k for k in kk if k in curve]
        if pk:
            fig.add_trace(
                go.Scatter(
                    x=pk, y=[_val(curve[k])[0] for k in pk], mode="lines+markers", name=f"{name} pass@k (oracle)",
                    legendgroup=name, line={"color": _color(i)},
                )  # fmt: skip
            )
        vals = [_val(usq[k]) for k in kk]
        err = None
        if all(v[1] is not None and v[2] is not None for v in vals):
            err = {
                "type": "data",
                "symmetric": False,
                "array": [v[2] - v[0] for v in vals],
                "arrayminus": [v[0] - v[1] for v in vals],
            }
        sel = m.get("usq_selector")
        fig.add_trace(
            go.Scatter(
                x=kk, y=[v[0] for v in vals], mode="lines+markers", error_y=err, legendgroup=name,
                name=f"{name} USQ@k" + (f" ({sel})" if sel else ""),
                line={"color": _color(i), "dash": "dash"}, marker={"symbol": "diamond"},
            )  # fmt: skip
        )
    if not fig.data:
        return None, "no model has USQ@k values (results['models'][*]['usq'])"
    fig.update_layout(
        title="USQ@k (selector's pick) vs pass@k (oracle pick) per k", xaxis_title="k", yaxis_title="quality"
    )
    fig.update_xaxes(tickvals=ks or None)
    return fig, None


def _pareto_points(results: dict[str, Any]) -> tuple[list[tuple[str, float, float]], str, str]:
    models, ks = _models(results), _ks(results)
    cfg = results.get("pareto") or {}
    div_names = [d for m in models.values() for d in (m.get("diversity") or {})]
    div = cfg.get("diversity") or (div_names[0] if div_names else None)
    points = []
    for name, m in models.items():
        q = m.get("quality")
        if q is None and ks:
            q = _kdict(m.get("pass_at_k")).get(min(ks))
        d = (m.get("diversity") or {}).get(div) if div else None
        if q is not None and d is not None:
            points.append((name, _val(q)[0], _val(d)[0]))
    for p in cfg.get("points") or []:
        points.append((str(p["name"]), _val(p["quality"])[0], _val(p["diversity"])[0]))
    points = [p for p in points if math.isfinite(p[1]) and math.isfinite(p[2])]
    return points, cfg.get("quality_label", f"pass@{min(ks)}" if ks else "quality"), div or "diversity"


def _fig_pareto(results: dict[str, Any]):
    import plotly.graph_objects as go

    points, qlabel, dlabel = _pareto_points(results)
    if not points:
        return None, "no point has both a quality and a diversity value"
    mask = pareto_frontier(points)
    fig = go.Figure()
    front = sorted((p for p, on in zip(points, mask) if on), key=lambda p: p[1])
    fig.add_trace(
        go.Scatter(
            x=[p[1] for p in front], y=[p[2] for p in front], mode="lines", name="Pareto frontier",
            line={"color": "#444", "dash": "dot", "shape": "hv"},
        )  # fmt: skip
    )
    styles = ((True, "non-dominated", "star", "#d62728"), (False, "dominated", "circle", "#888"))
    for on, label, symbol, color in styles:
        sel = [p for p, m in zip(points, mask) if bool(m) == on]
        if sel:
            fig.add_trace(
                go.Scatter(
                    x=[p[1] for p in sel], y=[p[2] for p in sel], mode="markers+text", name=label,
                    text=[p[0] for p in sel], textposition="top center",
                    marker={"symbol": symbol, "size": 14 if on else 10, "color": color},
                )  # fmt: skip
            )
    fig.update_layout(title="Quality vs diversity (both maximised)", xaxis_title=qlabel, yaxis_title=dlabel)
    return fig, None


def _fig_dynamics(results: dict[str, Any]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    records = results.get("dynamics") or []
    traj = dynamics_trajectories(records) if records else []
    if not traj:
        return None, "no diversity-dynamics records (results['dynamics'])"
    metrics = list(dict.fromkeys(t["metric"] for t in traj))
    runs = list(dict.fromkeys(t["run"] for t in traj))
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=metrics, vertical_spacing=0.06)
    for t in traj:
        i = runs.index(t["run"])
        row = metrics.index(t["metric"]) + 1
        fig.add_trace(
            go.Scatter(
                x=t["x"], y=t["value"], mode="lines+markers", name=t["run"], legendgroup=t["run"],
                showlegend=row == 1, line={"color": _color(i)},
                customdata=list(zip(t["phase"], t["step"])),
                hovertemplate="%{customdata[0]} step %{customdata[1]}: %{y:.4f}<extra>" + t["run"] + "</extra>",
            ),
            row=row, col=1,
        )  # fmt: skip
    # phase boundaries on the shared axis: where a run's phase changes
    bounds = set()
    for t in traj:
        for j in range(1, len(t["phase"])):
            if t["phase"][j] != t["phase"][j - 1]:
                bounds.add(((t["x"][j - 1] + t["x"][j]) / 2, t["phase"][j]))
    for x, phase in sorted(bounds):
        fig.add_vline(x=x, line={"dash": "dash", "color": "#999"}, annotation_text=f"→ {phase}")
    fig.update_layout(title="Diversity dynamics (SFT then GRPO)", height=max(350, 260 * len(metrics)))
    fig.update_xaxes(title_text="step", row=len(metrics), col=1)
    return fig, None


def _fig_lora(results: dict[str, Any]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    lora = results.get("lora") or {}
    labels = [k for k, rows in lora.items() if rows][:2]
    if not labels:
        return None, "no LoRA parameter analysis (results['lora'])"
    mats = [lora_heatmap_matrix(lora[k]) for k in labels]
    panels = [(f"‖ΔW‖_F — {k}", *m) for k, m in zip(labels, mats)]
    if len(labels) == 2:
        (la, ma, a), (lb, mb, b) = mats
        layers, modules = sorted(set(la) | set(lb)), list(dict.fromkeys(ma + mb))

        def expand(ls, ms, mat):
            out = np.full((len(layers), len(modules)), np.nan)
            for i, layer in enumerate(ls):
                for j, mod in enumerate(ms):
                    out[layers.index(layer), modules.index(mod)] = mat[i, j]
            return out

        panels.append((f"{labels[1]} − {labels[0]}", layers, modules, expand(lb, mb, b) - expand(la, ma, a)))
    if not any(p[1] for p in panels):
        return None, "LoRA rows carry no layer index"
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.12)
    vmax = max(float(np.nanmax(p[3])) if np.isfinite(p[3]).any() else 0.0 for p in panels[:2])
    for j, (title, layers, modules, mat) in enumerate(panels, start=1):
        is_diff = j == 3
        z = [[None if not np.isfinite(v) else float(v) for v in row] for row in mat]
        fig.add_trace(
            go.Heatmap(
                z=z, x=modules, y=[str(layer) for layer in layers],
                coloraxis="coloraxis2" if is_diff else "coloraxis",
                hovertemplate="layer %{y}, %{x}: %{z:.4g}<extra>" + title + "</extra>",
            ),
            row=1, col=j,
        )  # fmt: skip
        fig.update_yaxes(title_text="layer" if j == 1 else None, type="category", row=1, col=j)
    # one shared colour scale for the two adapters, a diverging one centred at 0 for the difference
    bar_x = 0.64 if len(panels) == 3 else 1.02
    norm_bar = {"x": bar_x, "title": {"text": "‖ΔW‖_F"}}
    fig.update_layout(
        title="LoRA update norm per layer and module",
        coloraxis={"colorscale": "Viridis", "cmin": 0, "cmax": vmax or 1.0, "colorbar": norm_bar},
    )
    if len(panels) == 3:
        diff_bar = {"x": 1.02, "title": {"text": "Δ"}}
        fig.update_layout(coloraxis2={"colorscale": "RdBu", "reversescale": True, "cmid": 0, "colorbar": diff_bar})
    return fig, None


# --------------------------------------------------------------------------- tables


def _table_columns(results: dict[str, Any]) -> tuple[list[int], int | None, list[str]]:
    models, ks = _models(results), _ks(results)
    cfg = results.get("table") or {}
    usq_ks = sorted({k for m in models.values() for k in _kdict(m.get("usq"))})
    usq_k = int(cfg["usq_k"]) if cfg.get("usq_k") is not None else (max(usq_ks) if usq_ks else None)
    divs = cfg.get("diversity")
    if divs is None:
        divs = list(dict.fromkeys(d for m in models.values() for d in (m.get("diversity") or {})))
    return ks, usq_k, list(divs)


def _table_rows(results: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[Any]]]]:
    ks, usq_k, divs = _table_columns(results)
    header = [f"pass@{k}" for k in ks] + ([f"USQ@{usq_k}"] if usq_k else []) + divs
    rows = []
    for name, m in _models(results).items():
        curve, usq, dv = _kdict(m.get("pass_at_k")), _kdict(m.get("usq")), m.get("diversity") or {}
        cells = [curve.get(k) for k in ks] + ([usq.get(usq_k)] if usq_k else []) + [dv.get(d) for d in divs]
        rows.append((name, cells))
    return header, rows


def _best_per_column(rows: list[tuple[str, list[Any]]]) -> list[float]:
    ncol = len(rows[0][1]) if rows else 0
    best = []
    for j in range(ncol):
        vals = [_val(r[1][j])[0] for r in rows]
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
            is_best = math.isfinite(best[j]) and _val(c)[0] == best[j]
            out.append(f'<td{" class=best" if is_best else ""}>{html.escape(_fmt(c))}</td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _html_stats_table(results: dict[str, Any]) -> str | None:
    stats = results.get("stats") or {}
    if not stats:
        return None

    def p(d: dict, key: str) -> str:
        v = (d.get(key) or {}).get("pvalue")
        return "–" if v is None else f"{v:.3g}"

    head = ["comparison", "mean diff", "95% bootstrap CI", "Mann–Whitney p", "Wilcoxon p", "paired t p",
            "Holm p", "Cohen's d", "d_z", "Cliff's δ"]  # fmt: skip
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


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


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
            m, lo, hi = _val(c)
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

def _fig_axis(results: dict[str, Any]):
    """pass@k against one swept value (a sweep's axis), mean with CI error bars per k."""
    import plotly.graph_objects as go

    axis = results.get("axis")
    if not axis or not axis.get("points"):
        return None, "not a sweep over one axis (results['axis'] absent)"
    points = sorted(axis["points"], key=lambda p: (not isinstance(p["x"], (int, float)), p["x"]))
    names = sorted({k for p in points for k in p if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    fig = go.Figure()
    xs = [p["x"] for p in points]
    for i, name in enumerate(names):
        vals = [_val(p.get(name)) for p in points]
        means = [m for m, _, _ in vals]
        plus = [(hi - m) if hi is not None else 0.0 for m, _, hi in vals]
        minus = [(m - lo) if lo is not None else 0.0 for m, lo, _ in vals]
        fig.add_trace(go.Scatter(x=xs, y=means, mode="lines+markers", name=name, line={"color": _color(i)},
                                 error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True}))  # fmt: skip
    fig.update_layout(xaxis_title=str(axis.get("name", "value")), yaxis_title="pass@k (mean, 95% CI over seeds)")
    return fig, ""


_ONLY_WITH_INPUT = {"fig-axis"}  # a sweep's figure: absent, not "skipped", in other reports
_FIGURES = (
    ("fig-axis", "Pass@k against the swept value", _fig_axis),
    ("fig-passk", "Pass@k curves", _fig_passk),
    ("fig-usq", "USQ@k vs Pass@k", _fig_usq),
    ("fig-pareto", "Pareto frontier: quality vs diversity", _fig_pareto),
    ("fig-dynamics", "Diversity dynamics", _fig_dynamics),
    ("fig-lora", "LoRA parameter analysis", _fig_lora),
)


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
    stats = _html_stats_table(results)
    if stats:
        body.append(f'<section id="section-stats"><h2>Statistics</h2>{stats}</section>')
    for div_id, heading, build in _FIGURES:
        fig, reason = build(results)
        if fig is None and div_id in _ONLY_WITH_INPUT:
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
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{title}</title>\n<link rel=\"icon\" href=\"data:,\">\n<style>{_CSS}</style>\n"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n</head>\n<body>\n"
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
    if _models(results):
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
