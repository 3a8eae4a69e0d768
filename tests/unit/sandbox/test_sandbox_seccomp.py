"""The sandbox's seccomp filter: its system-call table against libseccomp's, and what a program meets.

Behaviour is checked in every isolation mode that works here, ``rlimits`` included with its audit
hook switched off first (as an adversary would), so the filter is what refuses: raw calls through
``ctypes`` get ``EPERM`` (``clone3``: ``ENOSYS``), while what tests need (threads, fork, ``AF_UNIX``
sockets) still works; a candidate that opens an ``AF_INET`` socket or calls ``ptrace`` is scored failed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import platform
import textwrap

import pytest

from polyray import sandbox as sb
from polyray.sandbox import seccomp
from polyray.tasks.humaneval import humaneval_problems, run_humaneval_check
from support.processes import UNGUARD, working_modes

MODES = list(working_modes())


@pytest.mark.parametrize("machine", sorted(seccomp.SYSCALLS))
def test_syscall_numbers_match_libseccomp(machine):
    """An independent table: libseccomp resolves each name for each architecture."""
    path = ctypes.util.find_library("seccomp")
    if path is None:
        pytest.skip("libseccomp is not installed here (the table is checked where it is)")
    lib = ctypes.CDLL(path)
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]

    def resolve(name):
        return lib.seccomp_syscall_resolve_name_arch(seccomp.AUDIT_ARCH[machine], name.encode())

    table = seccomp.SYSCALLS[machine]
    assert set(seccomp.DENIED) | set(seccomp.SHARED_MEMORY) | {"socket", "clone", "clone3"} | (
        set(seccomp.FORKS) & set(table)
    ) == set(table)
    assert {name: resolve(name) for name in table} == table


def test_unknown_architecture_refuses_to_run(monkeypatch):
    with pytest.raises(ValueError, match="riscv64"):
        seccomp.build_filter("riscv64")
    monkeypatch.setattr(sb.platform, "machine", lambda: "riscv64")
    result = sb.run_python("print(1)", isolation="rlimits")
    assert result.status == "error" and "seccomp" in result.reason, result


PROBE = UNGUARD + textwrap.dedent("""
    import ctypes, json, os, socket, threading
    libc = ctypes.CDLL(None, use_errno=True)
    NR = NUMBERS
    out = {}
    def call(name, fn, *args):
        ctypes.set_errno(0)
        rc = fn(*args)
        out[name] = ctypes.get_errno() if rc == -1 else 0
    call("ptrace", libc.ptrace, 0, 0, 0, 0)  # PTRACE_TRACEME
    call("unshare_user", libc.unshare, 0x10000000)
    call("unshare_net", libc.unshare, 0x40000000)
    call("mount", libc.mount, b"none", b"/tmp", b"tmpfs", 0, None)
    call("setns", libc.setns, 0, 0)
    for name in ("bpf", "perf_event_open", "keyctl", "userfaultfd", "io_uring_setup", "clone3"):
        call(name, libc.syscall, NR[name], 0, 0, 0, 0, 0)
    call("clone_newuser", libc.syscall, NR["clone"], 0x10000000 | 17, 0, 0, 0, 0)  # CLONE_NEWUSER | SIGCHLD
    for family in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
        try:
            socket.socket(getattr(socket, family), socket.SOCK_DGRAM if family != "AF_PACKET" else socket.SOCK_RAW).close()
            out[family] = 0
        except OSError as exc:
            out[family] = exc.errno
    a, b = socket.socketpair()  # AF_UNIX
    a.sendall(b"x"); out["unix"] = b.recv(1).decode()
    t = threading.Thread(target=out.__setitem__, args=("thread", "ran")); t.start(); t.join()
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork"] = os.WEXITSTATUS(os.waitpid(pid, 0)[1])
    except OSError as exc:
        out["fork"] = -exc.errno
    print(json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_denied_calls_fail_with_eperm_and_the_rest_works(mode):
    numbers = seccomp.SYSCALLS[platform.machine()]
    result = sb.run_python(PROBE.replace("NUMBERS", repr(numbers)), sb.SandboxLimits(timeout_s=20), isolation=mode)
    assert result.passed, result
    out = json.loads(result.stdout.strip().splitlines()[-1])
    denied = [
        "ptrace",
        "unshare_user",
        "unshare_net",
        "mount",
        "setns",
        "bpf",
        "perf_event_open",
        "keyctl",
        "userfaultfd",
        "io_uring_setup",
        "clone_newuser",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
        "AF_PACKET",
    ]
    assert {name: out[name] for name in denied} == dict.fromkeys(denied, 1), out  # EPERM, every one
    assert out["clone3"] == 38  # ENOSYS: libc falls back to clone, whose flags the filter can read
    # rlimits mode has no PID namespace to take a program's processes along: it starts none
    assert (out["unix"], out["thread"], out["fork"]) == ("x", "ran", 7 if mode != "rlimits" else -1)


CANONICAL = humaneval_problems()["HumanEval/0"]["canonical_solution"]
FORBIDDEN = {
    "inet_socket": "    import socket\n    socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()\n",
    # PTRACE_PEEKDATA on itself, untraced: ESRCH where ptrace is allowed, EPERM under the filter
    "ptrace": "    import ctypes, os\n    libc = ctypes.CDLL(None, use_errno=True)\n    libc.ptrace(2, os.getpid(), 0, 0)\n"
    "    assert ctypes.get_errno() == 3, 'ptrace refused'\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(FORBIDDEN))
@pytest.mark.parametrize("mode", MODES)
def test_a_candidate_using_a_denied_call_is_scored_failed(mode, what, monkeypatch):
    """Otherwise correct: only the denied call stands between it and a pass (checked by the honest run)."""
    monkeypatch.setattr(sb, "_detected", mode)
    problem = humaneval_problems()["HumanEval/0"]
    assert run_humaneval_check(problem, CANONICAL).passed
    completion = textwrap.indent(UNGUARD, "    ") + FORBIDDEN[what] + CANONICAL
    result = run_humaneval_check(problem, completion)
    assert not result.passed and result.status == "failed", result
    assert ("PermissionError" if what == "inet_socket" else "ptrace refused") in result.stderr, result.stderr
