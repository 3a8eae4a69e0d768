"""The user's own data: every shape and file type a ``replies``/``creative`` task reads, and what a bad row says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyray.config.tasks import JsonlTaskConfig
from polyray.io import ConfigError, load_yaml_model
from polyray.tasks.base import with_prompt_format
from polyray.tasks.jsonl import JsonlDataError, JsonlTask, read_task_rows

DATA = Path(__file__).resolve().parents[2] / "fixtures" / "userdata"
SYSTEM = "You are a concise assistant."


def _task(path, **fields) -> JsonlTask:
    return JsonlTask(JsonlTaskConfig(path=str(path), **fields))


def _pairs(task: JsonlTask) -> list[tuple[str, str]]:
    return [(p.meta["raw_prompt"], p.reference) for p in task.prompts("all", 100)]


def _write(tmp_path, rows, name="d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_every_shape_and_file_type_gives_the_same_prompts():
    plain = _pairs(_task(DATA / "prompt_completion.jsonl"))
    assert len(plain) == 12 and plain[0] == ("Write a reply about topic 0.", "A reply about topic 0.")
    assert _pairs(_task(DATA / "chat.jsonl")) == plain
    mapped = {"prompt": "question", "response": "answer"}
    assert _pairs(_task(DATA / "rows.parquet", fields=mapped)) == plain
    assert _pairs(_task(DATA / "rows.csv", fields=mapped)) == plain


def test_the_chat_fixture_is_its_generators_output_and_reads_the_same_as_parquet():
    """configs/chat.yaml's data: the JSONL and the parquet file hold the same conversations (regenerate
    both with tests/fixtures/make_chat.py), and give the same prompts, references and split."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_chat", DATA.parent / "make_chat.py")
    make_chat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_chat)
    rows = make_chat.conversations()
    jsonl, parquet = DATA.parent / "chat_replies.jsonl", DATA.parent / "chat_replies.parquet"
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == rows
    assert read_task_rows(str(parquet)) == read_task_rows(str(jsonl))
    a, b = _task(jsonl, format="messages"), _task(parquet, format="messages")
    for split in ("train", "val", "test"):
        assert [(p.text, p.reference) for p in a.prompts(split)] == [(p.text, p.reference) for p in b.prompts(split)]
    assert len(a.prompts("test")) >= 8 and all(p.meta["system"] == make_chat.SYSTEM for p in a.prompts("all"))


def test_same_split_whatever_the_file_type():
    mapped = {"prompt": "question", "response": "answer"}
    a = [p.meta["raw_prompt"] for p in _task(DATA / "prompt_completion.jsonl").prompts("test")]
    b = [p.meta["raw_prompt"] for p in _task(DATA / "rows.parquet", fields=mapped).prompts("test")]
    assert a == b and a


def test_system_prompt_is_kept_before_the_template():
    task = _task(DATA / "chat.jsonl")
    p = task.prompts("all", 1)[0]
    assert p.text == f"{SYSTEM}\n\nWrite a reply about topic 0.\n"
    assert p.meta["system"] == SYSTEM and p.meta["raw_prompt"] == "Write a reply about topic 0."
    assert p.meta["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Write a reply about topic 0.\n"},
    ]
    at_field = _task(DATA / "chat.jsonl", template="<<{system}>> {prompt}").prompts("all", 1)[0]
    assert at_field.text == f"<<{SYSTEM}>> Write a reply about topic 0."


def test_config_system_prompt_applies_to_rows_without_one_and_plain_text_is_unchanged():
    plain = _task(DATA / "prompt_completion.jsonl").prompts("all", 1)[0]
    assert (
        plain.text == "Write a reply about topic 0.\n" and "messages" not in plain.meta and "system" not in plain.meta
    )
    with_system = _task(DATA / "prompt_completion.jsonl", system_prompt="Be brief.").prompts("all", 1)[0]
    assert with_system.text == "Be brief.\n\nWrite a reply about topic 0.\n"
    own = _task(DATA / "chat.jsonl", system_prompt="Be brief.").prompts("all", 1)[0]
    assert own.meta["system"] == SYSTEM  # a row's own system prompt wins


def test_chat_renderer_that_takes_messages_gets_the_conversation():
    task = _task(DATA / "chat.jsonl")
    seen = []
    formatted = with_prompt_format(task, lambda text, messages=None: seen.append(messages) or "X")
    assert formatted.prompts("all", 1)[0].text == "X" and seen[0][0] == {"role": "system", "content": SYSTEM}
    old_style = with_prompt_format(task, lambda text: f"[{text}]")  # a renderer of text alone still works
    assert old_style.prompts("all", 1)[0].text == f"[{SYSTEM}\n\nWrite a reply about topic 0.\n]"


def test_trl_conversational_prompt_completion_and_multi_turn(tmp_path):
    path = _write(
        tmp_path,
        [
            {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "hello"}]},
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                ]
            },
            {"messages": [{"role": "user", "content": "no reference"}]},
        ],
    )
    rows = read_task_rows(path)
    assert [(r.prompt, r.response) for r in rows] == [("hi", "hello"), ("a\nb\nc", "d"), ("no reference", None)]
    assert rows[1].turns == (("user", "a"), ("assistant", "b"), ("user", "c"))


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"question": "q", "answer": "a"}, "'prompt' must be a non-empty string (a row is {messages: [{role, content}"),
        ({"messages": "hi"}, "'messages' must be a non-empty list of {role, content} turns"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0] must be {role: system|user|assistant"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"}]},
            "system turn must come before",
        ),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "must end with a non-empty user turn"),
        ({"prompt": "p", "completion": 3}, "'completion' must be a string"),
    ],
)
def test_bad_row_names_file_line_and_the_accepted_shapes(tmp_path, row, needle):
    path = _write(tmp_path, [{"prompt": "a", "response": "b"}, row])
    with pytest.raises(JsonlDataError) as info:
        read_task_rows(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and needle in message and "\n" not in message, message


def test_unmapped_keys_hint_names_the_rows_keys(tmp_path):
    path = _write(tmp_path, [{"question": "q", "answer": "a"}])
    with pytest.raises(
        JsonlDataError, match=r"task\.fields maps other column names; this row's keys: question, answer"
    ):
        read_task_rows(path)


def test_declared_format_is_enforced(tmp_path):
    path = _write(tmp_path, [{"prompt": "p", "response": "r"}])
    with pytest.raises(JsonlDataError, match=r":1: no 'completion' \(format prompt_completion"):
        read_task_rows(path, fmt="prompt_completion")
    with pytest.raises(JsonlDataError, match=r":1: 'messages' must be a non-empty list"):
        read_task_rows(path, fmt="messages")


def test_columnar_bad_row_names_file_and_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,response\nhello,world\n,empty prompt\n")
    with pytest.raises(JsonlDataError, match=rf"^{path} row 2: 'prompt' must be a non-empty string"):
        read_task_rows(path)
    assert len(read_task_rows(path, skip_bad_lines=True)) == 1


def test_missing_and_unreadable_columnar_files(tmp_path):
    with pytest.raises(JsonlDataError, match="no such file"):
        read_task_rows(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(JsonlDataError, match=rf"^{bad}: cannot be read as parquet: "):
        read_task_rows(bad)


def test_fields_keys_are_checked_as_typed(tmp_path):
    path = _write(tmp_path, [{"prompt": "a"}], "cfg.yaml")
    path.write_text(f"type: replies\npath: {tmp_path}/x.jsonl\nfields: {{question: prompt}}\n")
    with pytest.raises(ConfigError, match=r"fields: unknown field 'question': the keys are polyray's names"):
        load_yaml_model(path, [], JsonlTaskConfig)


def test_too_few_prompts_names_a_real_field(tmp_path):
    path = _write(tmp_path, [{"prompt": f"p{i}", "response": "r"} for i in range(3)])
    with pytest.raises(
        JsonlDataError, match="too few for train/val/test splits .* polyray eval, whose task entries take split: all"
    ):
        _task(path).prompts("train")


def test_hub_path_is_not_made_absolute():
    assert JsonlTaskConfig(path="hf://datasets/owner/name").path == "hf://datasets/owner/name"
