"""Reward functions, registry, scorer and HTTP contract, without Ray.

The engagement tests train the real model (frozen MiniLM + ridge head) once per module
through the job entrypoint, so they are marked slow (~10-20 s on CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI, Request

from polyray.reward import RewardError, RewardItem, UnknownRewardError, build_reward, known_rewards
from polyray.reward.scorer import RewardScorer, ScoreJob, score_jobs
from polyray.tasks import countdown as cd

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "engagement.jsonl"


def item(completion: str, prompt: str = "p", **meta) -> RewardItem:
    return RewardItem(prompt=prompt, completion=completion, metadata=meta)


# ------------------------------------------------------------------------------ registry
def test_registry_lists_builtin_rewards():
    assert {"countdown", "code_exec", "engagement", "length"} <= set(known_rewards())


def test_unknown_reward_names_the_known_ones():
    with pytest.raises(KeyError) as info:
        build_reward("nope")
    assert isinstance(info.value, UnknownRewardError)
    assert "nope" in str(info.value) and "countdown" in str(info.value) and "length" in str(info.value)


def test_bad_parameters_name_the_field():
    with pytest.raises(RewardError, match="max_lenght"):
        build_reward("length", max_lenght=10)
    with pytest.raises(RewardError, match="min_length must be <= max_length"):
        build_reward("length", min_length=50, max_length=10)
    with pytest.raises(RewardError, match="model_path"):
        build_reward("engagement")


# ----------------------------------------------------------------------------- countdown
def test_countdown_reward_matches_the_task_verifier():
    prompts = cd.generate_prompts("test", 20, seed=1)
    fn = build_reward("countdown")
    items = [RewardItem(prompt=p.text, completion=p.reference, metadata=p.meta) for p in prompts]
    items += [RewardItem(prompt=p.text, completion=" 1000*1000", metadata=p.meta) for p in prompts]
    results = fn.score_batch(items)
    assert [r.score for r in results] == [1.0] * 20 + [0.0] * 20
    assert results[0].detail["reason"] == "correct"


def test_countdown_reward_parses_the_prompt_when_metadata_is_missing():
    fn = build_reward("countdown")
    prompt = cd.format_prompt((3, 4, 9), 12)
    scores = [
        r.score
        for r in fn.score_batch(
            [item(" 3*4", prompt), item(" 9+3", prompt), item(" 9+4", prompt), item(" 4*3*1", prompt)]
        )
    ]
    assert scores == [1.0, 1.0, 0.0, 0.0]  # 1 is not among the numbers


def test_countdown_reward_explains_unusable_items():
    fn = build_reward("countdown")
    no_meta, bad_meta = fn.score_batch([item("3+4", "what is 3+4?"), item("3+4", numbers="3 4", target=7)])
    assert no_meta.score == 0.0 and "nums" in no_meta.detail["reason"]
    assert bad_meta.score == 0.0 and "numbers" in bad_meta.detail["reason"]


# ----------------------------------------------------------------------------- heuristic
def test_length_reward_shapes():
    fn = build_reward("length", min_length=3, max_length=6)
    empty, short, good, long_, loop = fn.score_batch(
        [
            item("   "),
            item("hi"),
            item("a fine short answer"),
            item(" ".join(f"w{i}" for i in range(9))),
            item("the cat " * 5),
        ]
    )
    assert empty.score == 0.0 and empty.detail["reason"] == "empty completion"
    assert short.score == pytest.approx(1 / 3)
    assert good.score == 1.0
    assert long_.score == pytest.approx(0.5)  # 9 words: halfway from 6 to 12
    assert loop.score < 0.5 and loop.detail["distinct_ratio"] < 0.6


def test_length_reward_counts_characters_when_asked():
    fn = build_reward("length", unit="chars", min_length=5, max_length=10)
    assert [r.score for r in fn.score_batch([item("abcdefg"), item("ab")])] == [1.0, pytest.approx(0.4)]


# ----------------------------------------------------------------------------- code_exec
def test_code_exec_reward_runs_tests_in_the_sandbox():
    fn = build_reward("code_exec", timeout_s=10)
    test = "def check(f):\n    assert f(2) == 4\n"
    results = fn.score_batch(
        [
            RewardItem(
                prompt="def double(x):\n",
                completion="    return 2 * x\n",
                metadata={"test": test, "entry_point": "double"},
            ),
            RewardItem(
                prompt="def double(x):\n", completion="    return x\n", metadata={"test": test, "entry_point": "double"}
            ),
            RewardItem(prompt="", completion="", metadata={"task_id": "HumanEval/0"}),
            RewardItem(prompt="x", completion="y"),
        ]
    )
    assert [r.score for r in results] == [1.0, 0.0, 0.0, 0.0]
    assert results[1].detail["status"] == "failed" and "AssertionError" in results[1].detail["stderr"]
    assert results[3].detail["status"] == "error" and "task_id" in results[3].detail["reason"]


# -------------------------------------------------------------------------------- scorer
def test_scorer_refuses_server_only_params_from_requests():
    scorer = RewardScorer({"length": {"max_length": 8}})
    assert scorer.get("length").params["max_length"] == 8
    assert scorer.get("length", {"max_length": 20}, from_request=True).params["max_length"] == 20
    with pytest.raises(RewardError, match="set by the server"):
        scorer.get("engagement", {"model_path": "/etc"}, from_request=True)
    with pytest.raises(RewardError, match="max_workers"):
        scorer.get("code_exec", {"max_workers": 64}, from_request=True)
    with pytest.raises(UnknownRewardError):
        RewardScorer({"nope": {}})
    with pytest.raises(RewardError, match="min_length"):
        RewardScorer({"length": {"min_length": 0}})


def test_scorer_validates_dict_items_with_the_field_name():
    with pytest.raises(RewardError, match=r"items\[1\].*completion"):
        RewardScorer().score("length", [{"prompt": "a", "completion": "b"}, {"prompt": "a"}])


def test_score_jobs_merges_per_reward_and_splits_back_in_order(monkeypatch):
    scorer = RewardScorer()
    calls = []
    original = scorer.score

    def spy(reward, items, params=None, from_request=False):
        calls.append((reward, len(items)))
        return original(reward, items, params, from_request)

    monkeypatch.setattr(scorer, "score", spy)
    prompt = cd.format_prompt((2, 5, 7), 10)
    jobs = [
        ScoreJob("countdown", [item(" 2*5", prompt), item(" 7", prompt)]),
        ScoreJob("length", [item("one two three four five")]),
        ScoreJob("countdown", [item(" 5+7-2", prompt)]),
        ScoreJob("nope", [item("x")]),
    ]
    out = score_jobs(scorer, jobs)
    assert sorted(calls) == [("countdown", 3), ("length", 1), ("nope", 1)]
    assert [r.score for r in out[0]] == [1.0, 0.0] and [r.score for r in out[2]] == [1.0]
    assert out[0][0].detail["batch_size"] == 3 and out[0][0].detail["batch_requests"] == 2
    assert out[1][0].detail["batch_requests"] == 1
    assert isinstance(out[3], UnknownRewardError)  # one bad job does not fail the others


def test_one_bad_item_fails_neither_its_batch_mates_nor_another_callers_request(monkeypatch):
    """A reward that raises on one item: that item alone gets no score (status "error", the reason); the
    other items of its request and every other HTTP caller's request merged into the batch are scored;
    a run's learner (an in-cluster caller) scored beside them keeps its own error, so a run's reward
    bug still stops it."""
    from polyray.reward.heuristic import LengthReward

    original = LengthReward.score_batch

    def fragile(self, items):
        if any(i.completion == "boom" for i in items):
            raise ValueError("cannot judge boom")
        return original(self, items)

    monkeypatch.setattr(LengthReward, "score_batch", fragile)
    scorer = RewardScorer()
    words = "one two three four five"
    hostile = ScoreJob("length", [item(words), item("boom")], from_request=True)
    honest = ScoreJob("length", [item(words), item("six")], from_request=True)
    learner = ScoreJob("length", [item("boom")], from_request=False)
    fine = ScoreJob("length", [item(words)], from_request=False)
    out = score_jobs(scorer, [hostile, honest, learner, fine])
    assert [r.score for r in out[1]] == [r.score for r in original(scorer.get("length"), honest.items)]
    assert out[0][0].score == out[1][0].score and out[0][1].score is None
    assert out[0][1].detail["status"] == "error" and "cannot judge boom" in out[0][1].detail["reason"]
    assert isinstance(out[2], ValueError) and out[3][0].score == out[1][0].score


# ------------------------------------------------------------------------- HTTP contract
def test_service_config_rejects_unknown_keys_and_serve_config_is_valid():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from polyray.config.services import RewardServiceConfig

    with pytest.raises(ValueError, match="max_itemz"):
        RewardServiceConfig.model_validate({"max_itemz": 3})
    raw = yaml.safe_load((ROOT / "services" / "reward.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = [a for a in schema.applications if a.name == "reward"]
    assert app.import_path == "services.reward_app:build_app" and app.route_prefix == "/"
    config = RewardServiceConfig.model_validate(app.args)
    RewardScorer(config.rewards)  # the defaults in the file are valid parameters


def test_the_reward_serve_config_spells_the_defaults_polyray_serve_uses():
    """``polyray serve reward`` without --config runs on the settings' defaults; services/reward.yaml (what
    ``serve deploy`` runs) must mean the same service, its per-reward parameters included."""
    import yaml

    from polyray.config.services import RewardServiceConfig
    from polyray.reward import REWARD_FUNCTIONS

    (app,) = yaml.safe_load((ROOT / "services" / "reward.yaml").read_text())["applications"]
    given, default = RewardServiceConfig.model_validate(app["args"]), RewardServiceConfig()
    assert given.model_dump(exclude={"rewards"}) == default.model_dump(exclude={"rewards"})
    assert default.rewards == {} and given.rewards  # the file writes the functions' defaults out
    for name, params in given.rewards.items():
        cls = REWARD_FUNCTIONS[name].Params
        assert cls.model_validate(params).model_dump() == cls().model_dump(), name


def test_body_size_limit_checks_declared_and_streamed_sizes():
    from fastapi.testclient import TestClient

    from polyray.reward.api import BodySizeLimit

    app = FastAPI()
    app.add_middleware(BodySizeLimit, limit=lambda: 1000)

    @app.post("/echo")
    async def echo(request: Request):
        return {"n": len(await request.body())}

    client = TestClient(app)
    assert client.post("/echo", content=b"x" * 1000).json() == {"n": 1000}
    declared = client.post("/echo", content=b"x" * 1001)
    assert declared.status_code == 413 and "1000 bytes" in declared.json()["error"]["message"]
    chunked = client.post("/echo", content=iter([b"x" * 600, b"x" * 600]))  # no Content-Length
    assert chunked.status_code == 413


def test_cli_reads_the_reward_app_args_from_a_serve_config_or_takes_the_defaults():
    import typer
    from typer.testing import CliRunner

    from polyray.cli.serve import _app_args, serve_app

    assert _app_args(ROOT / "services" / "reward.yaml", "reward")["max_batch_size"] >= 1
    assert _app_args(None, "reward") == {}  # no file: the config model's defaults
    app = typer.Typer()  # registered the way polyray/cli.py does it
    app.add_typer(serve_app, name="serve")
    result = CliRunner().invoke(app, ["serve", "reward", "--help"])
    assert result.exit_code == 0 and "--port" in result.output
    missing = CliRunner().invoke(app, ["serve", "reward", "--config", "/nonexistent.yaml"])
    assert missing.exit_code == 2 and "no Serve config at /nonexistent.yaml" in missing.output
    unnamed = CliRunner().invoke(app, ["serve", "generation"])  # no model to serve: said before Ray starts
    assert unnamed.exit_code == 2 and "--run" in unnamed.output and "--config" in unnamed.output


# ---------------------------------------------------------------------------- engagement
def test_engagement_jsonl_errors_name_the_line(tmp_path):
    from polyray.reward.engagement import EngagementDataError, read_engagement_jsonl

    cases = {
        '{"prompt": "a", "response": "b", "engagement": 1}\n{"prompt": "a", "response": "b"': "not valid JSON",
        '{"prompt": "a", "response": "b", "engagement": 1}\n\n{"prompt": "a", "engagement": 2}': "'response' must be",
        '{"prompt": "a", "response": "b", "engagement": "high"}': "finite number",
        "[1, 2]": "JSON object",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(text)
        with pytest.raises(EngagementDataError, match=message) as info:
            read_engagement_jsonl(path)
        expected_line = {0: 2, 1: 3}.get(i, 1)
        assert f"{path}:{expected_line}:" in str(info.value)


def test_job_reports_bad_jsonl_line_without_traceback(tmp_path, capsys):
    """One error line naming file:line, unfolded whatever the path length (here a 200-character path)."""
    from jobs.train_reward_model import main

    deep = tmp_path / ("d" * (200 - len(str(tmp_path)) - len("/bad.jsonl") - 1))
    deep.mkdir()
    path = deep / "bad.jsonl"
    assert len(str(path)) == 200
    path.write_text('{"prompt": "a", "response": "b", "engagement": 1}\nnot json\n')
    assert main(["--data", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {path}:2: not valid JSON (Expecting value at column 1)"]


def test_stratified_split_is_disjoint_deterministic_and_covers_every_bin():
    from polyray.reward.engagement import read_engagement_jsonl
    from polyray.tasks.splits import stratified_split

    values = [r.engagement for r in read_engagement_jsonl(FIXTURE)]
    splits = stratified_split(values, seed=0)
    assert splits == stratified_split(values, seed=0) and splits != stratified_split(values, seed=1)
    all_idx = splits["train"] + splits["val"] + splits["test"]
    assert sorted(all_idx) == list(range(len(values)))
    ranked = sorted(range(len(values)), key=lambda i: values[i])
    for decile in range(10):  # every engagement decile reaches val and test
        members = set(ranked[decile * len(values) // 10 : (decile + 1) * len(values) // 10])
        assert members & set(splits["val"]) and members & set(splits["test"])


@pytest.fixture(scope="module")
def engagement_model_dir(tmp_path_factory):
    from jobs.train_reward_model import main

    out = tmp_path_factory.mktemp("engagement_model")
    assert main(["--data", str(FIXTURE), "--out", str(out), "--seed", "0"]) == 0
    return out


@pytest.mark.slow
def test_engagement_model_beats_a_constant_predictor(engagement_model_dir):
    metrics = json.loads((engagement_model_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        model, constant = metrics[split], metrics[f"{split}_constant_baseline"]
        assert model["spearman"] > 0.3 and model["pearson"] > 0.3, metrics
        assert model["mse"] < 0.8 * constant["mse"], metrics


@pytest.mark.slow
def test_engagement_model_roundtrip_and_batched_equals_single(engagement_model_dir):
    import numpy as np

    from polyray.reward.engagement import load

    model = load(engagement_model_dir)
    prompts = ["I finally ran my first 10k this morning!"] * 3
    responses = [
        "Congratulations! How did you handle your pacing?",
        "Nobody cares about this.",
        "My printer jammed again.",
    ]
    batched = model.predict(prompts, responses)
    single = np.concatenate([model.predict([p], [r]) for p, r in zip(prompts, responses)])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    assert batched[0] > batched[2] > batched[1] - 1.0 and batched[0] > batched[1]  # warm + on-topic beats rude


@pytest.mark.slow
def test_engagement_reward_function(engagement_model_dir):
    fn = build_reward("engagement", model_path=str(engagement_model_dir))
    assert fn.params["model_path"] == str(engagement_model_dir)
    good, rude = fn.score_batch(
        [
            item(
                "What a great achievement! Any tips for someone new to chess?",
                "Won my first rated chess tournament game today.",
            ),
            item("Honestly, who asked?", "Won my first rated chess tournament game today."),
        ]
    )
    assert good.score > rude.score and "predicted_engagement" in good.detail
    with pytest.raises(RewardError, match="not an engagement model directory"):
        build_reward("engagement", model_path=str(engagement_model_dir.parent))


@pytest.mark.slow
def test_an_engagement_model_trained_on_some_rows_says_which(tmp_path):
    """Trained on the rows at given lines (a small slice), the model's metadata names those rows."""
    from polyray.reward.engagement import load, train_engagement_model
    from polyray.tasks.splits import rows_digest

    lines = range(1, 61)
    metrics = train_engagement_model(FIXTURE, tmp_path / "m", seed=0, lines=lines, posts="held_out")
    assert metrics["rows"] == 60
    assert load(tmp_path / "m").meta["trained_on"] == {
        "posts": "held_out",
        "rows": 60,
        "lines_sha256": rows_digest(lines),
    }
