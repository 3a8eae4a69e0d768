"""Test helpers for sandbox containment: the processes whose command line holds a marker (what a sandbox must
not leave behind), a loopback listener (what it must not reach), the isolation modes that work here, and
the lines that switch off ``rlimits`` mode's audit hook (as an adversary would); and a job entrypoint run as
a user runs it."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

# rlimits mode's audit hook off (the bypass, completed): what follows runs unguarded there
UNGUARD = textwrap.dedent("""
    import sys
    _f = sys._getframe(0)
    while _f is not None:
        if "_hook" in _f.f_globals:
            _f.f_globals["_hook"].__code__ = (lambda e, a: None).__code__
        _f = _f.f_back
""")


@functools.lru_cache(maxsize=1)
def working_modes() -> tuple[str, ...]:
    """The isolation modes in which a program runs here and cannot reach the loopback, strongest first."""
    from polyray import sandbox as sb

    def works(mode: str) -> bool:
        result = sb.run_python(sb._PROBE, sb.SandboxLimits(timeout_s=30), isolation=mode)
        return result.passed and result.stdout.startswith("ok")

    return tuple(m for m in sb.ISOLATION_MODES if (m != "uid+namespaces" or os.geteuid() == 0) and works(m))


def processes_with(marker: str) -> list[str]:
    """PIDs whose /proc cmdline contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(entry)
        except OSError:
            continue
    return found


@contextmanager
def listener(timeout_s: float = 0.05):
    """A TCP socket listening on a free loopback port: (socket, port); a sandboxed program must not reach it.
    Its ``accept`` is checked after the program ended: a loopback connect completes inside the program's
    ``connect`` call, so a connection it made is queued by then and the wait only needs to be short."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(timeout_s)
    try:
        yield server, server.getsockname()[1]
    finally:
        server.close()


def kill_by_env(name: str, value: str) -> None:
    """SIGKILL every process whose environment has ``name=value`` (a cluster's head, its workers, theirs) and
    their children: the raylet's agents rename themselves over their environment."""
    import psutil

    found = set()
    for p in psutil.process_iter():
        try:
            if p.environ().get(name) == value:
                found |= {p, *p.children(recursive=True)}
        except psutil.Error:  # gone, or a kernel thread
            continue
    for p in found:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(found, timeout=30)


def run_config(config: str, out: Path, sets: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """``polyray run <config> --output-dir <out>`` with each of ``sets`` as a ``--set``, from the checkout's root
    on a Ray cluster of its own (a session's ``RAY_ADDRESS`` dropped); asserts it succeeded."""
    root = Path(__file__).resolve().parents[2]
    args = [arg for s in sets for arg in ("--set", s)]
    cmd = [sys.executable, "-m", "polyray.cli", "run", config, "--output-dir", str(out), *args]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done


def run_module(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the checkout's root (as a user runs a job entrypoint); asserts it succeeded."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", *args], cwd=root, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc
