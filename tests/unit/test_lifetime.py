"""Nothing a SIGKILLed process started outlives it (polyray.lifetime): its sandboxes die, and its work
directories are swept by the next process that starts one, while a live process's are kept.

The killed process is a real interpreter running a real sandbox (a sleeping program), killed with
SIGKILL mid-run, so no ``finally`` of it runs; what it left is read from /proc and the file system.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyray import lifetime
from polyray import sandbox as sb
from support.processes import processes_with

pytestmark = pytest.mark.slow  # ~5 s: a sandbox starts in a fresh interpreter

MARKER = "polyray-lifetime-sleeper"
SLEEPER = f"""
import sys
from polyray import sandbox as sb
sb.run_python("import time  # {MARKER}\\ntime.sleep(60)", sb.SandboxLimits(timeout_s=60), isolation=sys.argv[1])
"""


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_service_leaves_no_sandbox_and_its_work_directory_is_swept():
    root = Path(lifetime.shared_root(sb.WORK_ROOT))
    mode = sb.detect_isolation()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])}
    service = subprocess.Popen([sys.executable, "-c", SLEEPER, mode], env=env)
    try:
        mine = root / lifetime.owner_tag(service.pid)  # where that process keeps its work directories
        runs = _wait_for(lambda: list(mine.glob("run-*")), 30, "the sandbox's work directory")
        _wait_for(lambda: processes_with(MARKER), 30, "the sandboxed program")
        # a live process's directory is kept by a sweep
        assert str(mine) not in sb.sweep_workdirs() and runs[0].is_dir()
        os.kill(service.pid, signal.SIGKILL)
        service.wait()
        # the sandbox dies with it (PDEATHSIG on its launcher), the directory stays: no cleanup ran
        _wait_for(lambda: not processes_with(MARKER), 10, "the sandboxed program to die with the service")
        assert runs[0].is_dir()
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    other_namespace = root / f"1-{service.pid}-0"  # another container's process: never judged from here
    other_namespace.mkdir(exist_ok=True)
    own = Path(lifetime.process_dir(sb.WORK_ROOT))  # this (live) process's directory
    swept = sb.sweep_workdirs()  # what a restarted reward replica does first
    assert str(mine) in swept and not mine.exists()
    assert own.is_dir() and other_namespace.is_dir()
    other_namespace.rmdir()


def test_owner_tag_tells_a_recycled_pid_apart():
    tag = lifetime.owner_tag()
    namespace, pid, started = tag.split("-")
    assert int(pid) == os.getpid() and int(started) == lifetime.start_time(os.getpid())
    assert not lifetime.owner_gone(tag)
    assert lifetime.owner_gone(f"{namespace}-{pid}-{int(started) + 1}")  # same pid, another process
    assert not lifetime.owner_gone(f"{int(namespace) + 1}-{pid}-{int(started) + 1}")  # another PID namespace's


def test_shared_root_refuses_a_planted_symlink(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"polyray-x-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PermissionError, match="not a directory owned by uid"):
        lifetime.shared_root("polyray-x", str(tmp_path))
