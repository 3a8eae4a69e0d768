"""CITATION.cff is valid CFF 1.2.0 as far as GitHub's "Cite this repository" reads it, agrees with
pyproject.toml (licence, version), and cites only papers docs/algorithms.md cites, by the same arXiv id."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project also runs on 3.10

ROOT = Path(__file__).resolve().parents[3]


def citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_required_keys_are_there():
    cff = citation()
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "polyray" and cff["type"] == "software"
    assert isinstance(cff["message"], str) and cff["message"].strip()
    assert cff["authors"] and all(isinstance(a, dict) and a for a in cff["authors"])


def test_it_agrees_with_pyproject():
    cff, meta = citation(), project()
    assert cff["license"] == meta["license"] == "Apache-2.0"
    assert str(cff["version"]) == meta["version"]
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License\n")


def test_every_reference_is_a_paper_the_algorithms_page_cites():
    cited = set(re.findall(r"arXiv (\d{4}\.\d{4,5})", (ROOT / "docs" / "algorithms.md").read_text()))
    refs = citation()["references"]
    ids = [re.fullmatch(r"10\.48550/arXiv\.(\d{4}\.\d{4,5})", str(r.get("doi"))) for r in refs]
    assert all(ids), "each reference carries its arXiv DOI, 10.48550/arXiv.<id>"
    assert all(r["type"] and r["title"] and r["authors"] for r in refs)  # CFF's required keys of a reference
    assert sorted({m.group(1) for m in ids} - cited) == [], "cited in CITATION.cff but not in docs/algorithms.md"
