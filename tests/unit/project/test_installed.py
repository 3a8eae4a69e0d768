"""polyray installed from a wheel reads nothing of the repository: what its commands need ships in the
package (package data) or is generated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_the_packaged_embedded_default_is_configs_quickstart():
    """`polyray bench` measures the copy in the package; users run configs/quickstart.yaml: one file, twice."""
    assert (ROOT / "polyray" / "config" / "quickstart.yaml").read_bytes() == (
        ROOT / "configs" / "quickstart.yaml"
    ).read_bytes()


CHECK = """
import json, sys
from pathlib import Path
import polyray
assert Path(polyray.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), polyray.__file__
from polyray.cli.bench import QUICKSTART
from polyray.cli.serve import _app_args
from polyray.config import load_config
from polyray.drivers.bench.engagement_data import write_engagement_jsonl
assert load_config(QUICKSTART).name == "quickstart"
assert _app_args(None, "reward") == {}  # polyray serve reward: the settings' defaults, no file needed
rows = write_engagement_jsonl(Path("engagement.jsonl")).read_text().splitlines()
assert len(rows) == 600 and set(json.loads(rows[0])) == {"prompt", "response", "engagement"}
print("ok", QUICKSTART)
"""


@pytest.mark.slow
def test_an_installed_polyray_reads_nothing_of_the_repository(tmp_path):
    """Built as a wheel from a copy of the package alone and run from an empty directory: the benchmarks'
    default config and their engagement data are there, and `polyray serve` needs no file."""
    src, site, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(ROOT / "polyray", src / "polyray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    elsewhere.mkdir()
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ") and str(site) in done.stdout
