"""`polyray eval` end to end on the embedded model: base zero-/few-shot and two LoRA adapters of a
fake run directory, on countdown, a JSONL replies task scored by an engagement model, and a `code`
task (a human-eval-format JSONL, the task runs train on) judged in the sandbox, in one job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "engagement.jsonl"
N, KS = 4, [1, 2, 4]


def _eval_command() -> list[str]:
    return [sys.executable, "-m", "polyray.cli", "eval"]


def _fake_run(run: Path, model_dir: Path, run_config) -> None:
    """adapters/{sft,grpo}: random-init LoRA (B perturbed so the adapters differ from the base and each other)."""
    from support.phase_harness import random_lora_policy

    from polyray.learner.lora import save_adapter

    for seed, phase in enumerate(("sft", "grpo")):
        model, _ = random_lora_policy(model_dir, run_config.learner.lora, seed)
        save_adapter(model, run / "adapters" / phase)
    (run / "config.resolved.yaml").write_text(
        yaml.safe_dump(
            {"model": run_config.model.model_dump(mode="json"), "phases": [{"name": "sft"}, {"name": "grpo"}]}
        )
    )
    lines = [{"phase": p, "step": s, "diversity/distinct_1": 0.5 + 0.01 * s} for p in ("sft", "grpo") for s in (0, 10)]
    (run / "dynamics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory, model_dir, run_config):
    from polyray.reward.engagement import train_engagement_model

    tmp = tmp_path_factory.mktemp("eval")
    _fake_run(tmp / "run", model_dir, run_config)
    train_engagement_model(FIXTURE, tmp / "engagement")
    problems = tmp / "problems.jsonl"
    problems.write_text(
        "".join(
            json.dumps(
                {
                    "task_id": f"toy/{i}",
                    "prompt": f"def f{i}():\n",
                    "test": f"def check(c):\n    assert c() == {i}\n",
                    "entry_point": f"f{i}",
                    "canonical_solution": f"    return {i}\n",
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    config = {
        "name": "e2e_eval",
        "models": [
            {"name": "base", "kind": "base"},
            {"name": "fs", "kind": "few_shot", "few_shot": 2},
            {"name": "run", "kind": "adapter", "path": str(tmp / "run")},
        ],
        "tasks": [
            {"type": "countdown", "n_prompts": 6},
            {
                "type": "replies",
                "path": str(FIXTURE),
                "split": "all",
                "n_prompts": 3,
                "sampling": {"max_tokens": 16, "stop": ["\n"]},
            },
            {"type": "code", "path": str(problems), "split": "all", "n_prompts": 4, "sampling": {"max_tokens": 12}},
        ],
        "reward_model": str(tmp / "engagement"),
        "n_samples": N,
        "ks": KS,
        "diversity": ["distinct_1", "semantic", "countdown_expr"],
        "compare": [["run/sft", "base"], ["run/grpo", "run/sft"]],
        "lora": [["run/sft", "run/grpo"]],
        "bootstrap_resamples": 1000,
    }
    (tmp / "eval.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = tmp / "out"
    proc = subprocess.run(
        # cluster.storage: the rollout workers get the model and the adapters as references into it
        [
            *_eval_command(),
            str(tmp / "eval.yaml"),
            "--output-dir",
            str(out),
            "--set",
            "seed=1",
            "--set",
            f"cluster.storage={tmp / 'storage'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


def test_results_cover_every_model_and_task(eval_run):
    out, proc = eval_run
    results = json.loads((out / "results.json").read_text())  # strict JSON: NaN would fail here
    expected = {f"{m} [countdown]" for m in ("base", "fs", "run/sft", "run/grpo")}
    expected |= {f"{m} [replies]" for m in ("base", "run/sft", "run/grpo")}
    expected |= {f"{m} [code]" for m in ("base", "run/sft", "run/grpo")}
    assert set(results["models"]) == expected
    # the tiny model's 128 tokens cannot hold 2 English few-shot examples: skipped and counted, not a crash
    assert results["tasks"]["replies"]["skipped_too_long"]["fs"] == 3
    assert {(s["task"], s["model"]) for s in results["skipped"]} == {
        ("replies", "fs"),
        ("code", "fs"),
    }  # code: no train split
    assert "fs on replies: skipped" in proc.stderr
    assert results["usq_selector"] == "reward_model"
    for label, m in results["models"].items():  # each an evaluation record's JSON (polyray.eval.record)
        curve = [m[f"pass@{k}"]["mean"] for k in KS]
        assert curve == sorted(curve), label
        for k in KS:
            u = m["usq_by_selector"]["reward_model"][f"usq@{k}"]
            assert u["random"] - 1e-9 <= m["usq_by_selector"]["oracle"][f"usq@{k}"]["usq"] <= 1 + 1e-9
            assert u["random"] - 1e-9 <= u["oracle"], label
        diversity = {key.split("/", 1)[1] for key in m if key.startswith("diversity/")}
        assert diversity >= {"distinct_1", "semantic"}
        assert ("countdown_expr" in diversity) == (m["task"] == "countdown")
        assert "pass_at_k" not in json.dumps(m)  # one spelling: pass@k
    replies = results["models"]["base [replies]"]
    quality = {key.split("/", 1)[1] for key in replies if key.startswith("reference_quality/")}
    assert quality == {"rouge1", "rouge2", "rougeL", "embedding", "engagement"}
    assert len(results["stats"]) == 2 * 3 * 3  # 2 pairs x 3 tasks x (pass@1, pass@4, usq)
    # Holm-adjusted across every comparison of the run, one family of 18: never below a raw p, the smallest times 18
    stats = list(results["stats"].values())
    assert all(s["primary_pvalue"] <= s["pvalue_holm"] <= 1 for s in stats)
    assert min(s["pvalue_holm"] for s in stats) == pytest.approx(min(1.0, 18 * min(s["primary_pvalue"] for s in stats)))
    # the code task: every problem sampled by each model and each sample judged by its tests in the sandbox
    code = results["models"]["base [code]"]
    assert code["task"] == "code" and code["n_prompts"] == 4
    assert set(results["lora"]) == {"run/sft", "run/grpo"} and results["lora"]["run/sft"][0]["frobenius_norm"] > 0
    assert {r["run"] for r in results["dynamics"]} == {"run"} and len(results["dynamics"]) == 4
    storage = out.parent / "storage"  # what the workers read: the base model and both adapters, put once
    assert len(list((storage / "models").iterdir())) == 1 and len(list((storage / "adapters").iterdir())) == 2


def test_samples_and_report_written(eval_run):
    out, _ = eval_run
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 6 + 3 * 3 + 3 * 4  # evaluated (model, prompt) pairs
    for row in rows:
        assert row["n"] == N and len(row["completions"]) == N and len(row["rewards"]) == N
        assert set(row["selector_scores"]) == {"logprob", "reward_model"}
    assert all(len(row["extra"]["judge"]) == N for row in rows if row["task"] == "code")  # each sample judged
    html = (out / "report.html").read_text()
    for div in ("table-main", "table-stats", "fig-passk", "fig-usq", "fig-pareto", "fig-dynamics", "fig-lora"):
        assert f'id="{div}"' in html
    assert 'class="skipped"' not in html  # every figure had its inputs
    assert "\\begin{tabular}" in (out / "tables.tex").read_text()
    assert (out / "config.resolved.yaml").is_file()


def test_rerun_resumes_from_the_saved_units(eval_run):
    """Every unit was saved as it finished; the same job again restores them all, starts no rollout
    pool, and reports the same numbers."""
    out, proc = eval_run
    stages = [json.loads(line)["stage"] for line in (out / "units.jsonl").read_text().splitlines()]
    assert stages.count("generated") == stages.count("judged") == 10  # 4 countdown + 3 replies + 3 code units
    first = json.loads((out / "results.json").read_text())
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    again = subprocess.run(
        [*_eval_command(), str(out.parent / "eval.yaml"), "--output-dir", str(out), "--set", "seed=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert "resuming: 10 of 10 units found" in again.stderr
    second = json.loads((out / "results.json").read_text())
    assert "rollout_pool_start" not in second["timings_s"]
    for label, m in first["models"].items():
        passk = [f"pass@{k}" for k in KS]
        assert [second["models"][label][key] for key in passk] == [m[key] for key in passk], label
