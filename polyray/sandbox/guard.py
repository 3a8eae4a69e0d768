"""The audit hook a program runs under in ``rlimits`` mode: ``python -I -S -B <this file> program.py``.

Without namespaces this hook is the only thing between the program and the service's files and
sockets, so it refuses what a test never needs: sockets, signals, new processes, ``ctypes``, reads
outside the program's directory and the interpreter's prefix, writes outside the program's directory.
CPython's audit hooks are not a security boundary; this mode contains accidents, not an adversary.
Standard library only; importing it installs nothing (the tests read its rules).
"""

import os
import sys

# the program's directory: its cwd
_WORKDIR = os.path.realpath(os.getcwd())
_READ_OK = tuple(os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix))
_READ_OK += ("/dev/null", "/dev/urandom")
_BLOCKED = (
    "socket.",
    "os.kill",
    "os.killpg",
    "signal.pthread_kill",
    "os.fork",
    "os.forkpty",
    "os.posix_spawn",
    "os.exec",
    "os.system",
    "os.spawn",
    "subprocess.",
    "ctypes.",
    "os.setuid",
    "os.setgid",
    "pty.",
)
_WRITE_EVENTS = (
    "os.remove",
    "os.rmdir",
    "os.rename",
    "os.chmod",
    "os.chown",
    "os.mkdir",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.utime",
    "shutil.rmtree",
    "shutil.move",
    "shutil.copyfile",
    "os.chflags",
)
# the import system lists the stdlib's directories
_READ_EVENTS = ("os.listdir", "os.scandir")


def _inside(path, roots):
    try:
        path = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _opens_for_writing(mode, flags):
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    # O_WRONLY or O_RDWR
    return bool(flags & 3)


def _hook(event, args):
    if event.startswith(_BLOCKED) or event == "import" and args[0] in ("ctypes", "_ctypes"):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    if event == "open":
        roots = (_WORKDIR,) if _opens_for_writing(args[1], args[2]) else (_WORKDIR,) + _READ_OK
    elif event in _WRITE_EVENTS:
        roots = (_WORKDIR,)
    elif event in _READ_EVENTS:
        roots = (_WORKDIR,) + _READ_OK
    else:
        return
    if not _inside(args[0], roots):
        raise PermissionError(f"sandbox: {event}({args[0]!r}) is outside the sandbox")


def main():
    sys.addaudithook(_hook)
    path = sys.argv[1]
    # the program sees itself as argv[0]
    del sys.argv[0]
    with open(path) as f:
        code = compile(f.read(), path, "exec")
    exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__})  # noqa: S102 - the program


if __name__ == "__main__":
    main()
