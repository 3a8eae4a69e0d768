"""Ctrl-C gives the terminal back (polyray.cli.common.bounded_interrupt): a command whose clean-up
stalls (as Serve's and Ray's shutdown did under load) still ends within its deadline, a second Ctrl-C
ends it at once, and nothing it started is left running either way, not even a process its clean-up
orphaned.

Each case is a real interpreter with a real process tree (a child, and a grandchild that its parent
leaves behind), sent real SIGINTs; what is left is read from /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from polyray import lifetime

pytestmark = pytest.mark.slow  # interpreters and their process trees, a few seconds each

COMMAND = """
import subprocess, sys, time
from polyray.cli.common import bounded_interrupt

with bounded_interrupt(grace_s=float(sys.argv[1])):
    child = subprocess.Popen(["sleep", "600"])
    # a grandchild under a shell: the shell exits on SIGTERM in the clean-up, orphaning it
    shell = subprocess.Popen(["sh", "-c", "sleep 600 & wait"])
    time.sleep(0.5)
    try:
        # ready only inside the block whose clean-up is tested: a Ctrl-C right after the line is written
        # (the interpreter preempted before its next bytecode) must land in it
        print("ready", child.pid, shell.pid, flush=True)
        while True:
            time.sleep(0.1)
    finally:
        shell.terminate()
        shell.wait()
        print("cleaning up", flush=True)
        if sys.argv[2] == "stall":
            time.sleep(600)  # a shutdown that never returns
        child.terminate()
        child.wait()
"""


def _start(grace_s: float, cleanup: str):
    proc = subprocess.Popen(
        [sys.executable, "-c", COMMAND, str(grace_s), cleanup],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline().split()
    assert line and line[0] == "ready", proc.communicate()
    tree = {pid: lifetime.start_time(pid) for pid in lifetime.descendants(proc.pid)}
    assert len(tree) >= 3, tree  # sleep, sh and its sleep
    return proc, tree


def _left(tree: dict[int, int | None]) -> list[int]:
    deadline = time.monotonic() + 5  # a SIGKILLed process is reaped by its parent or init
    while time.monotonic() < deadline:
        left = [pid for pid, started in tree.items() if lifetime.alive(pid, started)]
        if not left:
            return []
        time.sleep(0.1)
    return left


def _finish(proc, within_s: float) -> tuple[int, str, float]:
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=within_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"still running {within_s} s after Ctrl-C") from None
    return proc.returncode, out + err, time.monotonic() - start


def test_a_stalled_cleanup_ends_at_the_deadline_and_kills_the_tree():
    proc, tree = _start(grace_s=2, cleanup="stall")
    proc.send_signal(signal.SIGINT)
    code, output, took = _finish(proc, within_s=20)
    assert code == 130 and "still stopping 2 s after Ctrl-C" in output and "cleaning up" in output, output
    assert took >= 1.5  # the clean-up had its time first
    assert _left(tree) == []


def test_a_second_ctrl_c_stops_at_once():
    proc, tree = _start(grace_s=600, cleanup="stall")
    proc.send_signal(signal.SIGINT)
    time.sleep(1)  # in the stalled clean-up
    proc.send_signal(signal.SIGINT)
    code, output, _ = _finish(proc, within_s=20)
    assert code == 130 and "stopped at once (Ctrl-C again)" in output, output
    assert _left(tree) == []


def test_a_clean_exit_leaves_nothing_it_started():
    """The clean-up returns; the grandchild its shell left behind (orphaned, out of the tree) is killed too."""
    proc, tree = _start(grace_s=600, cleanup="returns")
    proc.send_signal(signal.SIGINT)
    code, output, _ = _finish(proc, within_s=20)
    assert code != 130 and "KeyboardInterrupt" in output and "cleaning up" in output, output
    assert _left(tree) == []


def test_the_handler_is_the_callers_again_after_an_uninterrupted_block():
    from polyray.cli.common import bounded_interrupt

    before = signal.getsignal(signal.SIGINT)
    with bounded_interrupt():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
