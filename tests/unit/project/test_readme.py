"""README is product documentation: short, no lab notes, and every number it shows is the latest one on
the docs page it links (the page is where a number is updated; README follows it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
# a number standing alone: not inside a word or an identifier (H200, pass@10, Qwen3-1.7B, v1)
NUMBER = re.compile(r"\b20\d\d-\d\d-\d\d\b|(?<![\w@.\-/])\d+(?:\.\d+)?(?![\w.]?\d)(?![A-Za-z])")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
P_VALUE = re.compile(r"\bp\s*(?:=|<|>|≤|≥)\s*0?\.\d|\bp 0\.\d|\bHolm\b|\bTOST\b")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def prose_sections(text: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """README's sections (by ``##`` heading) as numbered lines, less fenced code, inline code and the
    tested walkthrough (its numbers are settings, not results)."""
    text = re.sub(
        r"<!-- walkthrough -->.*?<!-- /walkthrough -->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S
    )
    sections: list[tuple[str, list[tuple[int, str]]]] = [("(top)", [])]
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("## "):
            sections.append((line[3:], []))
            continue
        line = re.sub(r"^\s*\d+\.\s", "", re.sub(r"`[^`]*`", "", line))  # a list item's number is not a result
        sections[-1][1].append((number, line))
    return sections


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200)"
    long = [f"README.md:{i}: {len(line)} characters" for i, line in enumerate(lines, 1) if len(line) > 120]
    assert not long, "lines over 120 characters:\n" + "\n".join(long)


def test_readme_keeps_statistics_and_dates_out_of_its_prose():
    """p-values and dates live in docs/; README's dates only in its status box and results table."""
    bad = []
    for title, lines in prose_sections(README.read_text()):
        for number, line in lines:
            if P_VALUE.search(line):
                bad.append(f"README.md:{number}: a p-value or test name: {line.strip()}")
            dated_ok = line.startswith(">") or (title == "Results at a glance" and line.startswith("|"))
            if DATE.search(line) and not dated_ok:
                bad.append(f"README.md:{number}: a date outside the status box and results table: {line.strip()}")
    assert not bad, "\n".join(bad)


def numbers_not_on_linked_pages(readme: Path, root: Path) -> list[str]:
    """Each number of a README section that none of the docs pages the section links holds."""
    missing = []
    for title, lines in prose_sections(readme.read_text()):
        pages = sorted({m for _, line in lines for m in LINK.findall(line)})
        texts = " ".join((root / p).read_text() for p in pages if (root / p).is_file())
        for number, line in lines:
            for value in NUMBER.findall(LINK.sub("]", line)):
                if not re.search(rf"(?<![\d.]){re.escape(value)}(?!\d|\.\d)", texts):
                    missing.append(f"README.md:{number} ({title}): {value} is on none of {pages or 'no linked page'}")
    return missing


def test_every_readme_number_is_on_the_page_it_links():
    missing = numbers_not_on_linked_pages(README, ROOT)
    assert not missing, "\n".join(missing)


def test_readme_numbers_are_checked():
    """The check reads the numbers README shows: the quickstart table's, at least."""
    numbers = {v for _, lines in prose_sections(README.read_text()) for _, line in lines for v in NUMBER.findall(line)}
    assert {"0.109", "0.617", "0.211"} <= numbers, sorted(numbers)


def test_the_number_check_catches_a_stale_number(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("pass@1 0.199 on 2026-11-27\n")
    readme = tmp_path / "README.md"
    readme.write_text("## Results\n\nGRPO reaches 0.2 and 0.199 ([results](docs/results.md)).\n")
    missing = numbers_not_on_linked_pages(readme, tmp_path)
    assert len(missing) == 1 and "0.2 is on none of ['docs/results.md']" in missing[0], missing
