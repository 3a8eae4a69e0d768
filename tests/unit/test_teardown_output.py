"""A run's process exits quietly: what the interpreter's teardown prints goes to the run's library log."""

from __future__ import annotations

import subprocess
import sys

# a module-level object whose finaliser writes to standard error while the interpreter tears down
PROGRAM = """
import sys
from polyray.io import route_teardown_output

class Noisy:
    def __del__(self):
        sys.stderr.write("noise from teardown\\n")

noisy = Noisy()
route_teardown_output(sys.argv[1])
sys.stderr.write("the run's own line\\n")
"""


def test_teardown_output_goes_to_the_log_and_the_runs_lines_stay(tmp_path):
    log = tmp_path / "library.log"
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(log)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stderr == "the run's own line\n"
    assert log.read_text() == "noise from teardown\n"


def test_without_it_the_terminal_gets_the_noise(tmp_path):
    program = PROGRAM.replace("route_teardown_output(sys.argv[1])", "")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.stderr == "the run's own line\nnoise from teardown\n"
