"""The HTML report renders every figure in headless Chromium, offline, with no network request.

Needs Debian's chromium (``apt-get install -y chromium``) and the ``playwright`` Python
package (driving the system browser; playwright's own browser download is not used).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from support.browser import draw_report

from polyray.eval.report import FIGURE_IDS, render_latex_table, write_report, write_samples_jsonl

pytestmark = pytest.mark.slow


def _ci(m: float, h: float) -> dict:
    return {"mean": m, "low": m - h, "high": m + h}


def _lora_rows(scale: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "layer": layer,
            "module": mod,
            "module_path": f"self_attn.{mod}",
            "frobenius_norm": float(scale * rng.random()),
            "effective_rank": float(1 + 3 * rng.random()),
        }
        for layer in range(4)
        for mod in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]


def synthetic_results() -> dict:
    ks = [1, 2, 5, 10]
    models = {}
    for i, name in enumerate(["base", "lora", "polychromic"]):
        p1 = 0.2 + 0.1 * i
        models[name] = {  # evaluation records (polyray.eval.record) in their JSON form
            **{f"pass@{k}": _ci(1 - (1 - p1) ** (k ** (0.6 + 0.1 * i)), 0.02) for k in ks},
            **{f"usq@{k}": _ci(p1 + 0.4 * (1 - (1 - p1) ** k - p1), 0.015) for k in ks},
            "usq_selector": "reward_model",
            "diversity/semantic": _ci(0.3 + 0.1 * i - 0.05 * (i == 1), 0.01),
            "diversity/distinct_2": 0.5 + 0.05 * i,
            # a multi-turn evaluation's
            **{f"turn{t}/pass@{k}": min(1.0, p1 * (1 + 0.3 * (t - 1)) * k**0.5) for t in (1, 2, 3) for k in ks},
            "turns_mean": 1.4 + 0.2 * i,
            "model_tokens_per_episode": 20.0 + 3 * i,
            "episode_errors": i,
        }
    dynamics = []
    for run, sign in (("lora", -1), ("polychromic", 1)):
        for phase, steps in (("sft", range(0, 50, 10)), ("grpo", range(0, 40, 10))):
            for s in steps:
                dynamics.append(
                    {
                        "run": run,
                        "phase": phase,
                        "step": s,
                        "diversity/semantic": 0.4 + sign * 0.002 * s - (0.1 if phase == "grpo" else 0),
                        "diversity/distinct_2": 0.6 + sign * 0.001 * s,
                    }
                )
    training = [
        {"run": "polychromic", "phase": phase, "step": s, "loss": 1.0 / s, "reward_mean": 0.02 * s, "kl": 0.001 * s}
        | ({"turns_mean": 2 - 0.05 * s, "solved_turn1_frac": 0.02 * s, "solved_turn2_frac": 0.03 * s}
           if phase == "grpo" else {})
        for phase in ("sft", "grpo")
        for s in range(1, 11)
    ]  # fmt: skip
    startup = {
        "components": {
            "driver": {"process": -4.0, "init": 0.0, "ready": 0.0},
            "ray": {"asked": 0.1, "ready": 6.2},
            "rollout worker 0": {"asked": 6.3, "process": 6.9, "init": 8.1, "ready": 25.0},
            "learner rank 0": {"asked": 6.4, "process": 5.0, "init": 7.0, "ready": 19.5},
            "base evaluation": {"asked": 25.1, "ready": 31.0},
        }
    }
    return {
        "title": "synthetic report",
        "startup": startup,
        "training": training,
        "ks": ks,
        "models": models,
        "pareto": {"diversity": "semantic", "points": [{"name": "λ=0.5", "quality": 0.35, "diversity": 0.6}]},
        "axis": {"name": "phases.0.lam", "points": [
            {"x": lam, "pass@1": {"mean": 0.2 + 0.1 * lam, "low": 0.15 + 0.1 * lam, "high": 0.25 + 0.1 * lam},
             "pass@10": {"mean": 0.5 + 0.2 * lam, "low": 0.45 + 0.2 * lam, "high": 0.55 + 0.2 * lam}}
            for lam in (0.0, 0.1, 0.3, 1.0)]},
        "dynamics": dynamics,
        "lora": {"baseline": _lora_rows(1.0, 0), "polychromic": _lora_rows(1.5, 1)},
        "stats": {
            "polychromic vs lora (pass@10)": {
                "mean_diff": 0.05, "bootstrap_ci": {"low": 0.01, "high": 0.09},
                "mann_whitney": {"pvalue": 0.04}, "wilcoxon": {"pvalue": 0.01}, "paired_t": {"pvalue": 0.02},
                "pvalue_holm": 0.03, "cohens_d": 0.4, "cohens_dz": 0.5, "cliffs_delta": 0.2,
            }
        },
    }  # fmt: skip


def test_report_files_without_browser(tmp_path):
    res = synthetic_results()
    json.dumps(res)  # the schema is JSON-serialisable
    paths = write_report(tmp_path, res)
    html = paths["html"].read_text()
    for fid in FIGURE_IDS:
        assert f'id="{fid}"' in html
    assert 'class="skipped"' not in html
    # nothing loaded from elsewhere (URLs inside the inlined plotly.js are strings, not requests)
    assert re.search(r"<(script|link|img|iframe)[^>]*(src|href)=[\"']?(https?:)?//", html) is None
    tex = paths["tex"].read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "polychromic" in tex
    assert r"$\pm$ 0.020" in tex and r"\textbf{" in tex
    # missing inputs: figures skipped with a note, not an error
    minimal = {"models": {"a_b": {"pass@1": 0.2, "pass@5": 0.5}}}
    html = write_report(tmp_path / "min", minimal)["html"].read_text()
    for fid in ("fig-usq", "fig-pareto", "fig-dynamics", "fig-lora"):
        assert f'<div id="{fid}" class="skipped">' in html
    # a sweep's and a run's only
    assert not [
        f for f in ("fig-axis", "fig-startup", "fig-training", "fig-turns", "fig-episodes") if f'id="{f}"' in html
    ]
    assert r"a\_b" in render_latex_table(minimal)
    rows = [{"prompt_id": "p0", "rewards": np.array([1.0, 0.0]), "c": np.int64(1)}]
    p = write_samples_jsonl(tmp_path / "samples.jsonl", rows)
    assert json.loads(p.read_text().splitlines()[0]) == {"prompt_id": "p0", "rewards": [1.0, 0.0], "c": 1}


def test_report_renders_in_headless_chromium(tmp_path):
    paths = write_report(tmp_path, synthetic_results())
    seen = draw_report(paths["html"], FIGURE_IDS, screenshot=tmp_path / "report.png")
    assert all(n > 0 for n in seen["drawn"].values()), seen["drawn"]
    assert all(v > 0.003 for v in seen["ink"].values()), f"blank figures: {seen['ink']}"
    assert all(v > 50.0 for v in seen["variance"].values()), seen["variance"]
    url = seen["url"]
    assert seen["requests"] == [url], f"unexpected requests or page errors: {[r for r in seen['requests'] if r != url]}"
