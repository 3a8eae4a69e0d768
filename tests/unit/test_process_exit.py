"""A command's process ends after Python's own clean-up and without the native one (polyray.lifetime.exit_process).

The native hazard is modelled by an exit handler registered in C (``__cxa_atexit``, as a library's static
destructor is) that jumps to heap memory: the crash seen at the end of a finished command. A normal exit
runs it and dies of SIGSEGV; ``exit_process`` never reaches it, while the threads, executors, ``atexit``
handlers and buffered output of Python's exit all still happen, in Python's order; and neither a Ctrl-C
while the threads are joined nor a standard output closed at start changes its status or lets the teardown run.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import atexit, ctypes, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from polyray.lifetime import exit_process, exit_status

log = open(sys.argv[1], "a", buffering=1)
buf = ctypes.create_string_buffer(64)  # heap, not executable: a handler there faults
ctypes.CDLL(None).__cxa_atexit(ctypes.c_void_p(ctypes.addressof(buf)), None, None)
atexit.register(lambda: log.write("atexit\\n"))
pool = ThreadPoolExecutor(1)  # its idle worker must be stopped, not waited for forever
pool.submit(lambda: log.write("task\\n")).result()
threading.Thread(target=lambda: (time.sleep(0.2), log.write("thread\\n"))).start()  # still running at the exit
sys.stdout.write("the command's last line")  # buffered: a pipe
if sys.argv[2] == "exit_process":
    exit_process(exit_status(SystemExit(3)))
sys.exit(3)
"""


def _ending(tmp_path: Path, how: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = tmp_path / f"{how}.log"
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(log), how], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    return done, log.read_text().splitlines()


def test_exit_process_does_pythons_clean_up_and_skips_the_native_exit_handlers(tmp_path):
    done, lines = _ending(tmp_path, "exit_process")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "the command's last line"
    assert lines == ["task", "thread", "atexit"]  # threads joined before the atexit handlers, as at sys.exit


def test_a_normal_exit_reaches_the_native_handler_and_crashes(tmp_path):
    done, lines = _ending(tmp_path, "sys.exit")
    assert done.returncode == -signal.SIGSEGV, (done.returncode, done.stderr)
    assert lines == ["task", "thread", "atexit"]


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), ("error: a message", 1)])
def test_exit_status_maps_system_exit_as_the_interpreter_does(code, status, capsys):
    from polyray.lifetime import exit_status

    assert exit_status(SystemExit(code)) == status
    assert capsys.readouterr().err == ("error: a message\n" if status == 1 else "")


HAZARDS = """
import ctypes, os, signal, sys, threading, time
from polyray.lifetime import exit_process

buf = ctypes.create_string_buffer(64)
ctypes.CDLL(None).__cxa_atexit(ctypes.c_void_p(ctypes.addressof(buf)), None, None)
if sys.argv[1] == "ctrl-c while a thread is joined":
    threading.Thread(target=time.sleep, args=(1.0,)).start()
    def interrupt():  # once the exit has begun joining the threads (it marks the main thread stopped first)
        while not threading.main_thread()._is_stopped:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
exit_process(3)
"""


@pytest.mark.parametrize("hazard", ["ctrl-c while a thread is joined", "standard output closed at start"])
def test_nothing_on_the_way_out_changes_the_status_or_lets_the_teardown_run(hazard):
    command = [sys.executable, "-c", HAZARDS, hazard]
    if hazard == "standard output closed at start":
        command = ["sh", "-c", '"$0" "$@" >&-', *command]  # Python then has no sys.stdout at all
    done = subprocess.run(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 3, (done.returncode, done.stderr)
