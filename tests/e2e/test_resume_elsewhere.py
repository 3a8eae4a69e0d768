"""``polyray run --resume`` continues a run from another working directory and a new Ray session.

Under ``ray job submit --working-dir`` every submission unpacks the job's files into a fresh
temporary directory, and a relative data path resolves into it. Here a run starts in directory A
with a relative ``task.path``; its driver's node dies (the driver and its local Ray cluster) once
the base model's evaluation is written; the resume runs from directory B holding a copy of A (a new
unpacked copy) and starts a new local Ray cluster. It continues: the base evaluation is not redone,
the SFT phase trains and is evaluated by the second attempt. The same resume with the data file
changed in B is refused with one line naming ``task.path``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.faults import kill_node

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
name: elsewhere
model:
  source: embedded
  tiny: {pretrain_steps: 0}   # an untrained model: the test is about continuing, not learning
task: {type: replies, path: data/rows.jsonl, n_train: 64, n_test: 4}
rollout: {num_workers: 1, threads: 1}
learner: {num_workers: 1, threads: 1, lora: {r: 4, alpha: 8}}
phases:
  - {type: sft, steps: 2, batch_size: 4, checkpoint_every: 2}
dynamics: {every: 0}
eval: {n_samples: 2, ks: [1, 2], sampling: {max_tokens: 8}, diversity: [distinct_1]}
cluster: {dashboard: false}
"""


def _polyray(cwd: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "polyray.cli", "run", "run.yaml", "--output-dir", str(out), *extra]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _results(out: Path) -> dict:
    try:
        return json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}


def test_resume_from_another_working_directory_and_ray_session(tmp_path):
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "runs" / "elsewhere"
    (a / "data").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "engagement.jsonl", a / "data" / "rows.jsonl")
    (a / "run.yaml").write_text(CONFIG)

    first = _polyray(a, out)
    deadline = time.time() + 300
    while first.poll() is None and time.time() < deadline and "base" not in _results(out).get("phases", {}):
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[0][-3000:]  # still running: killed mid-run
    kill_node(first.pid)
    first.communicate()
    assert set(_results(out)["phases"]) == {"base"}
    assert json.loads((out / "inputs.json").read_text())["cwd"] == str(a)

    shutil.copytree(a, b)  # a new --working-dir copy; A is gone with its session
    shutil.rmtree(a)
    changed = tmp_path / "changed"
    shutil.copytree(b, changed)
    with (changed / "data" / "rows.jsonl").open("a") as f:
        f.write('{"prompt": "one more", "response": "row", "engagement": 1.0}\n')
    refused = _polyray(changed, out, "--resume")
    output = refused.communicate(timeout=120)[0]
    assert refused.returncode != 0 and "config differs from the run's" in output and "task.path (content)" in output

    resumed = _polyray(b, out, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-4000:]
    results = _results(out)
    stages = [(s["stage"], s["attempt"]) for s in results["stages"]]
    assert stages == [("eval_base", 0), ("train_sft", 1), ("eval_sft", 1)], stages
    assert (out / "adapters" / "sft" / "adapter_config.json").is_file()
