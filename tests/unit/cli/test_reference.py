"""docs/cli.md and docs/configuration.md are what ``python -m polyray.cli.reference`` generates from the code
now (``make docs`` rewrites them), they name every command and every field, and generating them reads
nothing of the machine and imports neither Ray, torch nor vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from polyray.cli import app
from polyray.cli.reference import main, pages
from polyray.config.eval_job import EvalJobConfig, EvalModelSpec
from polyray.config.learner import LearnerConfig, LoraConfig
from polyray.config.phases import GRPOPhaseConfig
from polyray.config.run import RunConfig
from polyray.config.sweep import Axis, SweepConfig

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("ray", "torch", "vllm", "transformers", "peft", "numpy", "scipy")


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return pages()


@pytest.mark.parametrize("name", ["cli.md", "configuration.md"])
def test_the_committed_page_is_current(generated, name):
    committed = (ROOT / "docs" / name).read_text() if (ROOT / "docs" / name).is_file() else ""
    assert committed == generated[name], f"docs/{name} is stale: run `make docs`"


def _command_paths(command, path: str) -> list[tuple[str, list[str]]]:
    """(command path, its option names) of ``command`` and every visible subcommand."""
    options = [o for p in command.params if p.param_type_name == "option" for o in p.opts + p.secondary_opts]
    out = [(path, options)]
    for name, sub in getattr(command, "commands", {}).items():
        if not sub.hidden:
            out += _command_paths(sub, f"{path} {name}")
    return out


def test_the_cli_reference_has_every_command_and_option(generated):
    text = generated["cli.md"]
    commands = _command_paths(typer.main.get_command(app), "polyray")
    assert {"polyray serve reward", "polyray serve generation", "polyray bench all", "polyray check"} <= {
        path for path, _ in commands
    }
    for path, options in commands:
        assert f"\n## {path}\n" in text, path
        section = text.split(f"\n## {path}\n", 1)[1].split("\n## ", 1)[0]
        missing = [o for o in options if f"`{o}" not in section]
        assert not missing, f"{path}: {missing}"


@pytest.mark.parametrize(
    "prefix, model",
    [
        ("", RunConfig),
        ("learner.", LearnerConfig),
        ("learner.lora.", LoraConfig),
        ("phases[].", GRPOPhaseConfig),
        ("", SweepConfig),
        ("space.<key>.", Axis),
        ("", EvalJobConfig),
        ("models[].", EvalModelSpec),
    ],
)
def test_the_configuration_reference_has_every_field(generated, prefix, model):
    missing = [name for name in model.model_fields if f"| `{prefix}{name}` |" not in generated["configuration.md"]]
    assert not missing, f"{model.__name__}: {missing}"


GENERATE = """
import json, os, sys
os.cpu_count = lambda: 977  # a default computed from the machine would show it
from polyray.cli.reference import pages
print(json.dumps({"pages": pages(), "heavy": sorted(m for m in sys.argv[1:] if m in sys.modules)}))
"""


def test_generating_reads_nothing_of_the_machine_and_imports_nothing_heavy(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT), "COLUMNS": "37"}
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, *HEAVY], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["heavy"] == []
    for name, text in out["pages"].items():
        assert text == (ROOT / "docs" / name).read_text(), f"docs/{name} differs on another machine"


def test_check_names_the_stale_page_and_writing_fixes_it(tmp_path, capsys):
    assert main(["--docs", str(tmp_path)]) == 0
    assert main(["--docs", str(tmp_path), "--check"]) == 0
    (tmp_path / "configuration.md").write_text("old\n")
    assert main(["--docs", str(tmp_path), "--check"]) == 1
    assert f"{tmp_path / 'configuration.md'} is stale" in capsys.readouterr().err
    assert main(["--docs", str(tmp_path)]) == 0 and main(["--docs", str(tmp_path), "--check"]) == 0
