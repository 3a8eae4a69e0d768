"""Self-contained HTML report and LaTeX tables of an evaluation (docs/design.md "Evaluation").

One report for every producer: the evaluation job, ``polyray sweep`` (a model per setting) and
``polyray experiment`` (a model per recipe); each hands its models as evaluation records.
``write_report(out_dir, results)`` writes

- ``report.html``: one file that opens offline — plotly.js is inlined once in the head
  (what ``include_plotlyjs=True`` does, without repeating 4 MB per figure), no CDN, no
  fonts or favicon fetched. Figures (:mod:`polyray.eval.figures`), each in a div with a stable id:
  ``fig-axis`` (a sweep's pass@k against its swept value), ``fig-startup`` (a run's start-up timeline:
  each component from asked for to ready), ``fig-training`` (a run's loss, reward, KL,
  clipped fraction and engine-vs-learner gap per step; a multi-turn run's turns used, failed
  episodes and share solved by each turn), ``fig-passk`` (pass@k curves with CI bands), ``fig-turns``
  (a multi-turn evaluation's pass@k after each turn), ``fig-episodes`` (its turns used, model tokens per
  episode and failed episodes), ``fig-usq`` (USQ@k beside pass@k per k), ``fig-pareto`` (quality vs diversity, frontier
  marked), ``fig-dynamics`` (diversity dynamics through SFT and GRPO), ``fig-lora`` (‖ΔW‖_F
  heatmaps layer × module, the two first adapters and their difference); tables ``table-main``,
  ``table-stats`` (the evaluation job's tests over prompts, given the two models) and
  ``table-seeds`` (an experiment's tests over seeds, paired by seed id, each interval labelled
  with what it holds fixed) and ``table-selection`` (what a sweep or an experiment chose, on which
  split, by which metric, among what) and ``table-hypotheses`` (an experiment's declared claims, each
  with its tests and verdict). A figure whose input is missing is replaced by a short note in a div with
  the same id and class ``skipped`` (``fig-axis``, ``fig-startup``, ``fig-training``, ``fig-turns`` and
  ``fig-episodes`` are left out instead).
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
      "training": [{"run": "poly", "phase": "grpo", "step": 1, "loss": 0.1, "reward_mean": 0.4, ...}, ...],
      "startup": {"components": {"ray": {"asked": 0.1, "ready": 6.2},      # a run's startup.json: seconds
                                 "rollout worker 0": {"asked": 6.3, "process": 6.5, "init": 8.0,
                                                      "ready": 25.1}, ...}},  # since the run's start
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

from polyray.eval.figures import FIGURE_IDS, FIGURES, ONLY_WITH_INPUT, report_models, value
from polyray.eval.report_tables import (
    best_per_column,
    html_hypotheses_table,
    html_main_table,
    html_seed_table,
    html_selection_table,
    html_stats_table,
    main_table_rows,
)

__all__ = ["FIGURE_IDS", "render_html", "render_latex_table", "write_report", "write_samples_jsonl"]


# --------------------------------------------------------------------------- LaTeX


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
    header, rows = main_table_rows(results)
    if not rows:
        raise ValueError("results['models'] is empty: nothing to tabulate")
    best = best_per_column(rows)
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


def render_html(results: dict[str, Any], omit_missing: bool = False) -> str:
    """The report as one self-contained HTML string (plotly.js inlined, no network); ``omit_missing``: a figure
    whose input is missing is left out, not shown as a note (a run's report shows what the run measured)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    if not isinstance(results, dict):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    title = html.escape(str(results.get("title", "polyray evaluation")))
    body = [f"<h1>{title}</h1>"]
    table = html_main_table(results)
    body.append('<section id="section-table"><h2>Main table</h2>')
    body.append(table or '<div id="table-main" class="skipped">Skipped: no models in results[\'models\'].</div>')
    body.append("</section>")
    selection = html_selection_table(results)
    if selection:
        body.append(f'<section id="section-selection"><h2>Selection (validation only)</h2>{selection}</section>')
    hypotheses = html_hypotheses_table(results)
    if hypotheses:
        body.append(f'<section id="section-hypotheses"><h2>Hypotheses (declared in advance)</h2>{hypotheses}</section>')
    stats = html_stats_table(results)
    if stats:
        body.append(f'<section id="section-stats"><h2>Statistics</h2>{stats}</section>')
    seeds = html_seed_table(results)
    if seeds:
        body.append(f'<section id="section-seeds"><h2>Comparisons over seeds</h2>{seeds}</section>')
    for div_id, heading, build in FIGURES:
        fig, reason = build(results)
        if fig is None and (div_id in ONLY_WITH_INPUT or omit_missing):
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


def write_report(out_dir: str | Path, results: dict[str, Any], omit_missing: bool = False) -> dict[str, Path]:
    """Write ``report.html`` and ``tables.tex`` (when there are models) into ``out_dir`` (``omit_missing``:
    :func:`render_html`'s).

    Returns:
        {"html": path, "tex": path} (``tex`` absent when ``results['models']`` is empty).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html"}
    paths["html"].write_text(render_html(results, omit_missing), encoding="utf-8")
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
