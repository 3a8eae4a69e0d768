"""The seccomp filter a sandboxed program runs under: a short classic-BPF deny list, built here.

The launcher installs it (``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``, after
``no_new_privs``) in the program's process just before ``execve``, in every isolation mode; it
is inherited by everything the program starts and cannot be removed. It denies, with
``EPERM``, what a Python test never needs and an escape usually does:

- sockets of any family but ``AF_UNIX`` (a network namespace is the first guard; in ``rlimits``
  mode this is the only one);
- ``ptrace``, ``process_vm_readv/writev``, ``pidfd_getfd`` (reading or steering another process);
- ``mount`` and the new mount API, ``umount2``, ``pivot_root``, ``chroot``, ``open_by_handle_at``;
- ``unshare``, ``setns`` and ``clone`` with any ``CLONE_NEW*`` flag (no nested user namespaces,
  whose root could remount what the sandbox locked); ``clone3`` answers ``ENOSYS``, because its
  flags sit in memory a filter cannot read, and libc then falls back to ``clone``;
- ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*`` (kernel attack surface),
  ``keyctl``, ``add_key``, ``request_key``, module loading, ``kexec``, ``reboot``, swap, ``acct``;
- with ``forks=False`` (``rlimits`` mode, which has no PID namespace to take a program's
  processes along when the service dies): every new process, i.e. ``fork``, ``vfork`` and
  ``clone`` without ``CLONE_THREAD``. Threads still start.
- with ``shared_memory=False`` (where no cgroup caps the whole sandbox, and in ``rlimits`` mode, which
  shares the host's IPC namespace): SysV shared memory, semaphores and message queues, POSIX message
  queues, and ``memfd_create``: memory in no process's address space, which no rlimit bounds. (POSIX shared
  memory needs ``/dev/shm``, which the sandbox's root does not have.)

It fails closed: a system call of another ABI (i386 or x32 on x86_64) kills the process, and
on an architecture without a table here (not x86_64 or aarch64) the sandbox refuses to run.
No dependency: libseccomp's Python binding is not on PyPI, and the filter is ~40 instructions.
The system-call numbers are checked against libseccomp's own table in the tests.
"""

from __future__ import annotations

import struct

# linux/audit.h AUDIT_ARCH_*: the arch field of seccomp_data
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_by_handle_at",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
)

# asm/unistd_64.h (x86_64) and asm-generic/unistd.h (aarch64)
SYSCALLS = {
    "x86_64": {
        "socket": 41,
        "clone": 56,
        "clone3": 435,
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "pidfd_getfd": 438,
        "mount": 165,
        "umount2": 166,
        "pivot_root": 155,
        "chroot": 161,
        "open_by_handle_at": 304,
        "open_tree": 428,
        "move_mount": 429,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "mount_setattr": 442,
        "unshare": 272,
        "setns": 308,
        "bpf": 321,
        "perf_event_open": 298,
        "userfaultfd": 323,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "keyctl": 250,
        "add_key": 248,
        "request_key": 249,
        "init_module": 175,
        "finit_module": 313,
        "delete_module": 176,
        "kexec_load": 246,
        "kexec_file_load": 320,
        "reboot": 169,
        "swapon": 167,
        "swapoff": 168,
        "acct": 163,
        "fork": 57,
        "vfork": 58,
        "shmget": 29,
        "shmat": 30,
        "semget": 64,
        "msgget": 68,
        "memfd_create": 319,
        "mq_open": 240,
    },
    "aarch64": {
        "socket": 198,
        "clone": 220,
        "clone3": 435,
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "pidfd_getfd": 438,
        "mount": 40,
        "umount2": 39,
        "pivot_root": 41,
        "chroot": 51,
        "open_by_handle_at": 265,
        "open_tree": 428,
        "move_mount": 429,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "mount_setattr": 442,
        "unshare": 97,
        "setns": 268,
        "bpf": 280,
        "perf_event_open": 241,
        "userfaultfd": 282,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "keyctl": 219,
        "add_key": 217,
        "request_key": 218,
        "init_module": 105,
        "finit_module": 273,
        "delete_module": 106,
        "kexec_load": 104,
        "kexec_file_load": 294,
        "reboot": 142,
        "swapon": 224,
        "swapoff": 225,
        "acct": 89,
        "shmget": 194,
        "shmat": 196,
        "semget": 190,
        "msgget": 186,
        "memfd_create": 279,
        "mq_open": 180,
    },
}

# what a new process is made with besides clone (aarch64 has neither: libc forks through clone)
FORKS = ("fork", "vfork")
# memory in no process's address space: SysV IPC objects and memfd files (refused where no cgroup caps it)
SHARED_MEMORY = ("shmget", "shmat", "semget", "msgget", "memfd_create", "mq_open")
AF_UNIX = 1
CLONE_THREAD = 0x00010000
# NEWTIME | NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NEW_FLAGS = 0x7E020080
X32_SYSCALL_BIT = 0x40000000
EPERM, ENOSYS = 1, 38

# linux/filter.h and linux/seccomp.h
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_KILL_PROCESS, _ERRNO, _ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
# offsets in struct seccomp_data (arg0's low 32 bits: little-endian)
_NR, _ARCH, _ARG0 = 0, 4, 16


def build_filter(machine: str, forks: bool = True, shared_memory: bool = True) -> bytes:
    """The filter for ``machine`` (``platform.machine()``) as ``struct sock_filter[]`` bytes;
    ``ValueError`` where there is no table (the sandbox then refuses to run). ``forks=False``
    also denies every new process (threads excepted); ``shared_memory=False`` SysV IPC and memfd."""
    if machine not in SYSCALLS:
        raise ValueError(f"no seccomp filter for the {machine} architecture (x86_64 and aarch64 only)")
    nr = SYSCALLS[machine]
    # (code, jump if true, jump if false, k)
    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ, 1, 0, AUDIT_ARCH[machine]),
        # another ABI: its numbers mean other calls
        (_RET, 0, 0, _KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _NR),
    ]
    if machine == "x86_64":
        prog += [(_JGE, 0, 1, X32_SYSCALL_BIT), (_RET, 0, 0, _KILL_PROCESS)]
    denied = DENIED + (() if forks else tuple(f for f in FORKS if f in nr)) + (() if shared_memory else SHARED_MEMORY)
    for name in denied:
        prog += [(_JEQ, 0, 1, nr[name]), (_RET, 0, 0, _ERRNO | EPERM)]
    prog += [(_JEQ, 0, 1, nr["clone3"]), (_RET, 0, 0, _ERRNO | ENOSYS)]
    # socket(family, ...): AF_UNIX only
    prog += [
        (_JEQ, 0, 4, nr["socket"]),
        (_LD_W_ABS, 0, 0, _ARG0),
        (_JEQ, 1, 0, AF_UNIX),
        (_RET, 0, 0, _ERRNO | EPERM),
        (_RET, 0, 0, _ALLOW),
    ]
    if forks:
        # clone(flags, ...): threads and forks, never new namespaces
        prog += [
            (_JEQ, 0, 4, nr["clone"]),
            (_LD_W_ABS, 0, 0, _ARG0),
            (_JSET, 0, 1, CLONE_NEW_FLAGS),
            (_RET, 0, 0, _ERRNO | EPERM),
            (_RET, 0, 0, _ALLOW),
        ]
    else:
        # clone(flags, ...): threads only
        prog += [
            (_JEQ, 0, 5, nr["clone"]),
            (_LD_W_ABS, 0, 0, _ARG0),
            (_JSET, 1, 0, CLONE_NEW_FLAGS),
            (_JSET, 1, 0, CLONE_THREAD),
            (_RET, 0, 0, _ERRNO | EPERM),
            (_RET, 0, 0, _ALLOW),
        ]
    prog.append((_RET, 0, 0, _ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)
