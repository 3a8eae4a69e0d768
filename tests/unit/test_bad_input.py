"""Bad input loses nothing and explains itself: one line naming file:line and the field, or skipped and counted."""

from __future__ import annotations

import json

import pytest

from polyray.config.tasks import JsonlTaskConfig
from polyray.io import MAX_JSONL_LINE_BYTES, JsonlReport
from polyray.reward.engagement import EngagementDataError, read_engagement_jsonl
from polyray.tasks.jsonl import JsonlDataError, JsonlTask, read_task_rows

GOOD = {"prompt": "a post", "response": "a reply", "engagement": 3}

BAD_LINES = {
    "empty response": (json.dumps({**GOOD, "response": "  "}).encode(), "'response' is empty"),
    "wrong type": (json.dumps({**GOOD, "response": 7}).encode(), "'response' must be a string"),
    "not UTF-8": (b'{"prompt": "caf\xe9", "response": "x", "engagement": 1}', "not UTF-8 (byte 16: b'\\xe9')"),
    "huge line": (
        json.dumps({**GOOD, "response": "x" * MAX_JSONL_LINE_BYTES}).encode(),
        "exceeds the 1048576-byte limit",
    ),
    "not JSON": (b"{oops", "not valid JSON"),
}


def _file(tmp_path, bad: bytes):
    path = tmp_path / "data.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(b"\n".join([good, bad, good, b""]))
    return path


@pytest.mark.parametrize("case", sorted(BAD_LINES))
@pytest.mark.parametrize(
    "reader, error", [(read_task_rows, JsonlDataError), (read_engagement_jsonl, EngagementDataError)]
)
def test_bad_line_is_one_message_naming_file_line_and_field(tmp_path, case, reader, error):
    bad, needle = BAD_LINES[case]
    path = _file(tmp_path, bad)
    with pytest.raises(error) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ") and needle in message and "\n" not in message, message


@pytest.mark.parametrize("reader", [read_task_rows, read_engagement_jsonl])
def test_skip_bad_lines_keeps_the_rest_and_counts(tmp_path, reader):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(GOOD).encode()] + [bad for bad, _ in BAD_LINES.values()] + [json.dumps(GOOD).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = JsonlReport()
    rows = reader(path, skip_bad_lines=True, report=report)
    assert len(rows) == 2 and report.rows == 2 and len(report.skipped) == len(BAD_LINES)
    assert [m.split(": ")[0] for m in report.skipped] == [f"{path}:{i}" for i in range(2, 2 + len(BAD_LINES))]
    assert "5 bad lines skipped (first: " in report.summary(path)


def test_a_file_of_only_bad_lines_still_fails(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"{oops\n[1]\n")
    with pytest.raises(JsonlDataError, match=r"no rows \(2 bad lines skipped\)"):
        read_task_rows(path, skip_bad_lines=True)


def test_task_config_skip_bad_lines_reports_on_the_task(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) for i in range(12)]
    path.write_text("\n".join(rows[:5] + ['{"prompt": 3}'] + rows[5:]) + "\n")
    with pytest.raises(JsonlDataError, match=":6: 'prompt' must be a non-empty string"):
        JsonlTask(JsonlTaskConfig(path=str(path)))
    task = JsonlTask(JsonlTaskConfig(path=str(path), skip_bad_lines=True))
    assert len(task.prompts("all", 100)) == 12
    assert task.data_warning and "1 bad lines skipped" in task.data_warning and ":6:" in task.data_warning


def test_reward_model_job_stops_at_a_bad_line_by_default(tmp_path, capsys):
    from jobs.train_reward_model import main

    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\xff\xfe not text\n" + json.dumps(GOOD).encode() + b"\n")
    assert main(["--data", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {path}:1: not UTF-8 (byte 1: b'\\xff')"]
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.slow
def test_reward_model_job_skips_bad_lines_on_request(tmp_path, capsys):
    from pathlib import Path

    from jobs.train_reward_model import main

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "engagement.jsonl"
    lines = fixture.read_bytes().splitlines()
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n".join(lines[:10] + [b"\xff broken", b'{"prompt": "p", "response": ""}'] + lines[10:]) + b"\n")
    assert main(["--data", str(path), "--out", str(tmp_path / "out"), "--skip-bad-lines"]) == 0
    err = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")
    ]  # not the encoder's logs
    assert err == [
        f"warning: {path}: {len(lines)} rows, 2 bad lines skipped (first: {path}:11: not UTF-8 (byte 1: b'\\xff'))"
    ]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["rows"] == len(lines) and len(metrics["skipped_lines"]) == 2


# ---------------------------------------------------------------------------- training logs


def test_log_reader_drops_a_torn_last_line_only(tmp_path):
    from polyray.io import read_log_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"phase": "sft", "step": 1}\n{"phase": "sft", "step": 2}\n{"phase": "sft", "st')
    assert [r["step"] for r in read_log_jsonl(path)] == [1, 2]
    path.write_text('{"phase": "sft", "step": 1}\n{"phase": "sft", "step": 2}')  # complete, newline missing
    assert [r["step"] for r in read_log_jsonl(path)] == [1, 2]
    path.write_text('{"phase": "sft", "step": 1}\n{"phase": "sft", "st\n{"phase": "sft", "step": 3}\n')
    with pytest.raises(ValueError, match=f"{path}:2: "):
        read_log_jsonl(path)  # a bad line in the middle is damage, not a torn write
    assert read_log_jsonl(tmp_path / "missing.jsonl") == []


def test_rows_superseded_by_a_resume_are_dropped(tmp_path):
    from polyray.io import RESUME_EVENT, read_log_jsonl

    rows = [{"phase": "sft", "step": s} for s in range(1, 8)]
    rows += [
        {"event": RESUME_EVENT, "phase": "sft", "step": 5}
    ]  # killed after step 7, resumed from the step-5 checkpoint
    rows += [{"phase": "sft", "step": s, "again": True} for s in range(6, 9)]
    rows += [{"phase": "grpo", "step": 1}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    current = read_log_jsonl(path)
    assert [(r["phase"], r["step"]) for r in current] == [("sft", s) for s in range(1, 9)] + [("grpo", 1)]
    assert all(r.get("again") for r in current if r["phase"] == "sft" and r["step"] > 5)


def test_appending_after_a_torn_line_keeps_the_log_readable(tmp_path):
    from polyray.io import RESUME_EVENT, append_jsonl, read_log_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"phase": "g", "step": 1}\n{"phase": "g", "step": 2}\n{"phase": "g", "st')
    append_jsonl(path, {"event": RESUME_EVENT, "phase": "g", "step": 1})
    append_jsonl(path, {"phase": "g", "step": 2, "again": True})
    assert read_log_jsonl(path) == [{"phase": "g", "step": 1}, {"phase": "g", "step": 2, "again": True}]
    torn_only = tmp_path / "one.jsonl"
    torn_only.write_text('{"half')
    append_jsonl(torn_only, {"a": 1})
    assert torn_only.read_text() == '{"a": 1}\n'


def test_a_warning_prints_brackets_as_written(capsys):
    """A warning quotes errors and paths: their brackets are text, not console markup (a closing tag such as
    ``[/src/pair.cc:537]`` once raised a MarkupError in the middle of a recovery)."""
    from polyray.io import warn

    warn("failed ([/src/pair.cc:537] closed [10.0.0.1]:42)")
    assert "failed ([/src/pair.cc:537] closed [10.0.0.1]:42)" in capsys.readouterr().err
