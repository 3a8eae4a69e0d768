"""Hostile completions: each must fail (score 0) or be contained, in every mode polyray judges in.

polyray judges code only in a namespace mode (``uid+namespaces``, ``userns``); ``rlimits``
refuses without ``allow_weak_sandbox`` (checked here too). Reward attacks go through the real
:func:`~polyray.tasks.humaneval.run_humaneval_check` (what ``code_exec`` and HumanEval's
pass@k use); containment attacks through :func:`~polyray.sandbox.run_python`, checked from
outside (files, sockets, processes, the host's view).
"""

from __future__ import annotations

import os
import socket
import textwrap

import pytest

from polyray import sandbox as sb
from polyray.tasks.humaneval import humaneval_problems, run_humaneval_check
from support.processes import UNGUARD, listener, processes_with, working_modes

# a few dozen sandboxes per mode; the few that bound a wall-clock time or hold hundreds of processes run in
# the serial pass
pytestmark = [pytest.mark.slow]
serial = pytest.mark.serial

SECRET = "polyray-hostile-secret-7c9e6679"


NAMESPACE_MODES = [m for m in working_modes() if m != "rlimits"]


@pytest.fixture(params=NAMESPACE_MODES)
def mode(request, monkeypatch):
    monkeypatch.setattr(sb, "_detected", request.param)  # what "auto" picks, for the judge path
    return request.param


def judge(task_id: str, completion: str, timeout: float = 5.0):
    return run_humaneval_check(humaneval_problems()[task_id], completion, timeout=timeout)


def run(mode: str, source: str, **limits) -> sb.SandboxResult:
    return sb.run_python(textwrap.dedent(source), sb.SandboxLimits(**limits), isolation=mode)


def indent(body: str) -> str:
    return textwrap.indent(textwrap.dedent(body), "    ")


# ----------------------------------------------------------------------- faked rewards
# (each judged in every mode, with the rest of the hostile suite: test_hostile_suite.py)
# a program that writes a pass into every pipe it can reach, then fails
STATUS_PIPE_FORGERY = indent("""
    import os, json
    for pid in {os.getppid(), 1, os.getpid()}:
        try:
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    w = os.open("/proc/%d/fd/%s" % (pid, fd), os.O_WRONLY | os.O_NONBLOCK)
                    os.write(w, json.dumps({"exit": 0}).encode())
                except OSError:
                    pass
        except OSError:
            pass
    os._exit(1)
""")


def test_patched_builtins_cannot_bend_the_tests(mode):
    # HumanEval/4 asserts `abs(candidate(xs) - mad) < 1e-6`: a patched abs would pass anything
    completion = "    return 123.0\nimport builtins\nbuiltins.abs = lambda x: 0\n"  # before check() runs
    assert not judge("HumanEval/4", completion).passed
    assert judge("HumanEval/4", humaneval_problems()["HumanEval/4"]["canonical_solution"]).passed


# ------------------------------------------------------------------------ containment
def test_rlimits_guard_bypass_is_contained_in_namespace_modes(mode, monkeypatch):
    """The audit-hook bypass switches off rlimits mode's guard; namespaces do not depend on it."""
    monkeypatch.setenv("POLYRAY_HOSTILE_SECRET", SECRET)
    with listener() as (server, port):
        result = run(
            mode,
            f"""
            import os, socket, sys
            g = sys._getframe(0).f_globals
            g["_BLOCKED"] = (); g["_inside"] = lambda p, r: True
            for pid in range(1, 4 * 65536):
                try:
                    data = open("/proc/%d/environ" % pid, "rb").read()
                except OSError:
                    continue
                if b"POLYRAY_HOSTILE" in data:
                    print("LEAKED", data)
                    break
                if pid > 70000:
                    break
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1)
                print("CONNECTED")
            except OSError as exc:
                print("refused", exc)
            """,
            timeout_s=20,
        )
        assert SECRET not in result.stdout + result.stderr and "CONNECTED" not in result.stdout, result
        with pytest.raises(socket.timeout):
            server.accept()


def test_status_pipe_forgery_cannot_turn_a_failure_into_a_pass(mode):
    result = run(mode, "import sys\n" + "def f():\n" + STATUS_PIPE_FORGERY + "f()\n")
    assert result.status == "failed" and result.returncode == 1, result


@serial  # a timeout enforced in seconds; hundreds of processes
def test_fork_bomb_in_a_completion_is_contained(mode):
    completion = "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n"
    result = judge("HumanEval/0", completion, timeout=2.0)
    assert not result.passed and result.duration_s < 10, result
    assert run(mode, "print(6 * 7)").stdout.strip() == "42"


@serial  # a timeout enforced in seconds; hundreds of processes
def test_the_processes_a_program_holds_at_once_are_bounded(mode):
    """RLIMIT_NPROC binds per uid (a root service's uid+namespaces mode runs a throw-away uid) or per user
    namespace, but not uid 0: in userns mode under a root service the PID namespace's pid_max bounds it."""
    result = run(
        mode,
        """
        import os, time
        held = 0
        for _ in range(3000):
            try:
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
            except OSError:
                break
            held += 1
        print("held", held)
    """,
        timeout_s=60,
    )
    held = int(result.stdout.split("held")[-1])
    assert held < sb._pid_max(sb.SandboxLimits()), result


def test_disk_filler_is_capped(mode, monkeypatch, tmp_path):
    monkeypatch.setattr(sb.tempfile, "tempdir", str(tmp_path))
    result = run(
        mode,
        """
        import os
        written = 0
        try:
            for i in range(100):  # 100 MiB in 1 MiB files, each under RLIMIT_FSIZE
                with open("fill%d" % i, "wb") as f:
                    f.write(b"x" * (1 << 20))
                written += 1
        except OSError as exc:
            print("stopped", exc.errno)
        print("MiB", written)
        """,
        timeout_s=30,
        **({"disk_mb": 32} if "disk_mb" in sb.SandboxLimits.__dataclass_fields__ else {}),
    )
    mib = int(result.stdout.split("MiB")[-1])
    assert mib <= 32, result
    assert list(tmp_path.iterdir()) == []


def test_etc_shadow_and_service_config_are_absent(mode):
    result = run(
        mode,
        """
        import os
        for path in ("/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/sudoers"):
            try:
                print(path, open(path).read()[:40] if os.path.isfile(path) else os.listdir(path))
            except OSError as exc:
                print(path, "absent", exc.errno)
        import json, hashlib  # the standard library still works
        print("ok")
        """,
    )
    assert result.passed and result.stdout.count("absent") == 4, result


def test_symlink_planted_for_cleanup_is_not_followed(mode, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    victim.chmod(0o640)
    result = run(
        mode,
        f"""
        import os
        os.mkdir("trap")
        os.symlink({str(victim)!r}, "trap/link")
        os.symlink({str(victim)!r}, "link")
        os.chmod("trap", 0o500)
        os.chmod(".", 0o500)
        print("planted")
        """,
    )
    assert "planted" in result.stdout, result
    assert oct(victim.stat().st_mode)[-3:] == "640" and victim.read_text() == "keep"


def test_rmtree_never_chmods_through_a_symlink(tmp_path):
    """rlimits mode writes into the host directory: cleanup itself must not follow links."""
    victim = tmp_path / "victim"
    victim.write_text("keep")
    victim.chmod(0o640)
    work = tmp_path / "work"
    (work / "trap").mkdir(parents=True)
    (work / "trap" / "link").symlink_to(victim)
    (work / "trap").chmod(0o500)
    work.chmod(0o500)
    sb._rmtree(str(work))
    assert not work.exists() and oct(victim.stat().st_mode)[-3:] == "640"


# ---------------------------------------------------------------------- fail closed
def test_rlimits_refuses_without_the_opt_in(monkeypatch):
    monkeypatch.setattr(sb, "_detected", "rlimits")
    with pytest.raises(sb.WeakSandboxError) as info:
        sb.require_isolation("userns", False, where="task.sandbox")
    message = str(info.value)
    assert "\n" not in message and "task.sandbox.min_isolation" in message and "allow_weak_sandbox" in message
    assert sb.require_isolation("userns", True) == "rlimits"
    assert sb.require_isolation("rlimits", False) == "rlimits"
    monkeypatch.setattr(sb, "_detected", "userns")
    with pytest.raises(sb.WeakSandboxError):
        sb.require_isolation("uid+namespaces")
    assert sb.require_isolation("userns") == "userns"


def test_an_opted_in_rlimits_sandbox_leaves_no_process_when_the_service_is_killed():
    """rlimits mode has no PID namespace whose end kills a program's processes, and a child clears the
    parent-death signal: with the audit hook off, a setsid grandchild (forked, or spawned by subprocess)
    outlived a SIGKILLed service. The filter now refuses every new process there."""
    import subprocess
    import sys
    import time

    marker = f"polyray-rlimits-escapee-{os.getpid()}"
    sleeper = f'[sys.executable, "-c", "import time; time.sleep(600)", {marker!r}]'
    program = UNGUARD + textwrap.dedent(f"""
        import os, subprocess, sys, time
        try:
            if os.fork() == 0:
                os.setsid()
                os.execv(sys.executable, {sleeper})
        except OSError as exc:
            print("fork refused", exc.errno)
        try:
            subprocess.Popen({sleeper}, start_new_session=True)
        except OSError as exc:
            print("spawn refused", exc.errno)
        time.sleep(600)
    """)
    service = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from polyray import sandbox as sb;"
            " sb.run_python(sys.stdin.read(), sb.SandboxLimits(timeout_s=120), isolation='rlimits')",
        ],
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        service.stdin.write(program)
        service.stdin.close()
        time.sleep(4.0)  # the program is running (a sandbox starts in well under a second)
        assert service.poll() is None
        service.kill()
        service.wait()
        time.sleep(1.0)
        survivors = processes_with(marker)
        assert not survivors, f"processes outlived the killed service: {survivors}"
    finally:
        service.kill()
        for pid in processes_with(marker):
            os.kill(int(pid), 9)
