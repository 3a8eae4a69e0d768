"""Every link of README.md and docs/*.md leads somewhere: a relative link ``[x](path#anchor)`` to a file or
folder that exists (relative to the page's folder) and, into a markdown page, to one of its headings
(GitHub's anchors: ``polyray.cli.reference.heading_anchors``); and an inline-code mention of a repository
path (``polyray/config/run.py``, ``configs/quickstart.yaml``, ``docs/``) to a path that exists. External
links and run outputs (``runs/``, ``/tmp/``) are not checked. One test per page; a failure lists
``page:line: link`` for each bad one."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from polyray.cli.reference import heading_anchors, prose_lines

ROOT = Path(__file__).resolve().parents[3]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FOLDERS = ("polyray/", "services/", "jobs/", "configs/", "tests/", "deploy/", "docker/", "docs/")
EXTENSIONS = (".py", ".yaml", ".yml", ".md", ".toml", ".jsonl", ".json", ".sh", ".cff")
RUN_OUTPUTS = ("runs/", "/tmp/")
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def bad_link(page: Path, target: str) -> str | None:
    """Why the relative link ``target`` of ``page`` leads nowhere; None when it resolves (or is not checked)."""
    if EXTERNAL.match(target) or target.startswith(RUN_OUTPUTS):
        return None
    path, _, anchor = target.partition("#")
    file = (page.parent / unquote(path)).resolve() if path else page
    if not file.exists():
        return "no such file"
    if anchor and file.suffix == ".md" and unquote(anchor).lower() not in heading_anchors(file.read_text()):
        return f"no heading #{anchor} in {file.relative_to(ROOT)}"
    return None


def repo_path(token: str) -> str | None:
    """The repository path an inline-code token names (``path.py:12`` and ``path.py::test`` name ``path.py``),
    or None when it is not one: a command, a pattern, a placeholder, a run output."""
    path = re.sub(r"::?[\w\[\].-]*$", "", token)
    if not path.startswith(FOLDERS) or re.search(r"[\s*?<>{}$|]", path):
        return None
    return path if path.endswith("/") or path.endswith(EXTENSIONS) else None


def problems(page: Path) -> list[str]:
    found = []
    where = page.relative_to(ROOT)
    for number, line in prose_lines(page.read_text()):
        spans = [m.group(2).strip() for m in CODE_SPAN.finditer(line)]
        for target in LINK.findall(CODE_SPAN.sub("", line)):  # a link inside a code span is text
            why = bad_link(page, target)
            if why:
                found.append(f"{where}:{number}: ({target}) {why}")
        for token in spans:
            path = repo_path(token)
            if path and not (ROOT / path).exists():
                found.append(f"{where}:{number}: `{token}` no such path in the repository")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_and_path_resolves(page):
    bad = problems(page)
    assert not bad, "\n".join(bad)


def test_the_checks_catch_a_broken_link_an_anchor_and_a_path(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Real `heading`, here\n")
    page = tmp_path / "docs" / "b.md"
    page.write_text(
        "[ok](a.md#real-heading-here) [gone](missing.md) [anchor](a.md#nowhere) [web](https://example.com)\n"
        "`docs/a.md` `docs/gone.md` `polyray run configs/x.yaml` `runs/<name>/` `docs/a.md:3`\n"
        "```\n[fenced](missing.md)\n```\n"
    )
    assert problems(page) == [
        "docs/b.md:1: (missing.md) no such file",
        "docs/b.md:1: (a.md#nowhere) no heading #nowhere in docs/a.md",
        "docs/b.md:2: `docs/gone.md` no such path in the repository",
    ]
