"""The code's layout is the formatter's, and the linter finds no errors: ruff (a dev dependency, pinned)
over every Python file of the repository, with pyproject.toml's settings. ``# fmt: skip`` is left only on
statements laid out as aligned tables. A comment sits on its own line above the code it explains, not at the
end of a code line, where the formatter wraps it (pragmas such as ``# noqa`` excepted)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
FOLDERS = ["polyray", "services", "jobs", "tests"]
# comments that must stay on the line they act on
PRAGMA = re.compile(r"#\s*(noqa|type:|fmt:|pragma|pylint|nosec|isort)")
MOST_TRAILING = 300
MOST_FMT_SKIPS = 20


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


def _comments(folder: Path) -> tuple[list[str], list[str]]:
    """The package's trailing comments (code before them on their line; pragmas left out) and its
    ``# fmt: skip`` comments, each as ``path:line``."""
    trailing, skips = [], []
    for path in sorted(folder.rglob("*.py")):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type != tokenize.COMMENT:
                continue
            where = f"{path.relative_to(folder.parent)}:{tok.start[0]}"
            if re.search(r"#\s*fmt:\s*skip", tok.string):
                skips.append(where)
            elif tok.line[: tok.start[1]].strip() and not PRAGMA.match(tok.string):
                trailing.append(where)
    return trailing, skips


def test_comments_sit_on_their_own_lines():
    trailing, skips = _comments(ROOT / "polyray")
    assert len(trailing) < MOST_TRAILING, (
        f"{len(trailing)} trailing comments in polyray/ (fewer than {MOST_TRAILING} allowed): put each on its own"
        f" line above its code, e.g. {trailing[:5]}"
    )
    assert len(skips) <= MOST_FMT_SKIPS, (
        f"{len(skips)} `# fmt: skip` in polyray/ (at most {MOST_FMT_SKIPS}): keep it for aligned tables only,"
        f" e.g. {skips[:5]}"
    )


def test_the_comment_count_finds_a_trailing_comment_and_a_skip(tmp_path):
    (tmp_path / "m.py").write_text("x = 1  # why\n# own line\ny = [1, 2]  # fmt: skip\nz = 0  # noqa: F841\n")
    trailing, skips = _comments(tmp_path)
    assert [w.rsplit(":", 1)[1] for w in trailing] == ["1"] and [w.rsplit(":", 1)[1] for w in skips] == ["3"]
