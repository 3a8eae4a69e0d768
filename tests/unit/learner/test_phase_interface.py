"""The phase interface: every phase type is a config (:class:`~polyray.config.phases.PhaseSpec`) and a learner
class (:class:`~polyray.learner.phases.base.Phase`), and no code outside the two branches on a phase's type."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest


from polyray.config.phases import PhaseConfig, PhaseSpec
from polyray.io import ConfigError

REPO = Path(__file__).resolve().parents[3]
# the modules that once planned, checked and summarised a phase by its type string
TYPE_FREE = ("polyray/learner/memory.py", "polyray/cli/check.py", "polyray/drivers/preflight.py")
# where no call passes more than four arguments by position (neighbours of one type swap silently)
KEYWORD_CALLS = ("polyray/learner", "polyray/drivers/run.py")
MAX_POSITIONAL = 4


def _members() -> tuple[type, ...]:
    from typing import Annotated, Union, get_args, get_origin

    union = get_args(PhaseConfig)[0] if get_origin(PhaseConfig) is Annotated else PhaseConfig
    assert get_origin(union) is Union
    return get_args(union)


CONFIGS = _members()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_phase_config_answers_the_run_around_it(config):
    cfg = config()
    assert isinstance(cfg, PhaseSpec)
    shard, length = cfg.rank_sequences(3, references=100, sampled=200)
    assert shard >= 1 and length in (100, 200)
    assert cfg.kl_reference_kind() in ("none", "base", "phase_start")
    assert cfg.describe(2).startswith(f"{cfg.steps} steps, ")
    assert isinstance(config.trains_on_references, bool)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_phase_config_has_a_learner_class_implementing_the_interface(config):
    from polyray.learner.phases import PHASES, Phase, phase_class

    cfg = config()
    cls = phase_class(cfg)
    assert issubclass(cls, Phase) and cls.config_type is config and PHASES[cfg.type] is cls
    assert not inspect.isabstract(cls), f"{cls.__name__} leaves {sorted(cls.__abstractmethods__)} abstract"
    init = inspect.signature(cls.__init__).parameters
    assert [p for p in init if init[p].kind is inspect.Parameter.KEYWORD_ONLY] == ["task", "n_train", "ctx", "pool"]
    assert isinstance(cls.uses_rewards, bool) and isinstance(cls.publishes_every_step, bool)


def test_the_interface_halves_are_abstract():
    from polyray.learner.phases import Phase, SamplingPhase

    assert inspect.isabstract(PhaseSpec) and inspect.isabstract(Phase) and inspect.isabstract(SamplingPhase)


def test_a_second_class_for_one_phase_type_is_refused():
    from polyray.config import SFTPhaseConfig
    from polyray.learner.phases import Phase

    with pytest.raises(TypeError, match="phase type 'sft': both SFTPhase and Copy"):

        class Copy(Phase):
            config_type = SFTPhaseConfig


def test_the_kl_reference_adapter_follows_the_config():
    from polyray.config import GRPOPhaseConfig, SFTPhaseConfig
    from polyray.learner.phases import phase_class

    def reference(cfg, init):
        return phase_class(cfg).reference_adapter_dir(cfg, init)

    assert reference(GRPOPhaseConfig(kl_beta=0.04), "in") == "in"
    assert reference(GRPOPhaseConfig(kl_beta=0.04), None) is None  # a fresh LoRA starts at the base
    assert reference(GRPOPhaseConfig(kl_beta=0.04, kl_reference="base"), "in") is None
    assert reference(GRPOPhaseConfig(kl_beta=0.0), "in") is None
    assert reference(SFTPhaseConfig(), "in") is None


def _string_constants(tree: ast.AST) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def _is_phase_type(node: ast.expr) -> bool:
    """``phase.type``, ``phase_cfg.type``, ``p.type`` (the loops' name for a phase)."""
    if not (isinstance(node, ast.Attribute) and node.attr == "type"):
        return False
    owner = ast.unparse(node.value)
    return "phase" in owner or owner == "p"


def _type_compares(tree: ast.AST) -> list[int]:
    """Lines comparing a phase's ``.type`` (``phase.type == ...``, ``p.type in (...)``)."""
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Compare) and any(_is_phase_type(side) for side in [n.left, *n.comparators])
    ]


@pytest.mark.parametrize("path", TYPE_FREE)
def test_no_phase_type_is_named_outside_the_phases(path):
    types = {config.model_fields["type"].default for config in CONFIGS}
    tree = ast.parse((REPO / path).read_text())
    assert not (_string_constants(tree) & types), f"{path} names a phase type"
    assert not _type_compares(tree), f"{path} branches on a type at lines {_type_compares(tree)}"


def test_the_type_check_sees_a_branch_on_the_type():
    tree = ast.parse('if phase.type == "grpo":\n    pass\nkl = p.type in ("sft",)\nt = task.type == "x"\n')
    assert _type_compares(tree) == [1, 3] and "grpo" in _string_constants(tree)


def test_an_unknown_phase_type_fails_at_load_naming_the_field(tmp_path):
    from polyray.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("name: t\nphases:\n  - {type: sft, steps: 2}\n  - {type: best_of_n, steps: 3}\n")
    with pytest.raises(ConfigError, match=r"phases\.1: .*'best_of_n'.*'grpo'"):
        load_config(path)


def _wide_calls(path: Path, root: Path = REPO) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.relative_to(root)}:{n.lineno} {ast.unparse(n.func)}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and sum(not isinstance(a, ast.Starred) for a in n.args) > MAX_POSITIONAL
    ]


def test_calls_pass_at_most_four_arguments_by_position():
    files = [f for where in KEYWORD_CALLS for f in sorted((REPO / where).rglob("*.py")) or [REPO / where]]
    assert len(files) > 10
    assert [c for f in files for c in _wide_calls(f)] == []


def test_the_positional_count_sees_a_wide_call(tmp_path):
    (tmp_path / "x.py").write_text("f(a, b, c, d, e)\ng(a, b, c, d, *rest)\n")
    assert _wide_calls(tmp_path / "x.py", tmp_path) == ["x.py:1 f"]
