"""The sandbox's launcher: started by :func:`polyray.sandbox.run_python` as ``python -I -S -B <this file>``.

A fresh interpreter (no ``preexec_fn`` runs inside a multi-threaded Ray replica), standard library
only, as the service's user. It reads its settings (JSON, built by ``prepare._launch_config``) from stdin, so no
host path or setting is on any command line; joins the sandbox's cgroups; unshares the namespaces of
its mode; forks the sandbox's init (PID 1 of the new PID namespace), which builds the private root,
starts the program and reports its fate as JSON on ``status_fd``. Every failure before the program
starts is reported as ``{"error": ...}``.
"""

import ctypes
import json
import os
import resource
import sys

NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_SECCOMP = 38, 24, 1, 36, 22
SIGKILL, SIGSTOP = 9, 19
# read_config
cfg: dict = {}
MODE = ""
libc = ctypes.CDLL(None, use_errno=True)


def report(**kw):
    os.write(cfg["status_fd"], json.dumps(kw).encode())


def check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ": " + os.strerror(err))


def mount(src, target, fstype, flags, data=None):
    def enc(s):
        return s.encode() if s is not None else None

    check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), "mount " + target)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def unshare():
    if MODE == "uid+namespaces":
        check(libc.unshare(NEWNS | NEWNET | NEWPID | NEWIPC | NEWUTS), "unshare")
    elif MODE == "userns":
        uid, gid = os.getuid(), os.getgid()
        check(libc.unshare(NEWUSER | NEWNS | NEWNET | NEWPID | NEWIPC | NEWUTS), "unshare")
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", f"0 {uid} 1")
        write("/proc/self/gid_map", f"0 {gid} 1")


def build_root(newroot, strict):
    # A fresh tmpfs root holding only what a Python program needs; pivot_root into it
    # and detach the old root, so no path (and no chroot escape) leads back.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", newroot, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,nr_inodes=1024,mode=0755")
    for src in cfg["ro_binds"]:
        dst = newroot + src
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        # merged-/usr links such as /bin -> usr/bin, /etc/localtime
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
            continue
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        # a single /etc file: bound over an empty one
        else:
            open(dst, "w").close()
        mount(src, dst, None, MS_BIND | MS_REC)
        try:
            mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        except OSError:
            # an unprivileged user namespace may refuse to change locked flags
            if strict:
                raise
    os.makedirs(newroot + "/dev")
    for name in ("null", "zero", "full", "random", "urandom"):
        open(newroot + "/dev/" + name, "w").close()
        mount("/dev/" + name, newroot + "/dev/" + name, None, MS_BIND)
    for name, fd in (("fd", ""), ("stdin", "/0"), ("stdout", "/1"), ("stderr", "/2")):
        os.symlink("/proc/self/fd" + fd, newroot + "/dev/" + name)
    for name in ("proc", "tmp", "sandbox"):
        os.makedirs(newroot + "/" + name)
    # this process is PID 1 of the new PID namespace, so this /proc shows only the sandbox
    try:
        mount("proc", newroot + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        # some container runtimes forbid a new proc in a user namespace
        if strict:
            raise
    # nr_inodes: empty files cost no size= but each holds kernel memory
    tmpfs = f"size={cfg['tmp_mb']}m,nr_inodes={cfg['tmp_inodes']}"
    mount("tmpfs", newroot + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs + ",mode=1777")
    # /sandbox is a size-capped tmpfs holding copies of the program's files, not the host
    # directory: what the program writes never reaches the host's disk, and cleanup on the
    # host never meets a file (or symlink) the program made.
    owner = f",uid={cfg['uid']},gid={cfg['gid']}" if cfg["uid"] is not None else ""
    mount("tmpfs", newroot + "/sandbox", "tmpfs", MS_NOSUID | MS_NODEV, tmpfs + ",mode=0700" + owner)
    for name in os.listdir(cfg["workdir"]):
        with open(os.path.join(cfg["workdir"], name), "rb") as src, open(newroot + "/sandbox/" + name, "wb") as dst:
            dst.write(src.read())
    os.chdir(newroot)
    # old root now stacked under "."
    check(libc.syscall(cfg["pivot_root_syscall"], b".", b"."), "pivot_root")
    # MNT_DETACH
    check(libc.umount2(b".", 2), "detach old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def drop_all_capabilities():
    # userns mode: the program is root of its user namespace; without capabilities it
    # cannot unmount or remount anything in the sandbox's root.
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
    # _LINUX_CAPABILITY_VERSION_3, this thread
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "capset")


def drop_privileges():
    if MODE == "uid+namespaces":
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    elif MODE == "userns":
        drop_all_capabilities()
    # setuid binaries gain nothing
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def place_channels():
    # The program's extra pipes (a call channel) land on fds 3, 4, ...; everything else closes.
    import fcntl

    high = {int(target): fcntl.fcntl(src, fcntl.F_DUPFD, 1000) for target, src in cfg["channel_fds"].items()}
    # via fds >= 1000, so no target overwrites another's source
    for target, src in high.items():
        os.dup2(src, target)
    os.closerange(3 + len(high), 65536)


def close_channels():
    # Only the program keeps its channel ends, so the peer sees end-of-file when it exits.
    for src in cfg["channel_fds"].values():
        try:
            os.close(src)
        except OSError:
            pass


def die_with_parent():
    # SIGKILL when the parent dies: a killed service takes its sandboxes along (set after
    # setuid, which clears it; cleared again in each child the program forks).
    check(libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0), "pdeathsig")


def install_seccomp():
    # the deny list of polyray/sandbox/seccomp.py; needs no_new_privs, cannot be undone
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = bytes.fromhex(cfg["seccomp"])
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    # SECCOMP_MODE_FILTER
    check(libc.prctl(PR_SET_SECCOMP, 2, ctypes.byref(fprog), 0, 0), "seccomp")


def run_program():
    os.chdir(cfg["cwd"])
    drop_privileges()
    die_with_parent()
    # before RLIMIT_NOFILE, which would refuse the high fds it moves through
    place_channels()
    for name, value in cfg["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    install_seccomp()
    os.execve(cfg["python"], cfg["argv"], cfg["env"])


def descendants():
    # PIDs below this process (a subreaper, so orphans stay below it), from /proc
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def kill_descendants():
    # Freeze first (a stopped process cannot fork), until no new one appears; then kill all.
    stopped = set()
    for _ in range(1000):
        new = descendants() - stopped
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, SIGSTOP)
            except OSError:
                pass
        stopped |= new
    for pid in stopped:
        try:
            os.kill(pid, SIGKILL)
        except OSError:
            pass


def reap_all():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def cap_pids():
    # userns mode: RLIMIT_NPROC does not bind a root service (the program is uid 0 on the host),
    # so the PID namespace's own pid_max (Linux >= 6.14) bounds its tasks. Root of this user
    # namespace has no capability outside it, so on an older kernel, where pid_max is the
    # host's, the write is refused (EPERM) and changes nothing: best effort there.
    try:
        write("/proc/sys/kernel/pid_max", str(cfg["pid_max"]))
    except OSError:
        pass


def hide_command_line():
    # /proc/1/cmdline in the sandbox is this process's argv (the interpreter and this file's host
    # path), read from its own memory: blanked in place (sys.argv is a copy)
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # arg_start, arg_end: fields 48 and 49
    start, end = int(fields[45]), int(fields[46])
    if 0 < start < end:
        ctypes.memset(start, 0, end - start)
        name = b"sandbox-init"[: end - start - 1]
        ctypes.memmove(start, name, len(name))


def init():
    # PID 1 of the sandbox's PID namespace (a plain child in rlimits mode): build the
    # root, start the program, reap, report the program's fate, exit (killing the rest).
    die_with_parent()
    if MODE != "rlimits":
        hide_command_line()
        build_root(cfg["newroot"], strict=MODE == "uid+namespaces")
        if MODE == "userns":
            cap_pids()
    # no PID namespace: orphans (a double fork, setsid) are re-parented here, not to the host's init
    else:
        check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
    pid = os.fork()
    if pid == 0:
        try:
            run_program()
        except BaseException as exc:  # noqa: BLE001 - reported, whatever it was
            report(error=f"could not start the program: {exc!r}")
        os._exit(127)
    close_channels()
    while True:
        got, status = os.waitpid(-1, 0)
        if got == pid:
            break
    # in a PID namespace, this process exiting kills the rest
    if MODE == "rlimits":
        kill_descendants()
        reap_all()
    report(**({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}))


def join_cgroups():
    # the sandbox's own memory and pids groups (cgroup v1), before anything else starts: every
    # process of the sandbox is in them, its memory and tasks capped as a whole
    for path in cfg["cgroup_procs"]:
        write(path, str(os.getpid()))


def read_config():
    # from stdin, then stdin is /dev/null again: the program inherits fd 0
    global cfg, MODE
    cfg = json.loads(sys.stdin.buffer.read())
    MODE = cfg["mode"]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def main():
    os.umask(0o022)
    try:
        read_config()
        die_with_parent()
        # the service died before die_with_parent() took hold
        if os.getppid() != cfg["parent_pid"]:
            os._exit(125)
        join_cgroups()
        check(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "subreaper")
        unshare()
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001 - reported, whatever it was
        report(error=f"sandbox setup failed ({MODE}): {exc!r}")
        sys.exit(125)
    if pid != 0:
        close_channels()
    if pid == 0:
        try:
            init()
        except BaseException as exc:  # noqa: BLE001 - reported, whatever it was
            report(error=f"sandbox setup failed ({MODE}): {exc!r}")
        os._exit(0)
    # init, and whatever was orphaned here when init died
    reap_all()


if __name__ == "__main__":
    main()
