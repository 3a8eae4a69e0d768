"""`polyray serve reward` as a user runs it, from a directory that is not the checkout: the user's
Serve config and reward file are found relative to that directory, and Ctrl-C stops the service
and its local Ray within a bounded time, also when Serve's shutdown stalls (as it did under load),
leaving none of the processes it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from polyray import lifetime
from polyray.cli.common import STOP_GRACE_S
from polyray.http import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = """
applications:
  - name: reward
    route_prefix: /
    import_path: services.reward_app:build_app
    args:
      num_cpus: 0.5
      rewards:
        custom: {function: my_rewards.py:score}
"""
REWARDS = "def score(prompts, completions, **kwargs):\n    return [float(len(c)) for c in completions]\n"


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise AssertionError(f"no /healthz at {url} within {timeout_s} s")


def test_serve_reward_from_another_directory(tmp_path):
    """The user's Serve config and reward file, named relative to the directory they start in (the
    default config's resolution from any directory: tests/unit/reward/test_reward_functions.py)."""
    (tmp_path / "my_rewards.py").write_text(REWARDS)
    (tmp_path / "serve.yaml").write_text(SERVE_CONFIG)
    port = free_port()
    # a Ray of its own: with no address, ray.init joins a cluster another test left running on this machine
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}  # (its output as it goes, for a failure)
    cmd = [sys.executable, "-m", "polyray.cli", "serve", "reward", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--config", "serve.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert _wait_healthy(url, proc)["status"] == "ok"
        scores = _post(
            f"{url}/v1/rewards",
            {"reward": "custom", "items": [{"prompt": "p", "completion": "abc"}, {"prompt": "p", "completion": "a"}]},
        )["scores"]
        assert scores == [3.0, 1.0]
        item = {"prompt": "nums 3 4 9 target 12\nexpr:", "completion": " 3+9"}  # a built-in reward beside it
        assert _post(f"{url}/v1/rewards", {"reward": "countdown", "items": [item]})["scores"] == [1.0]
        # Ctrl-C to the command alone: it stops Serve and the local Ray it started (Ray's own
        # processes, in its process group here, are not sent the signal: they are shut down by it)
        code, out = _interrupt(proc)
        # a clean stop, or under load one that ran out of time and killed what it started
        assert code in (0, 130) and "shutting down" in out, out[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


STALLED_GRACE_S = 8.0
STALLED = (
    """
import sys, time
import ray.serve
import polyray.cli.common
ray.serve.shutdown = lambda: time.sleep(3600)  # Serve's shutdown never returns (it took minutes under load)
polyray.cli.common.STOP_GRACE_S = %r  # the same deadline, shorter: the test waits it out
from polyray.cli import main
main(sys.argv[1:])
"""
    % STALLED_GRACE_S
)


def test_ctrl_c_returns_the_terminal_when_serves_shutdown_stalls(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", STALLED, "serve", "reward", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert _wait_healthy(f"http://127.0.0.1:{port}", proc)["status"] == "ok"
        code, out = _interrupt(proc, STALLED_GRACE_S)
        assert code == 130 and f"still stopping {STALLED_GRACE_S:g} s after Ctrl-C" in out, out[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _interrupt(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> tuple[int, str]:
    """SIGINT to the command; (exit code, output) once it exits, which must be within its stop deadline
    (plus the time to kill what it started), with nothing it started left running: Ray's GCS, raylet and
    workers, Serve's controller, proxy and replicas."""
    tree = {pid: lifetime.start_time(pid) for pid in lifetime.descendants(proc.pid)}
    assert len(tree) > 3, tree  # the local cluster's processes at least
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=grace_s + 15)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {grace_s + 15:g} s after Ctrl-C") from None
    deadline = time.monotonic() + 10  # a killed process is reaped by its parent or init
    while (left := [p for p, started in tree.items() if lifetime.alive(p, started)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [(p, " ".join(psutil.Process(p).cmdline())) for p in left]
    return proc.returncode, out
