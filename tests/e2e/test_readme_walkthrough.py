"""The README's "train on your own data" walkthrough, run exactly as written.

The shell blocks between ``<!-- walkthrough -->`` and ``<!-- /walkthrough -->`` run in order, as one
bash script (``set -e``), in an empty directory, with ``python`` and ``polyray`` being this
interpreter and this checkout: a chat JSONL is written, checked, trained on (SFT), exported merged,
and the export loads and generates in plain transformers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]


def walkthrough_script(readme: str) -> str:
    """The ```bash blocks between the walkthrough markers, in order."""
    match = re.search(r"<!-- walkthrough -->(.*?)<!-- /walkthrough -->", readme, re.S)
    assert match, "README.md has no <!-- walkthrough --> ... <!-- /walkthrough --> section"
    blocks = re.findall(r"^```bash\n(.*?)^```$", match.group(1), re.S | re.M)
    assert len(blocks) >= 3, blocks
    return "\n".join(blocks)


def test_walkthrough_runs_as_written(tmp_path):
    script = walkthrough_script((ROOT / "README.md").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("python", f'"{sys.executable}"'), ("polyray", f'"{sys.executable}" -m polyray.cli')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')  # a symlink would lose the venv
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])

    results = json.loads((work / "runs" / "my_chats" / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft"}
    assert (work / "my_model" / "model.safetensors").is_file()
    assert json.loads((work / "my_model" / "polyray_export.json").read_text())["phase"] == "sft"
    reply = proc.stdout.strip().splitlines()[-1]  # the exported model's greedy answer
    assert reply.strip(), proc.stdout[-2000:]
