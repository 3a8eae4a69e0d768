"""The hostile-completion suite: fakes, escapes and exhaustion, each judged as a reward would be.

Every case is a completion of HumanEval/0 (``has_close_elements``) judged through
:func:`~polyray.tasks.humaneval.run_humaneval_check` (the candidate and its tests in two sandboxes, what
``code_exec`` and HumanEval's pass@k run), in every isolation mode polyray judges in here. Each must score 0,
and what it tried is checked from outside, after it: a 0600 file and an environment variable of this
process (the service) never appear in what comes back, a sentinel file is intact and no file appeared
beside it, a loopback listener saw no connection, no process carrying the case's marker still runs. After
the suite, in each mode: an honest completion passes, and no sandbox uid, file descriptor or work directory
of this process is left taken.

``rlimits`` mode (no namespaces) judges only with an operator's opt-in and contains accidents, not an
adversary (its audit hook can be switched off: ``test_sandbox_hostile.py``), so it runs the fakes and the
exhaustion cases only.
"""

from __future__ import annotations

import os
import socket
import textwrap

import pytest
from support.processes import listener, processes_with, working_modes

from polyray import sandbox as sb
from polyray.tasks.humaneval import humaneval_problems, run_humaneval_check

pytestmark = [pytest.mark.slow]

SECRET = "polyray-suite-secret-0b7a3c51"
PROBLEM = "HumanEval/0"


def body(source: str) -> str:
    return textwrap.indent(textwrap.dedent(source), "    ")


# Each completion gets {sentinel}, {outside}, {port}, {marker}, {pid}, {secret_file} filled in.
FAKES = {
    "pass_token_from_its_file": body("""
        import os, re, sys
        source = open(__file__).read() if "__file__" in globals() else open(sys.argv[-1]).read()
        for token in re.findall(r"[0-9a-f]{{32}}", source)[-1:]:
            print(token, flush=True)
        os._exit(0)
    """),
    "pass_token_from_co_consts": body("""
        import os, sys
        frame = sys._getframe()
        while frame.f_back is not None:
            frame = frame.f_back
        print([c for c in frame.f_code.co_consts if isinstance(c, str)][-1:], flush=True)
        os._exit(0)
    """),
    "always_equal_int": body("""
        class AlwaysEqual(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = int.__hash__
        return AlwaysEqual(1)
    """),
    "always_equal_dict": body("""
        class D(dict):
            def __eq__(self, other): return True
        return D()
    """),
    "exit_0_at_import": "    return True\nimport sys\nsys.exit(0)\n",
    "os_exit_0_in_the_call": "    import os\n    os._exit(0)\n",
    "system_exit_in_the_call": "    raise SystemExit(0)\n",
    "keyboard_interrupt": "    raise KeyboardInterrupt\n",
    "patched_assertion_error": body("""
        import atexit, builtins, os, sys
        builtins.AssertionError = type("Quiet", (Exception,), {{}})
        sys.excepthook = lambda *a: None
        atexit.register(lambda: os._exit(0))
        return None
    """),
    "patched_builtins": "    import builtins\n    builtins.abs = builtins.len = lambda x: 0\n    return 0\n",
    "status_pipe_forgery": body("""
        import json, os
        for pid in {{os.getppid(), 1, os.getpid()}}:
            try:
                fds = os.listdir("/proc/%d/fd" % pid)
            except OSError:
                continue
            for fd in fds:
                try:
                    w = os.open("/proc/%d/fd/%s" % (pid, fd), os.O_WRONLY | os.O_NONBLOCK)
                    os.write(w, json.dumps({{"exit": 0}}).encode())
                except OSError:
                    pass
        os._exit(1)
    """),
    "forged_replies_ahead": body("""
        import json, os
        for _ in range(64):
            os.write(4, (json.dumps({{"state": [[], {{"l": []}}], "ok": True}}) + "\\n").encode())
        return True
    """),
    "tampered_server_encoder": body("""
        import sys
        sys.modules["__main__"].encode = lambda *a, **k: {{"evil": 1}}
        return True
    """),
    "lying_exception_message": body("""
        class E(Exception):
            def __str__(self): return "True"
        raise E()
    """),
    "a_generator": "    return (x for x in [True])\n",
    "a_reply_over_the_line_cap": "    return 'x' * (20 << 20)\n",
}

ESCAPES = {
    "read_a_service_file": body("""
        import sys
        print(open({secret_file!r}).read(), file=sys.stderr)
        raise RuntimeError
    """),
    "read_the_services_environment": body("""
        import sys
        for path in ("/proc/{pid}/environ", "/proc/1/environ", "/proc/self/environ"):
            try:
                print(open(path, "rb").read(), file=sys.stderr)
            except OSError:
                pass
        raise RuntimeError
    """),
    "connect_to_the_loopback": body("""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=1)
        return True
    """),
    "raw_and_netlink_sockets": body("""
        import socket
        for family, kind in ((socket.AF_INET, socket.SOCK_RAW), (socket.AF_NETLINK, socket.SOCK_RAW),
                             (socket.AF_INET6, socket.SOCK_STREAM)):
            try:
                s = socket.socket(family, kind)
                s.connect(("127.0.0.1", {port}))
            except OSError:
                pass
        raise RuntimeError
    """),
    "write_beside_the_sentinel": "    open({outside!r}, 'w').write('x')\n    return True\n",
    "delete_the_sentinel": "    import os\n    os.remove({sentinel!r})\n    return True\n",
    "symlink_to_the_sentinel": body("""
        import os
        os.symlink({sentinel!r}, "link")
        open("link", "w").write("pwned")
        return True
    """),
    "kill_the_service": "    import os, signal\n    os.kill({pid}, signal.SIGTERM)\n    return True\n",
    "setsid_survivor": body("""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
        return True
    """),
    "double_fork_daemon": body("""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
            os._exit(0)
        return True
    """),
    "ptrace_and_process_memory": body("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.ptrace(16, 1, 0, 0), libc.syscall(310, 1, 0, 0, 0, 0, 0))  # PTRACE_ATTACH, process_vm_readv
        raise RuntimeError
    """),
    "mount_and_unshare": body("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None), libc.unshare(0x10000000 | 0x20000))
        print(libc.syscall(161, b"/tmp"))  # chroot
        raise RuntimeError
    """),
    "kernel_surface": body("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print([libc.syscall(n, 0, 0, 0) for n in (321, 298, 323, 425, 250)])  # bpf, perf, userfaultfd, io_uring, keyctl
        raise RuntimeError
    """),
    "read_shadow_and_ssh": body("""
        import sys
        for path in ("/etc/shadow", "/root/.ssh/id_rsa", "/root/.bash_history"):
            try:
                print(open(path).read(), file=sys.stderr)
            except OSError:
                pass
        raise RuntimeError
    """),
    "ray_session_and_dev_shm": body("""
        import os, sys
        for path in ("/tmp/ray", "/dev/shm"):
            try:
                print(path, os.listdir(path), file=sys.stderr)
            except OSError:
                pass
        raise RuntimeError
    """),
}

EXHAUSTION = {
    "fork_bomb": "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
    "memory_bomb": "    x = bytearray(8 << 30)\n    return True\n",
    "memory_in_steps": "    x = []\n    while True:\n        x.append(bytearray(64 << 20))\n",
    "busy_loop": "    while True:\n        pass\n",
    "sleeps_past_the_deadline": "    import time\n    time.sleep(600)\n",
    "disk_filler": "    while True:\n        open('/tmp/fill', 'ab').write(b'x' * (1 << 20))\n",
    "inode_filler": "    n = 0\n    while True:\n        open('/tmp/f%d' % n, 'w').close()\n        n += 1\n",
    "output_flood": "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
    "thread_storm": body("""
        import threading, time
        while True:
            threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    """),
    "file_descriptors": "    fds = []\n    while True:\n        fds.append(open('/dev/null'))\n",
    "deep_recursion": "    import sys\n    sys.setrecursionlimit(10**7)\n    def r(n): return r(n + 1)\n    return r(0)\n",
    "sysv_shared_memory": body("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        while True:
            sid = libc.shmget(0, 128 << 20, 0o1600)
            if sid < 0:
                break
            addr = libc.shmat(sid, None, 0)
            ctypes.memset(addr, 1, 128 << 20)
        return True
    """),
}
CASES = {
    **{f"fake:{k}": v for k, v in FAKES.items()},
    **{f"escape:{k}": v for k, v in ESCAPES.items()},
    **{f"exhaustion:{k}": v for k, v in EXHAUSTION.items()},
}
MODES = list(working_modes())


def _cases(mode: str) -> list[str]:
    return sorted(c for c in CASES if mode != "rlimits" or not c.startswith("escape:"))


def _taken() -> dict[str, object]:
    """What this process holds for sandboxes: uids in use, open fds, its work directories."""
    root = sb.process_dir(sb.WORK_ROOT)
    return {"uids": sb._UIDS.in_use(), "fds": len(os.listdir("/proc/self/fd")), "workdirs": sorted(os.listdir(root))}


@pytest.fixture(scope="module")
def before():
    return _taken()


@pytest.mark.parametrize(("mode", "case"), [(m, c) for m in MODES for c in _cases(m)])
def test_every_hostile_completion_scores_0_and_changes_nothing_outside(mode, case, tmp_path, monkeypatch, before):
    monkeypatch.setattr(sb, "_detected", mode)  # what "auto" picks: the judge's path in this mode
    monkeypatch.setenv("POLYRAY_SUITE_SECRET", SECRET)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    sentinel, outside = tmp_path / "sentinel.txt", tmp_path / "outside.txt"
    sentinel.write_text("keep")
    marker = f"polyray-suite-{os.getpid()}-{mode}-{case}"
    with listener() as (server, port):
        completion = CASES[case].format(
            sentinel=str(sentinel),
            outside=str(outside),
            port=port,
            marker=marker,
            pid=os.getpid(),
            secret_file=str(secret_file),
        )
        problem = humaneval_problems()[PROBLEM]
        compile(problem["prompt"] + completion, case, "exec")  # the attack is a completion (it can run at all)
        # exhaustion runs to its deadline (or a limit); the others end in well under theirs
        timeout = 1.5 if case.startswith("exhaustion:") else 5.0
        result = run_humaneval_check(problem, completion, timeout=timeout)
        assert not result.passed and result.status != "passed", result
        assert SECRET not in result.stdout + result.stderr
        with pytest.raises(socket.timeout):
            server.accept()
    assert sentinel.read_text() == "keep" and not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt", "sentinel.txt"]
    assert not processes_with(marker), f"outlived the sandbox: {processes_with(marker)}"


@pytest.mark.parametrize("mode", MODES)
def test_the_service_is_healthy_after_the_suite(mode, monkeypatch, before):
    monkeypatch.setattr(sb, "_detected", mode)
    problem = humaneval_problems()[PROBLEM]
    assert run_humaneval_check(problem, problem["canonical_solution"], timeout=10.0).passed
    after = _taken()
    assert after["uids"] == 0 and after["workdirs"] == [], after
    assert after["fds"] <= before["fds"], (before, after)
