"""Hostile programs against the sandbox: each must be contained and leave this process healthy.

Every case runs in each isolation mode that works on this host (the strongest one is
what the service uses; the weaker ones are its fallbacks). "Contained" is checked from
the outside: the sentinel file still exists, nothing was written, the secret never
appears in the output, the listening socket saw no connection, and this process (the
"service") is alive and can still run a normal program afterwards.
"""

from __future__ import annotations

import os
import socket
import textwrap

import pytest

from polyray import sandbox as sb
from polyray.reward.code_exec import humaneval_problems, run_humaneval_check
from support.processes import listener, processes_with, working_modes

# every case runs in each isolation mode; the few that bound a wall-clock time run in the serial pass
pytestmark = [pytest.mark.slow]
# serial: a timeout enforced in seconds, checked against a machine it has to itself
wall_clock = pytest.mark.serial

SECRET = "polyray-test-secret-5d41402abc4b2a76"


MODES = list(working_modes())


@pytest.fixture(params=MODES)
def mode(request):
    return request.param


def run(mode: str, source: str, **limits) -> sb.SandboxResult:
    return sb.run_python(textwrap.dedent(source), sb.SandboxLimits(**limits), isolation=mode)


def assert_service_healthy(mode: str) -> None:
    """This process survived and the sandbox still runs an ordinary program."""
    result = run(mode, "print(6 * 7)")
    assert result.status == "passed" and result.stdout.strip() == "42", result


def test_auto_picks_the_strongest_mode_that_works():
    assert sb.detect_isolation() == MODES[0]
    assert run(MODES[0], "print('hi')").isolation == MODES[0]


def test_ordinary_program_passes_and_a_failing_one_fails(mode):
    ok = run(mode, "import math, hashlib\nprint(math.factorial(5), hashlib.md5(b'a').hexdigest()[:4])")
    assert ok.status == "passed" and ok.passed and ok.stdout.split() == ["120", "0cc1"]
    bad = run(mode, "assert 1 == 2, 'nope'")
    assert bad.status == "failed" and not bad.passed and bad.returncode == 1 and "AssertionError: nope" in bad.stderr
    syntax = run(mode, "def (:")
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr


def test_cannot_delete_or_write_files_outside_its_directory(mode, tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    outside = tmp_path / "pwned.txt"
    result = run(
        mode,
        f"""
        import os, shutil
        for attempt in (lambda: os.remove({str(sentinel)!r}), lambda: shutil.rmtree({str(tmp_path)!r}),
                        lambda: open({str(outside)!r}, "w").write("x"), lambda: open("/usr/pwned", "w"),
                        lambda: open("/etc/pwned", "w"), lambda: os.chmod({str(sentinel)!r}, 0)):
            try:
                attempt()
                print("DID IT")
            except Exception as exc:
                print(type(exc).__name__)
        open("inside.txt", "w").write("fine")  # its own directory is writable
        print("wrote inside")
        """,
    )
    assert "DID IT" not in result.stdout, result
    assert "wrote inside" in result.stdout, result
    assert sentinel.read_text() == "keep me" and oct(sentinel.stat().st_mode)[-3:] != "000"
    assert not outside.exists()
    assert not os.path.exists("/usr/pwned") and not os.path.exists("/etc/pwned")
    assert_service_healthy(mode)


def test_cannot_read_service_files_or_environment(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYRAY_SECRET_TOKEN", SECRET)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    own_source = sb.__file__
    result = run(
        mode,
        f"""
        import os
        print(sorted(os.environ.items()))
        for path in ({str(secret)!r}, "/proc/{os.getpid()}/environ", "/proc/1/environ", "/proc/self/environ",
                     {own_source!r}, "/proc/{os.getpid()}/cmdline"):
            try:
                print(path, open(path, "rb").read()[:200])
            except Exception as exc:
                print(path, type(exc).__name__)
        """,
    )
    assert SECRET not in result.stdout + result.stderr, result
    assert "POLYRAY_SECRET_TOKEN" not in result.stdout
    assert "Field(" not in result.stdout  # the service's own source stayed unreadable
    assert_service_healthy(mode)


def test_cannot_open_a_network_connection(mode):
    with listener() as (server, port):
        result = run(
            mode,
            f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=2)
                print("CONNECTED")
            except Exception as exc:
                print("refused", type(exc).__name__, exc)
            """,
        )
        assert "CONNECTED" not in result.stdout and "refused" in result.stdout, result
        with pytest.raises(socket.timeout):
            server.accept()
    assert_service_healthy(mode)


def test_cannot_kill_its_parent_or_the_service(mode):
    result = run(
        mode,
        f"""
        import os, signal
        for target in (os.getppid(), {os.getpid()}, -{os.getpgid(0)}, 1, -1):
            try:
                os.kill(target, signal.SIGKILL)
                print("sent", target)
            except Exception as exc:
                print("refused", target, type(exc).__name__)
        print("still here")
        """,
    )
    assert result.status in ("passed", "failed", "killed"), result  # kill(-1) may take the sandbox itself down
    assert_service_healthy(mode)  # reaching this line means the test process was not killed


@wall_clock
def test_infinite_loop_times_out(mode):
    result = run(mode, "while True:\n    pass\n", timeout_s=1.5)
    assert result.status in ("timeout", "killed") and not result.passed, result
    assert result.duration_s < 5
    assert_service_healthy(mode)


@wall_clock
def test_sleeping_program_is_stopped_by_the_wall_clock(mode):
    result = run(mode, "import time\ntime.sleep(60)\n", timeout_s=1.0)
    assert result.status == "timeout" and 0.9 < result.duration_s < 4, result


@wall_clock
def test_fork_bomb_is_contained(mode):
    result = run(
        mode,
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        timeout_s=2.0,
    )
    assert not result.passed and result.duration_s < 8, result
    assert_service_healthy(mode)


def test_escaped_background_processes_are_killed(mode):
    if mode == "rlimits":
        pytest.skip("rlimits mode refuses fork outright (checked by the fork bomb case)")
    marker = f"polyray-escapee-{os.getpid()}-{mode}"
    result = run(
        mode,
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()  # leave the process group; only the PID namespace can still reach it
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
        time.sleep(0.3)
        print("parent done")
        """,
    )
    assert result.status == "passed", result
    survivors = processes_with(marker)
    assert not survivors, f"background processes outlived the sandbox: {survivors}"


def test_memory_bomb_is_contained(mode):
    result = run(
        mode, "blocks = []\nwhile True:\n    blocks.append(bytearray(50_000_000))\n", memory_mb=256, timeout_s=10
    )
    assert not result.passed and result.status in ("failed", "killed"), result
    assert "MemoryError" in result.stderr or result.status == "killed"
    assert_service_healthy(mode)


def test_huge_output_is_capped(mode):
    result = run(
        mode, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", output_bytes=1 << 20, tail_bytes=1000
    )
    assert result.status == "killed" and result.truncated, result
    assert len(result.stdout) <= 1000
    assert_service_healthy(mode)


def test_temporary_directory_is_removed(mode, monkeypatch, tmp_path):
    monkeypatch.setattr(sb.tempfile, "tempdir", str(tmp_path))
    result = run(mode, "open('left.txt', 'w').write('x')\nimport os\nos.chmod('.', 0)\n")
    assert result.status == "passed", result
    assert list(tmp_path.iterdir()) == []


def test_humaneval_canonical_solution_passes_and_broken_one_fails():
    problem = humaneval_problems()["HumanEval/0"]
    good = run_humaneval_check(problem, problem["canonical_solution"], timeout=10)
    assert good.status == "passed", good
    broken = run_humaneval_check(problem, "    return False\n", timeout=10)
    assert broken.status == "failed" and "AssertionError" in broken.stderr, broken
    hanging = run_humaneval_check(problem, "    while True:\n        pass\n", timeout=1.5)
    assert hanging.status in ("timeout", "killed")


def test_no_command_line_in_the_sandbox_shows_the_host(mode):
    """The sandbox's init runs the launcher, whose settings and path are the host's: none of it is readable
    inside (its settings come on stdin, its argv is blanked), in any process's command line or environment."""
    result = run(
        mode,
        """
        import os
        try:
            pids = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError as exc:  # rlimits mode: the audit hook refuses it
            pids = []
            print("/proc", type(exc).__name__)
        for pid in ["1", "self", *pids]:
            for what in ("cmdline", "environ"):
                try:
                    print(pid, what, open(f"/proc/{pid}/{what}", "rb").read())
                except Exception as exc:
                    print(pid, what, type(exc).__name__)
        """,
    )
    assert result.status == "passed", result
    if mode != "rlimits":  # its own PID namespace: init and the program, nothing else
        assert "1 cmdline b'sandbox-init" in result.stdout and "self cmdline b'/" in result.stdout, result.stdout
    for host in (os.path.dirname(sb.__file__), sb.WORK_ROOT, '"status_fd"', '"seccomp"'):
        assert host not in result.stdout, (host, result.stdout)
