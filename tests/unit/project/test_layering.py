"""The layers point one way (docs/design.md "Layers"): a module imports only from its own layer or below.

An ``ast`` walk over ``polyray/``, ``jobs/`` and ``services/`` collects every import of the
project's own modules (top-level and inside functions alike) and fails on one that goes up.
Within a package, modules may import each other; across packages the rank must not rise.
The folders are the coarse floors: the library (``polyray/`` but ``drivers/`` and ``cli/``)
never imports ``polyray/drivers/``, ``polyray/cli/``, ``services/`` or ``jobs/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]

# Longest matching prefix wins. Bottom to top.
LAYERS: dict[str, int] = {
    "polyray.io": 0,
    "polyray.imports": 0,  # stdlib only: any process's heavy imports
    "polyray.config": 1,  # imports only polyray.io: every piece takes its settings from here
    "polyray.embeddings": 1,
    "polyray.storage": 1,
    "polyray.sandbox": 1,
    "polyray.lifetime": 1,
    "polyray.fingerprint": 1,
    "polyray.tasks": 2,
    "polyray.envs": 3,  # environments: text in, text out, over a task
    "polyray.diversity": 3,
    "polyray.models": 3,
    "polyray.objectives": 4,
    "polyray.rollout": 6,
    "polyray.reward": 6,
    "polyray.cluster": 6,
    "polyray.tracking": 6,
    "polyray.generation": 6,
    "polyray.http": 1,
    "polyray.judge": 1,
    "polyray.telemetry": 1,
    "polyray.learner": 7,
    "polyray.eval": 7,
    "polyray.drivers": 8,  # run, evaluate, bench
    "polyray.drivers.experiment": 9,
    "polyray.drivers.sweep": 9,
    "polyray.drivers.interpolate": 9,  # evaluation jobs and the selection protocol
    "polyray.cli": 10,
    "services": 11,
    "jobs": 11,
}


def layer_of(module: str) -> tuple[str, int] | None:
    if module == "polyray":  # the empty package marker
        return "polyray", -1
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    if not matches:
        return None
    prefix = max(matches, key=len)
    return prefix, LAYERS[prefix]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def own_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every polyray/jobs import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from polyray.drivers import run` imports the module polyray.drivers.run
            out += [(node.lineno, f"{mod}.{a.name}" if is_module(f"{mod}.{a.name}") else mod) for a in node.names]
    return [(line, m) for line, m in out if m.split(".")[0] in ("polyray", "jobs", "services")]


def upward_imports(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        me = layer_of(module_name(path))
        assert me is not None, f"{path}: no layer assigned; add its package to LAYERS"
        for line, target in own_imports(path):
            them = layer_of(target)
            assert them is not None, f"{path}:{line}: import of {target}, which has no layer"
            if them[0] != me[0] and them[1] > me[1]:
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {me[0]} (layer {me[1]}) imports {target} (layer {them[1]})"
                )
    return bad


def project_files() -> list[Path]:
    return sorted(p for d in ("polyray", "jobs", "services") for p in (ROOT / d).rglob("*.py"))


def test_no_module_imports_a_higher_layer():
    assert upward_imports(project_files()) == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """A tasks module importing the learner is reported with its file and line."""
    fake = ROOT / "polyray" / "tasks" / "_layering_probe.py"
    monkeypatch.setattr(
        Path, "read_text", _read_with_probe(fake, "import os\nfrom polyray.learner.loop import run_phase\n")
    )
    bad = upward_imports([fake])
    assert bad == ["polyray/tasks/_layering_probe.py:2: polyray.tasks (layer 2) imports polyray.learner.loop (layer 7)"]


# Folders above the library: what assembles it. Nothing in the library imports them.
DRIVER_FOLDERS = ("polyray.drivers", "polyray.cli", "services", "jobs")


def _in(module: str, folders: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in folders)


def driver_imports(files: list[Path]) -> list[str]:
    """file:line of every import of a driver folder from a library module."""
    return [
        f"{p.relative_to(ROOT)}:{line}: imports {m}"
        for p in files
        if not _in(module_name(p), DRIVER_FOLDERS)
        for line, m in own_imports(p)
        if _in(m, DRIVER_FOLDERS)
    ]


def test_the_library_never_imports_a_driver_folder():
    assert driver_imports(project_files()) == []


def test_the_folder_check_catches_a_library_module_importing_a_driver(monkeypatch):
    fake = ROOT / "polyray" / "eval" / "_layering_probe.py"
    monkeypatch.setattr(
        Path, "read_text", _read_with_probe(fake, "def f():\n    from polyray.drivers.run import run_pipeline\n")
    )
    assert driver_imports([fake]) == ["polyray/eval/_layering_probe.py:2: imports polyray.drivers.run"]


@pytest.mark.parametrize(
    "module", ["polyray.tasks.countdown", "polyray.drivers.evaluate.driver", "services.reward_app"]
)
def test_every_module_has_a_layer(module):
    assert layer_of(module) is not None


def _read_with_probe(fake: Path, text: str):
    original = Path.read_text

    def read_text(self, *args, **kwargs):
        return text if self == fake else original(self, *args, **kwargs)

    return read_text
