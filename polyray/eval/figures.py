"""The report's figures (plotly), one builder per figure id; :mod:`polyray.eval.report` assembles them.

Each builder takes the report's ``results`` (schema in :mod:`polyray.eval.report`) and returns
``(figure, None)``, or ``(None, reason)`` when its input is missing, so the report shows a note
instead. Models are read as :class:`~polyray.eval.record.EvalRecord` (:func:`report_models`),
whichever producer made them: the evaluation job, a sweep's settings or an experiment's models.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from polyray.eval.analysis import dynamics_trajectories, lora_heatmap_matrix, pareto_frontier
from polyray.eval.record import Estimate, EvalRecord, split_at_key

__all__ = ["FIGURES", "FIGURE_IDS", "ONLY_WITH_INPUT", "report_ks", "report_models", "value"]

FIGURE_IDS = (
    "fig-axis",
    "fig-startup",
    "fig-training",
    "fig-passk",
    "fig-turns",
    "fig-episodes",
    "fig-usq",
    "fig-pareto",
    "fig-dynamics",
    "fig-lora",
)
_PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


# --------------------------------------------------------------------------- values


def value(v: Any) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a value: an Estimate, a number or {"mean", "low", "high"}; None -> NaN."""
    e = Estimate.of(v)
    return e.mean, e.low, e.high


def report_models(results: dict[str, Any]) -> dict[str, EvalRecord]:
    """``results["models"]`` as records (each an EvalRecord or its JSON form), in display order."""
    models = results.get("models") or {}
    if not isinstance(models, dict):
        raise ValueError(f"results['models'] must be a dict of model name -> record, got {type(models).__name__}")
    return {name: EvalRecord.from_json(m) for name, m in models.items()}


def report_ks(results: dict[str, Any]) -> list[int]:
    """The k of the pass@k columns and curves: ``results["ks"]``, default every k a model has."""
    if results.get("ks"):
        return sorted(int(k) for k in results["ks"])
    return sorted({k for m in report_models(results).values() for k in m.pass_at_k})


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


# --------------------------------------------------------------------------- figures


def _fig_passk(results: dict[str, Any]):
    import plotly.graph_objects as go

    models, ks = report_models(results), report_ks(results)
    fig = go.Figure()
    for i, (name, m) in enumerate(models.items()):
        curve = m.pass_at_k
        pts = [(k, *value(curve[k])) for k in ks if k in curve]
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
                x=x,
                y=[p[1] for p in pts],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": _color(i)},
            )
        )
    if not fig.data:
        return None, "no model has a pass@k curve"
    fig.update_layout(title="Pass@k (mean over prompts, 95% CI band)", xaxis_title="k", yaxis_title="pass@k")
    fig.update_xaxes(type="log" if ks and max(ks) / min(ks) >= 16 else "linear", tickvals=ks)
    return fig, None


def _fig_usq(results: dict[str, Any]):
    import plotly.graph_objects as go

    models, ks = report_models(results), report_ks(results)
    fig = go.Figure()
    for i, (name, m) in enumerate(models.items()):
        usq = m.usq_at_k
        if not usq:
            continue
        curve = m.pass_at_k
        kk = sorted(usq)
        pk = [k for k in kk if k in curve]
        if pk:
            fig.add_trace(
                go.Scatter(
                    x=pk,
                    y=[value(curve[k])[0] for k in pk],
                    mode="lines+markers",
                    name=f"{name} pass@k (oracle)",
                    legendgroup=name,
                    line={"color": _color(i)},
                )
            )
        vals = [value(usq[k]) for k in kk]
        err = None
        if all(v[1] is not None and v[2] is not None for v in vals):
            err = {
                "type": "data",
                "symmetric": False,
                "array": [v[2] - v[0] for v in vals],
                "arrayminus": [v[0] - v[1] for v in vals],
            }
        sel = m.usq_selector
        fig.add_trace(
            go.Scatter(
                x=kk,
                y=[v[0] for v in vals],
                mode="lines+markers",
                error_y=err,
                legendgroup=name,
                name=f"{name} USQ@k" + (f" ({sel})" if sel else ""),
                line={"color": _color(i), "dash": "dash"},
                marker={"symbol": "diamond"},
            )
        )
    if not fig.data:
        return None, "no model has USQ@k values (results['models'][*]['usq@k'])"
    fig.update_layout(
        title="USQ@k (selector's pick) vs pass@k (oracle pick) per k", xaxis_title="k", yaxis_title="quality"
    )
    fig.update_xaxes(tickvals=ks or None)
    return fig, None


def _pareto_points(results: dict[str, Any]) -> tuple[list[tuple[str, float, float]], str, str]:
    models, ks = report_models(results), report_ks(results)
    cfg = results.get("pareto") or {}
    div_names = [d for m in models.values() for d in m.diversity]
    # a diversity, or any record key (pass@10)
    div = cfg.get("diversity") or (div_names[0] if div_names else None)
    points = []
    for name, m in models.items():
        q = m.quality
        if q is None and ks:
            q = m.pass_at_k.get(min(ks))
        d = m.get(div) if div else None
        if q is not None and d is not None:
            points.append((name, value(q)[0], value(d)[0]))
    for p in cfg.get("points") or []:
        points.append((str(p["name"]), value(p["quality"])[0], value(p["diversity"])[0]))
    points = [p for p in points if math.isfinite(p[1]) and math.isfinite(p[2])]
    from polyray.eval.record import metric_label

    return (
        points,
        cfg.get("quality_label", f"pass@{min(ks)}" if ks else "quality"),
        metric_label(div) if div else "diversity",
    )


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
            x=[p[1] for p in front],
            y=[p[2] for p in front],
            mode="lines",
            name="Pareto frontier",
            line={"color": "#444", "dash": "dot", "shape": "hv"},
        )
    )
    styles = ((True, "non-dominated", "star", "#d62728"), (False, "dominated", "circle", "#888"))
    for on, label, symbol, color in styles:
        sel = [p for p, m in zip(points, mask) if bool(m) == on]
        if sel:
            fig.add_trace(
                go.Scatter(
                    x=[p[1] for p in sel],
                    y=[p[2] for p in sel],
                    mode="markers+text",
                    name=label,
                    text=[p[0] for p in sel],
                    textposition="top center",
                    marker={"symbol": symbol, "size": 14 if on else 10, "color": color},
                )
            )
    fig.update_layout(title="Quality vs diversity (both maximised)", xaxis_title=qlabel, yaxis_title=dlabel)
    return fig, None


def _trajectory_figure(traj: list[dict[str, Any]], title: str):
    """One subplot per metric of ``traj`` (:func:`polyray.eval.analysis.dynamics_trajectories`) on the shared
    step axis, a line per run, dashed lines where a run's phase changes."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from polyray.eval.record import metric_label

    metrics = list(dict.fromkeys(t["metric"] for t in traj))
    runs = list(dict.fromkeys(t["run"] for t in traj))
    titles = [metric_label(m) for m in metrics]
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.06)
    for t in traj:
        i = runs.index(t["run"])
        row = metrics.index(t["metric"]) + 1
        fig.add_trace(
            go.Scatter(
                x=t["x"],
                y=t["value"],
                mode="lines+markers",
                name=t["run"],
                legendgroup=t["run"],
                showlegend=row == 1,
                line={"color": _color(i)},
                customdata=list(zip(t["phase"], t["step"])),
                hovertemplate="%{customdata[0]} step %{customdata[1]}: %{y:.4f}<extra>" + t["run"] + "</extra>",
            ),
            row=row,
            col=1,
        )
    # phase boundaries on the shared axis: where a run's phase changes
    bounds = set()
    for t in traj:
        for j in range(1, len(t["phase"])):
            if t["phase"][j] != t["phase"][j - 1]:
                bounds.add(((t["x"][j - 1] + t["x"][j]) / 2, t["phase"][j]))
    for x, phase in sorted(bounds):
        fig.add_vline(x=x, line={"dash": "dash", "color": "#999"}, annotation_text=f"→ {phase}")
    fig.update_layout(title=title, height=max(350, 260 * len(metrics)))
    fig.update_xaxes(title_text="step", row=len(metrics), col=1)
    return fig


def _fig_dynamics(results: dict[str, Any]):
    records = results.get("dynamics") or []
    traj = dynamics_trajectories(records) if records else []
    if not traj:
        return None, "no diversity-dynamics records (results['dynamics'])"
    return _trajectory_figure(traj, "Diversity dynamics (SFT then GRPO)"), None


# a run's step rows as its training curves show them: the loss, GRPO's reward, KL and clipped fraction,
# and the rollout engine's disagreement with the learner (the mismatch measure, the sync canary's gap)
TRAINING_METRICS = ("loss", "reward_mean", "kl", "clip_frac", "mismatch_abs", "canary_gap")


# a multi-turn run's GRPO steps: turns used, failed episodes, and the share solved by each turn
EPISODE_METRICS = ("turns_mean", "episode_errors")


def _solved_by_turn(rows: list[dict[str, Any]]) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith("solved_turn") and k.endswith("_frac") and k[11:-5].isdigit()}
    return sorted(keys, key=lambda k: int(k[len("solved_turn") : -len("_frac")]))


def _fig_training(results: dict[str, Any]):
    rows = [r for r in results.get("training") or [] if "event" not in r]
    wanted = (*TRAINING_METRICS, *EPISODE_METRICS, *_solved_by_turn(rows))
    present = [m for m in wanted if any(m in r for r in rows)]
    traj = dynamics_trajectories(rows, present) if present else []
    if not traj:
        return None, "no training step rows (results['training'])"
    return _trajectory_figure(traj, "Training curves"), None


def turn_pass_at_k(record: EvalRecord) -> dict[int, dict[int, Any]]:
    """k -> {turn t: pass@k after turn t}: a multi-turn evaluation's ``turn<t>/pass@<k>`` extras."""
    out: dict[int, dict[int, Any]] = {}
    for key, v in record.extra.items():
        turn, _, k = key[len("turn") :].partition("/pass@")
        if key.startswith("turn") and turn.isdigit() and k.isdigit():
            out.setdefault(int(k), {})[int(turn)] = v
    return out


def _fig_turns(results: dict[str, Any]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    curves = {name: c for name, m in report_models(results).items() if (c := turn_pass_at_k(m))}
    if not curves:
        return None, "no multi-turn evaluation (turn<t>/pass@<k>)"
    ks = sorted({k for c in curves.values() for k in c})
    fig = make_subplots(rows=1, cols=len(ks), shared_yaxes=True, subplot_titles=[f"pass@{k}" for k in ks])
    for i, (name, by_k) in enumerate(curves.items()):
        for col, k in enumerate(ks, 1):
            turns = sorted(by_k.get(k, {}))
            fig.add_trace(
                go.Scatter(
                    x=turns,
                    y=[value(by_k[k][t])[0] for t in turns],
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line={"color": _color(i)},
                ),
                row=1,
                col=col,
            )
    turns = sorted({t for c in curves.values() for by_t in c.values() for t in by_t})
    fig.update_xaxes(title_text="after turn", tickvals=turns)
    fig.update_layout(title="Pass@k after each turn (an episode solved earlier stays solved)", height=420)
    return fig, None


# a multi-turn evaluation's episode measures, one bar chart each
EPISODE_MEASURES = (
    ("turns_mean", "turns used (mean)"),
    ("model_tokens_per_episode", "model tokens per episode"),
    ("episode_errors", "failed episodes"),
)


def _fig_episodes(results: dict[str, Any]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = {name: m for name, m in report_models(results).items() if "turns_mean" in m.extra}
    if not models:
        return None, "no multi-turn evaluation (turns_mean)"
    fig = make_subplots(rows=1, cols=len(EPISODE_MEASURES), subplot_titles=[t for _, t in EPISODE_MEASURES])
    for col, (key, _) in enumerate(EPISODE_MEASURES, 1):
        fig.add_trace(
            go.Bar(
                x=list(models),
                y=[value(m.extra.get(key))[0] for m in models.values()],
                marker={"color": [_color(i) for i in range(len(models))]},
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    fig.update_layout(title="Episodes at each evaluation", height=380)
    return fig, None


# a start-up trace's segments: (label, from mark, to mark), each one bar trace
STARTUP_SEGMENTS = (
    ("asked, no process yet", "asked", "process"),
    ("process starting (imports)", "process", "init"),
    ("constructor to ready", "init", "ready"),
    ("asked to ready", "asked", "ready"),
)


def startup_segments(components: dict[str, dict[str, float]]) -> dict[str, list[tuple[str, float, float]]]:
    """Per segment label, the (component, start, end) bars of a start-up trace: a component that reported its
    process's and constructor's start gets those segments, one the driver timed alone gets asked to ready."""
    out: dict[str, list[tuple[str, float, float]]] = {label: [] for label, _, _ in STARTUP_SEGMENTS}
    for name, marks in components.items():
        detailed = "init" in marks
        for label, a, b in STARTUP_SEGMENTS:
            if (label == "asked to ready") == detailed or a not in marks or b not in marks:
                continue
            # a process Ray had started before the component was asked for: no waiting segment
            if marks[b] > marks[a]:
                out[label].append((name, marks[a], marks[b]))
    return out


def _fig_startup(results: dict[str, Any]):
    import plotly.graph_objects as go

    components = (results.get("startup") or {}).get("components") or {}
    bars = startup_segments(components)
    if not any(bars.values()):
        return None, "no start-up trace (results['startup'])"
    order = list(components)
    fig = go.Figure()
    for i, (label, rows) in enumerate(bars.items()):
        if rows:
            fig.add_trace(
                go.Bar(
                    name=label,
                    orientation="h",
                    y=[r[0] for r in rows],
                    base=[r[1] for r in rows],
                    x=[r[2] - r[1] for r in rows],
                    marker_color=_color(i),
                    hovertemplate="%{y}: %{base:.1f} s to %{x:.1f} s later<extra>" + label + "</extra>",
                )
            )
    fig.update_layout(
        barmode="overlay",
        title="Start-up: each component from when it was asked for to when it was ready",
        xaxis_title="seconds since the run started",
        yaxis={"categoryorder": "array", "categoryarray": order[::-1]},
        height=max(300, 40 * len(order) + 160),
    )
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
                z=z,
                x=modules,
                y=[str(layer) for layer in layers],
                coloraxis="coloraxis2" if is_diff else "coloraxis",
                hovertemplate="layer %{y}, %{x}: %{z:.4g}<extra>" + title + "</extra>",
            ),
            row=1,
            col=j,
        )
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


def _fig_axis(results: dict[str, Any]):
    """pass@k against one swept value (a sweep's axis), mean with CI error bars per k."""
    import plotly.graph_objects as go

    axis = results.get("axis")
    if not axis or not axis.get("points"):
        return None, "not a sweep over one axis (results['axis'] absent)"
    points = sorted(axis["points"], key=lambda p: (not isinstance(p["x"], (int, float)), p["x"]))
    keys = {k: split_at_key(k) for p in points for k in p}
    names = sorted((k for k, s in keys.items() if s and s[0] == "pass"), key=lambda k: keys[k][1])
    fig = go.Figure()
    xs = [p["x"] for p in points]
    for i, name in enumerate(names):
        vals = [value(p.get(name)) for p in points]
        means = [m for m, _, _ in vals]
        plus = [(hi - m) if hi is not None else 0.0 for m, _, hi in vals]
        minus = [(m - lo) if lo is not None else 0.0 for m, lo, _ in vals]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=means,
                mode="lines+markers",
                name=name,
                line={"color": _color(i)},
                error_y={"type": "data", "array": plus, "arrayminus": minus, "visible": True},
            )
        )
    fig.update_layout(xaxis_title=str(axis.get("name", "value")), yaxis_title="pass@k (mean, 95% CI over seeds)")
    return fig, ""


# a sweep's figure and a run's: absent, not "skipped", in other reports
ONLY_WITH_INPUT = {"fig-axis", "fig-startup", "fig-training", "fig-turns", "fig-episodes"}
FIGURES = (
    ("fig-axis", "Pass@k against the swept value", _fig_axis),
    ("fig-startup", "Start-up", _fig_startup),
    ("fig-training", "Training curves", _fig_training),
    ("fig-passk", "Pass@k curves", _fig_passk),
    ("fig-turns", "Pass@k by turn", _fig_turns),
    ("fig-episodes", "Multi-turn episodes", _fig_episodes),
    ("fig-usq", "USQ@k vs Pass@k", _fig_usq),
    ("fig-pareto", "Pareto frontier: quality vs diversity", _fig_pareto),
    ("fig-dynamics", "Diversity dynamics", _fig_dynamics),
    ("fig-lora", "LoRA parameter analysis", _fig_lora),
)
