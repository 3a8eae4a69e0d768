"""A sandbox's memory and processes capped as a whole, not per process.

rlimits bind each process alone: a program that forks, maps SysV shared memory (in no process's RSS)
or fills a tmpfs with empty files (no size, but kernel memory each) held many times its ``memory_mb``.
Where the host mounts cgroup v1 writable (a root service here), each sandbox runs in its own memory
and pids groups; every tmpfs has a file count. Each program below passed, or grew without bound,
before: the host's memory (``/proc/meminfo``: available memory, Shmem, slab) is read beside it.
"""

from __future__ import annotations

import os
import textwrap
import threading
import time

import pytest
from support.processes import working_modes

from polyray import sandbox as sb
from polyray.sandbox import cgroups

NAMESPACED = ("uid+namespaces", "userns")


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in MiB."""
    with open("/proc/meminfo") as f:
        return {k: int(v.split()[0]) >> 10 for k, v in (line.split(":", 1) for line in f)}


class _Watch:
    """The host's memory while a program runs: the lowest MemAvailable and the highest Shmem and slab, in MiB."""

    def __init__(self):
        self.before = _meminfo()
        self.low_available, self.high_shmem, self.high_slab = self.before["MemAvailable"], 0, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._done.is_set():
            m = _meminfo()
            self.low_available = min(self.low_available, m["MemAvailable"])
            self.high_shmem, self.high_slab = max(self.high_shmem, m["Shmem"]), max(self.high_slab, m["Slab"])
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def taken(self) -> dict[str, int]:
        """MiB the run took at its peak: of available memory, Shmem and slab."""
        return {
            "available": self.before["MemAvailable"] - self.low_available,
            "shmem": self.high_shmem - self.before["Shmem"],
            "slab": self.high_slab - self.before["Slab"],
        }


def _caps_here(mode: str) -> None:
    if mode not in working_modes():
        pytest.skip(f"{mode} does not work on this host")
    if not cgroups.whole_sandbox_caps():
        pytest.skip(f"no cgroup v1 to use here: {cgroups.limits_report()}")


def _run(mode: str, program: str, **limits) -> tuple[sb.SandboxResult, _Watch]:
    with _Watch() as watch:
        result = sb.run_python(textwrap.dedent(program), sb.SandboxLimits(**limits), isolation=mode)
    return result, watch


# ------------------------------------------------------------------------------------ unit


def test_cgroup_v1_roots_reads_the_hosts_mounts(tmp_path):
    memory, pids = tmp_path / "memory", tmp_path / "pids"
    memory.mkdir(), pids.mkdir()
    line = "35 31 0:32 / {} rw,relatime - cgroup cgroup rw,{}\n"
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(line.format(memory, "memory") + "1 2 0:1 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    assert cgroups.cgroup_v1_roots(str(mountinfo)) == "no cgroup v1 pids hierarchy mounted"
    mountinfo.write_text(line.format(memory, "memory") + line.format(pids, "pids"))
    assert cgroups.cgroup_v1_roots(str(mountinfo)) == {
        "memory": str(memory / cgroups.GROUP),
        "pids": str(pids / cgroups.GROUP),
    }
    assert (memory / cgroups.GROUP).is_dir() and (pids / cgroups.GROUP).is_dir()
    pids.chmod(0o500)
    try:
        (pids / cgroups.GROUP).rmdir()
        if os.geteuid() != 0:  # root writes anywhere
            assert "cannot make groups in" in cgroups.cgroup_v1_roots(str(mountinfo))
    finally:
        pids.chmod(0o700)


def test_require_memory_cap_refuses_a_host_that_caps_each_process_alone(monkeypatch):
    monkeypatch.setattr(sb, "whole_sandbox_caps", lambda: False)
    with pytest.raises(sb.WeakSandboxError, match="task.sandbox.require_memory_cap is true"):
        sb.require_isolation("rlimits", True, "task.sandbox", require_memory_cap=True)
    assert sb.require_isolation("rlimits", True, "task.sandbox") == sb.detect_isolation()  # not asked: judged
    monkeypatch.setattr(sb, "whole_sandbox_caps", lambda: True)
    assert sb.require_isolation("rlimits", True, "task.sandbox", require_memory_cap=True) == sb.detect_isolation()


def test_the_tmpfs_file_count_grows_with_its_size():
    assert sb._tmpfs_inodes(sb.SandboxLimits(disk_mb=64)) == 4096
    assert sb._tmpfs_inodes(sb.SandboxLimits(disk_mb=1)) == 1024


# ------------------------------------------------------------------------- real sandboxes

FORKS = """
    import os
    # 6 children of 300 MB each: within each process's address space (RLIMIT_AS 512 MB), not together
    children = []
    for _ in range(6):
        pid = os.fork()
        if pid == 0:
            block = bytearray(300 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            os._exit(0)
        children.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in children]
    print("children", codes)
    raise SystemExit(0 if all(c == 0 for c in codes) else 3)
"""


@pytest.mark.slow
@pytest.mark.serial  # reads the host's free memory
@pytest.mark.parametrize("mode", NAMESPACED)
def test_forked_processes_share_one_memory_cap(mode):
    _caps_here(mode)
    result, _ = _run(mode, FORKS.replace("for _ in range(6)", "for _ in range(1)"), memory_mb=512)
    assert result.passed, result  # one child of 300 MB fits
    result, watch = _run(mode, FORKS, memory_mb=512, processes=16, timeout_s=30)
    # one after another each would fit; at once they do not: the cap's OOM killer ended some
    assert not result.passed and "children" in result.stdout, result
    assert watch.taken()["available"] < 512 + 256, watch.taken()  # the host never lent it much more than its cap


SHM = """
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    IPC_PRIVATE, IPC_CREAT = 0, 0o1000
    for n in range(8):  # 8 segments of 256 MB, each filled: 2 GiB of shared memory, in no process's RSS
        sid = libc.shmget(IPC_PRIVATE, 256 << 20, IPC_CREAT | 0o600)
        if sid < 0:
            raise SystemExit("shmget: errno %d" % ctypes.get_errno())
        addr = libc.shmat(sid, None, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise SystemExit("shmat: errno %d" % ctypes.get_errno())
        ctypes.memset(addr, 1, 256 << 20)
        libc.shmdt(ctypes.c_void_p(addr))  # detached: the segment lives on, mapped by no process
        print("segment", n, flush=True)
"""


@pytest.mark.slow
@pytest.mark.serial  # reads the host's free memory and Shmem
@pytest.mark.parametrize("mode", NAMESPACED)
def test_sysv_shared_memory_counts_against_the_cap(mode):
    _caps_here(mode)
    result, watch = _run(mode, SHM, memory_mb=512, timeout_s=30)
    assert not result.passed and "segment 7" not in result.stdout, result
    taken = watch.taken()
    assert taken["shmem"] < 512 + 64 and taken["available"] < 512 + 256, taken
    # nothing outlives the sandbox's IPC namespace (its segments are freed just after it, by a kernel worker)
    deadline = time.monotonic() + 10
    while _meminfo()["Shmem"] - watch.before["Shmem"] >= 64 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _meminfo()["Shmem"] - watch.before["Shmem"] < 64


FILES = """
    import os
    n = 0
    try:
        while n < 200_000:  # empty files: no size, but an inode (kernel memory) each
            open("/tmp/f%d" % n, "w").close()
            n += 1
    except OSError as exc:
        print("stopped", n, exc.errno)
    else:
        print("made", n)
"""


@pytest.mark.slow
@pytest.mark.serial  # reads the host's slab
@pytest.mark.parametrize("mode", NAMESPACED)
def test_a_tmpfs_holds_a_bounded_number_of_files(mode):
    if mode not in working_modes():
        pytest.skip(f"{mode} does not work on this host")
    result, watch = _run(mode, FILES, disk_mb=64, timeout_s=60)
    assert result.passed and result.stdout.startswith("stopped"), result
    made = int(result.stdout.split()[1])
    assert made < sb._tmpfs_inodes(sb.SandboxLimits(disk_mb=64)), made  # ENOSPC at the file count
    assert watch.taken()["slab"] < 64, watch.taken()


@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.parametrize("mode", NAMESPACED)
def test_a_sandboxs_groups_are_gone_after_it(mode):
    _caps_here(mode)
    result = sb.run_python("print(open('/proc/self/cgroup').read())", isolation=mode)
    assert result.passed and result.stdout.count(cgroups.GROUP) == 2, result  # the program ran in both groups
    for root in cgroups.cgroup_v1_roots().values():
        own = os.path.join(root, cgroups.owner_tag())
        assert [e.name for e in os.scandir(own) if e.is_dir()] == []  # each removed after the run


# ------------------------------------------------------------------- a host without cgroups

ATTEMPTS = """
    import ctypes, os, resource
    libc = ctypes.CDLL(None, use_errno=True)
    space, processes = resource.getrlimit(resource.RLIMIT_AS)[0], resource.getrlimit(resource.RLIMIT_NPROC)[0]
    print("budget", space >> 20, processes)
    for call, args in (("shmget", (0, 1 << 20, 0o1600)), ("semget", (0, 1, 0o1600)), ("msgget", (0, 0o1600)),
                       ("memfd_create", (b"x", 0))):
        print(call, getattr(libc, call)(*args), ctypes.get_errno())
"""


@pytest.mark.slow
@pytest.mark.serial  # reads the host's free memory and Shmem
@pytest.mark.parametrize("mode", NAMESPACED)
def test_without_cgroups_processes_times_address_space_fit_the_cap(mode, monkeypatch):
    """Where no cgroup can be used: as few processes as keep processes x address space within ``memory_mb``,
    and no memory outside the address spaces (SysV IPC, memfd: refused)."""
    if mode not in working_modes():
        pytest.skip(f"{mode} does not work on this host")
    monkeypatch.setattr(cgroups, "_v1", lambda: "switched off by the test")
    assert not cgroups.whole_sandbox_caps() and "no SysV IPC or memfd" in cgroups.limits_report()
    result, _ = _run(mode, ATTEMPTS, memory_mb=512)
    assert result.passed, result
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    space, processes = map(int, lines["budget"].split())
    assert space * processes <= 512 and processes >= 1, lines
    for call in ("shmget", "semget", "msgget", "memfd_create"):
        assert lines[call] == "-1 1", (call, lines[call])  # EPERM
    result, watch = _run(mode, FORKS, memory_mb=512, processes=16, timeout_s=30)
    assert not result.passed, result  # 6 children of 300 MB: none has the address space, nor can 6 start
    assert watch.taken()["available"] < 512 + 128, watch.taken()
    result, watch = _run(mode, SHM, memory_mb=512, timeout_s=30)
    assert not result.passed and "shmget: errno 1" in result.stderr and watch.taken()["shmem"] < 16, result
