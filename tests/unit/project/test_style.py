"""The code's layout is the formatter's, and the linter finds no errors: ruff (a dev dependency, pinned)
over every Python file of the repository, with pyproject.toml's settings. ``# fmt: skip`` is left only on
statements laid out as aligned tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FOLDERS = ["polyray", "services", "jobs", "tests"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *FOLDERS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_every_file_is_formatted():
    done = _ruff("format", "--check")
    assert done.returncode == 0, f"run `ruff format {' '.join(FOLDERS)}`:\n{done.stdout}{done.stderr}"


def test_the_linter_finds_no_errors():
    done = _ruff("check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_format_check_catches_a_file_out_of_layout(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = {  'a':1,'b' :2}\n")
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "bad.py" in done.stdout
