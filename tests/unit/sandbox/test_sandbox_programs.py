"""The sandbox's two programs (the launcher and rlimits mode's audit hook) as the modules they are.

Both run in a fresh interpreter as ``python -I -S -B <file>``: no site-packages, so standard library only.
The hook's rules are read here directly; what they hold against real programs is ``test_sandbox.py``'s.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyray import sandbox as sb
from polyray.sandbox import guard


@pytest.mark.parametrize("path", [sb._LAUNCHER, sb._GUARD], ids=["launcher", "guard"])
def test_each_program_imports_the_standard_library_only(path):
    tree = ast.parse(Path(path).read_text(), path)
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported and imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_importing_either_program_runs_nothing(tmp_path):
    """main() runs only as a script: importing them sets no umask and no audit hook (a file outside the
    working directory still opens), and reads no stdin."""
    outside = tmp_path / "outside.txt"
    outside.write_text("readable")
    (tmp_path / "cwd").mkdir()
    code = (
        "import os, sys; os.umask(0o077)\n"
        "import polyray.sandbox.launcher as launcher, polyray.sandbox.guard\n"
        f"print(oct(os.umask(0)), launcher.cfg, open({str(outside)!r}).read())"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "cwd", input="{}", capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0o77", "{}", "readable"]


def test_the_hook_refuses_what_a_test_never_needs(tmp_path, monkeypatch):
    monkeypatch.setattr(guard, "_WORKDIR", str(tmp_path))
    inside, outside = str(tmp_path / "x.txt"), "/etc/hostname"
    guard._hook("open", (inside, "w", 0))  # its own directory: read and write
    guard._hook("open", (os.path.join(sys.base_prefix, "lib"), "r", 0))  # the interpreter's prefix: read
    for event, args in [
        ("open", (outside, "r", 0)),
        ("open", (os.path.join(sys.base_prefix, "x"), "w", 0)),
        ("open", (outside, None, os.O_RDWR)),
        ("os.remove", (outside,)),
        ("os.listdir", ("/",)),
        ("socket.connect", (None, ("127.0.0.1", 9))),
        ("os.kill", (1, 9)),
        ("subprocess.Popen", ("sh",)),
        ("os.system", (b"true",)),
        ("import", ("ctypes", None, None, None, None)),
    ]:
        with pytest.raises(PermissionError, match="sandbox: "):
            guard._hook(event, args)
    guard._hook("open", (3, "r", 0))  # an fd it already holds
    assert not guard._inside(str(tmp_path) + "-other/x", (str(tmp_path),))  # a sibling with the same prefix
