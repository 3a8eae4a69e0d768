"""Every task trains: the run config takes each task of the registry, prompts reach the model in its
own format, GRPO's reward is resolved from the task and the config, and bad data stops a run with
one line naming file:line before any Ray process starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from polyray.config import RunConfig, load_config
from polyray.config.tasks import JsonlTaskConfig
from polyray.io import ConfigError
from polyray.tasks import build_task
from polyray.tasks.jsonl import JsonlDataError

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests" / "fixtures" / "engagement.jsonl"


def _replies(**kw) -> JsonlTaskConfig:
    return JsonlTaskConfig(type="replies", path=str(FIXTURE), quality="engagement", **kw)


@pytest.mark.parametrize(
    "task",
    [
        {"type": "countdown"},
        {"type": "countdown_code"},
        {"type": "replies", "path": str(FIXTURE)},
        {"type": "creative", "path": str(FIXTURE)},
    ],
)
def test_every_registry_task_loads_in_a_run_config(task):
    run = RunConfig.model_validate({"task": task})
    assert run.task.type == task["type"]


def test_humaneval_is_an_evaluation_set_not_a_training_task():
    with pytest.raises(ConfigError, match="'humaneval' is an evaluation set"):
        load_config(None, ["task={type: humaneval}"])


def test_jsonl_paths_are_absolute_for_workers_elsewhere(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = JsonlTaskConfig(path="tests/fixtures/engagement.jsonl", engagement_model="runs/x/rm")
    assert cfg.path == str(FIXTURE) and cfg.engagement_model == str(ROOT / "runs" / "x" / "rm")


def test_replies_pretraining_corpus_holds_train_prompts_only():
    task = build_task(_replies())
    corpus = task.pretrain_corpus(0, 0.0, 0)
    train = {p.text for p in task.prompts("train")}
    held_out = {p.text for split in ("val", "test") for p in task.prompts(split)}
    assert {text for text, _ in corpus} == train and not train & held_out
    # every response of a train prompt, the poor ones too (not only the references SFT imitates)
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    expected = sorted(r["response"] for r in rows if r["prompt"] + "\n" in train)
    assert sorted(c for _, c in corpus) == expected
    assert task.corpus_key() == build_task(_replies()).corpus_key()


def test_train_prompt_without_a_response_is_named_by_file_line(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"prompt": f"post {i}", "response": f"reply {i}"} for i in range(20)]
    rows += [{"prompt": f"post {i}"} for i in range(20, 30)]  # prompts without a reference
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = build_task(JsonlTaskConfig(path=str(path), quality="engagement"))
    with pytest.raises(JsonlDataError, match=rf"^{path}:(2[1-9]|30): no 'response' for this train prompt"):
        task.check_references()


# ------------------------------------------------------------------------------ prompt format
def _code_task(tmp_path: Path):
    from polyray.config.tasks import CodeTaskConfig

    path = tmp_path / "problems.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": f'def f{i}():\n    """Return {i}."""\n',
                    "test": f"def check(c):\n    assert c() == {i}\n",
                    "entry_point": f"f{i}",
                    "canonical_solution": f"    return {i}\n",
                }
            )
            + "\n"
            for i in range(12)
        )
    )
    return CodeTaskConfig(path=str(path))


def _tokenizer_dir(tmp_path: Path, chat: bool, template: str | None = None) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world"], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    if chat:
        fast.chat_template = template or (
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    out = tmp_path / ("plain" if not chat else "chat" if template is None else "chat-custom")
    fast.save_pretrained(out)
    return out


def test_prompts_go_through_the_chat_template_when_the_model_has_one(tmp_path):
    from polyray.config.model import ModelConfig
    from polyray.models.source import format_for_model

    task = build_task(_replies())
    plain = task.prompts("test", 3)
    chat = format_for_model(task, ModelConfig(), _tokenizer_dir(tmp_path, chat=True)).prompts("test", 3)
    for p, c in zip(plain, chat):
        assert c.text == f"<|user|>{p.text}<|end|><|assistant|>"
        assert c.meta["raw_prompt"] == p.meta["raw_prompt"] and c.reference == p.reference
    # rewards and judges see the prompt as the user wrote it
    assert task.reward_item(chat[0], "x")["prompt"] == plain[0].meta["raw_prompt"]
    code = build_task(_code_task(tmp_path))
    formatted = format_for_model(code, ModelConfig(), _tokenizer_dir(tmp_path, chat=True))
    p = formatted.prompts("test", 1)[0]
    assert p.meta["raw_prompt"] == code.prompts("test", 1)[0].text and formatted.stop_sequences == ()
    # a chat answer: the function in a fenced block runs against the prompt as written
    answer = f"Here:\n```python\ndef {p.meta['entry_point']}():\n{p.reference}```\nDone."
    assert formatted.judge(p, answer).reward == 1.0 and formatted.judge(p, "no code").reward == 0.0
    # countdown's answers continue the prompt's line: never chat-formatted
    countdown = build_task(RunConfig().task)
    assert format_for_model(countdown, ModelConfig(), tmp_path / "chat") is countdown
    # no template, or prompt_format: plain -> the task's own template
    assert format_for_model(task, ModelConfig(), _tokenizer_dir(tmp_path, chat=False)).prompts("test", 3) == plain
    assert format_for_model(task, ModelConfig(prompt_format="plain"), tmp_path / "chat").prompts("test", 3) == plain


def test_a_system_prompt_is_its_own_turn_of_the_chat_template(tmp_path):
    """The row's system prompt, or ``task.system_prompt``, reaches a chat model as the template's system
    turn; the user turn holds the prompt alone."""
    from polyray.config.model import ModelConfig
    from polyray.models.source import format_for_model

    data = ROOT / "tests" / "fixtures" / "userdata"
    chat_dir = _tokenizer_dir(tmp_path, chat=True)
    system = "You are a concise assistant."
    own = build_task(JsonlTaskConfig(type="replies", path=str(data / "chat.jsonl")))
    p = format_for_model(own, ModelConfig(), chat_dir).prompts("all", 1)[0]
    assert p.text == f"<|system|>{system}<|end|><|user|>Write a reply about topic 0.\n<|end|><|assistant|>"
    assert p.meta["raw_prompt"] == "Write a reply about topic 0."
    configured = build_task(
        JsonlTaskConfig(type="replies", path=str(data / "prompt_completion.jsonl"), system_prompt="Be brief.")
    )
    p = format_for_model(configured, ModelConfig(), chat_dir).prompts("all", 1)[0]
    assert p.text == "<|system|>Be brief.<|end|><|user|>Write a reply about topic 0.\n<|end|><|assistant|>"
    # a template that refuses system turns (as some do): the system prompt goes before the user's text
    refuses = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    p = format_for_model(own, ModelConfig(), _tokenizer_dir(tmp_path, chat=True, template=refuses)).prompts("all", 1)[0]
    assert p.text == f"<|user|>{system}\n\nWrite a reply about topic 0.\n<|end|><|assistant|>"


# ------------------------------------------------------------------------------------ rewards
def test_reward_defaults_come_from_the_task_and_the_config_overrides_them(tmp_path):
    from polyray.config import RewardConfig
    from polyray.reward.service import resolve_reward

    task = build_task(_replies(engagement_model=str(tmp_path / "rm")))
    assert resolve_reward(RewardConfig(), task) == ("engagement", {"model_path": str(tmp_path / "rm")})
    assert resolve_reward(RewardConfig(params={"batch_size": 8}), task)[1] == {
        "model_path": str(tmp_path / "rm"),
        "batch_size": 8,
    }
    weighted = RewardConfig(
        name="weighted_sum",
        params={
            "components": [
                {"name": "engagement", "weight": 1.0},
                {"name": "length", "weight": 0.5, "params": {"max_length": 30}},
            ]
        },
    )
    _, params = resolve_reward(weighted, task)
    assert params["components"][0]["params"] == {"model_path": str(tmp_path / "rm")}
    assert params["components"][1]["params"] == {"max_length": 30}
    assert resolve_reward(RewardConfig(), build_task(RunConfig().task)) == ("countdown", {})


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("nope", {}, "reward.name: unknown reward 'nope'"),
        ("length", {"max_length": 0}, "reward.params: max_length"),
        (
            "weighted_sum",
            {"components": [{"name": "length", "weight": 1.0, "params": {"unit": "lines"}}]},
            "reward.params.components.0.params: unit",
        ),
    ],
)
def test_bad_reward_is_named_before_the_run_starts(name, params, message):
    from polyray.reward.base import RewardError
    from polyray.reward.scorer import check_reward

    with pytest.raises(RewardError, match=message.replace(".", r"\.")):
        check_reward(name, params)


# ----------------------------------------------------------------------------- bad user data
def _rows(n: int, drop_response_at: int | None = None) -> str:
    rows = [{"prompt": f"post {i}", "response": f"reply {i}", "engagement": i % 5} for i in range(n)]
    if drop_response_at is not None:
        del rows[drop_response_at - 1]["response"]
    return "".join(json.dumps(r) + "\n" for r in rows)


BAD_FILES = {
    "bad line": (_rows(3) + "{oops\n" + _rows(12), ":4: not valid JSON"),
    "missing response": (_rows(20, drop_response_at=7), ":7: "),  # named by the SFT or the engagement model check
    "empty file": ("", ": no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_user_jsonl_stops_the_run_with_one_line_before_ray_starts(tmp_path, case):
    text, needle = BAD_FILES[case]
    data = tmp_path / "mine.jsonl"
    data.write_text(text)
    # an unreachable cluster address: had the run got as far as starting Ray, the error would be Ray's
    cmd = [
        sys.executable,
        "-m",
        "polyray.cli",
        "run",
        str(ROOT / "configs" / "replies.yaml"),
        "--set",
        f"task.path={data}",
        "--set",
        "cluster.address=ray://127.0.0.1:9",
        "--set",
        "model.source=/nonexistent",
        "--output-dir",
        str(tmp_path / "run"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {data}") and needle in lines[0], lines
    assert case != "missing response" or "'response'" in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing created
