import subprocess
import sys
from pathlib import Path

import pytest

from polyray.config import GRPOPhaseConfig, RunConfig, load_config
from polyray.io import ConfigError, dump_config

ROOT = Path(__file__).resolve().parents[3]


def test_quickstart_config_loads_and_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert [p.type for p in cfg.phases] == ["sft", "grpo"]
    (tmp_path / "resolved.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_overrides_apply_with_types():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["learner.lora.r=4", "phases.1.kl_beta=0", "name=x"])
    assert cfg.learner.lora.r == 4 and cfg.name == "x"
    assert isinstance(cfg.phases[1], GRPOPhaseConfig) and cfg.phases[1].kl_beta == 0


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["learner.lr=1"], "learner.lr: Extra inputs are not permitted"),
        (["phases.0.steps=0"], "phases.0.steps: Input should be greater than or equal to 1"),
        (["phases.1.group_size=abc"], "phases.1.group_size: Input should be a valid integer"),
        (["task.type=poetry"], "task: Input tag 'poetry'"),
        (["eval.ks=[1,50]"], "n_samples (10) must be >= max(ks) (50)"),
        (["learner.lora.r=64"], "exceeds rollout.max_lora_rank"),
        (
            ["rollout.logprobs_mode=raw_logprobs", "phases.1.sampling.temperature=0.7"],
            "phases.1.sampling.temperature is 0.7: its learner needs the sampling distribution's",
        ),
        (
            ["learner.lora.dropout=0.1"],
            "learner.lora.dropout (0.1) must be 0 with a phase that trains on its own samples (phases.1 is grpo)",
        ),
        (["rollout.max_lora_rank=12"], "rollout.max_lora_rank: Input should be 1, 8, 16, 32, 64, 128, 256, 320 or 512"),
        (["learnerlr"], "expected KEY=VALUE"),
        (["phases.7.steps=1"], "not a valid list index"),
    ],
)
def test_bad_values_name_the_field(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs" / "quickstart.yaml", overrides)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_defaults_are_valid():
    RunConfig()


def _cli(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "polyray.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "learner.bogus=1"], "learner.bogus: Extra inputs are not permitted"),
        (["--set", "task.type=nope"], "task: Input tag 'nope'"),
        (["--set", "model.source=/nonexistent/model"], "model directory not found: /nonexistent/model"),
    ],
)
def test_cli_errors_are_one_clear_line(args, needle, tmp_path):
    proc = _cli("run", "configs/quickstart.yaml", "--output-dir", str(tmp_path / "out"), *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


QUICKSTART = ROOT / "configs" / "quickstart.yaml"


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["phases.1.advantage={type: polychromic, k: 1}"], "phases.1.advantage.k"),
        (
            ["phases.1.group_size=16", "phases.1.advantage={type: polychromic, k: 8}"],
            "12870 subsets exceeds max_subsets (5000)",
        ),
        (
            [
                "phases.0.type=polychromic_sft",
                "phases.0.n_samples=16",
                "phases.0.estimator=subset",
                "phases.0.subset_k=8",
            ],
            "12870 subsets exceeds 5000",
        ),
        (["phases.0.batch_size=1"], "phases.0.batch_size (1) must be >= learner.num_workers (2)"),
        (
            ["phases.0.learner_workers=4", "phases.0.batch_size=3"],
            "phases.0.batch_size (3) must be >= learner_workers (4)",
        ),
        (["phases.1.learner_workers=0"], "phases.1.learner_workers"),
        (["dynamics.ks=[0, 2]"], "dynamics: ks must be positive integers"),
        (["dynamics.ks=[-1]"], "dynamics: ks must be positive integers"),
        (["phases.1.sampling.temperature=0"], "phases.1: sampling.temperature must be > 0"),
        (["phases.1.sampling.top_p=0.9"], "phases.1: sampling.top_p must be 1 in a training phase"),
        (["phases.1.kl_reference=start"], "phases.1.kl_reference"),
        (["rollout.gpus_per_worker=0.5"], "rollout: gpu_memory_utilization 0.92 of each GPU for gpus_per_worker 0.5"),
        (
            ["rollout.gpus_per_worker=0.5", "rollout.gpu_memory_utilization=0.5"],
            "set gpu_memory_utilization to at most 0.46",
        ),
        (["rollout.gpus_per_worker=1.5"], "rollout: gpus_per_worker 1.5: above 1, a whole number of GPUs"),
    ],
)
def test_configs_that_used_to_crash_late_fail_at_load(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, overrides)
    assert needle in str(info.value), str(info.value)
    assert str(info.value).startswith(str(QUICKSTART))


@pytest.mark.parametrize(
    "content, needle",
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("0\n", "top level must be a mapping of fields, got int 0"),
        ("false\n", "top level must be a mapping of fields, got bool False"),
    ],
)
def test_empty_or_scalar_yaml_names_the_file(tmp_path, content, needle):
    path = tmp_path / "run.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=f"^{path}: {needle}"):
        load_config(path)


def test_set_without_equals_suggests_a_real_field():
    with pytest.raises(ConfigError, match=r"e\.g\. phases\.0\.lr=1e-4"):
        load_config(QUICKSTART, ["phases.0.lr"])
    assert load_config(QUICKSTART, ["phases.0.lr=1e-4"]).phases[0].lr == 1e-4


def test_kl_reference_defaults_to_the_phase_start():
    assert load_config(QUICKSTART).phases[1].kl_reference == "phase_start"


def test_tensor_parallel_workers_get_their_gpus():
    from pydantic import ValidationError

    from polyray.config import RolloutConfig

    assert RolloutConfig(tensor_parallel_size=2, gpus_per_worker=2).tensor_parallel_size == 2
    for gpus in (0, 1, 4):
        with pytest.raises(ValidationError, match="set gpus_per_worker to 2"):
            RolloutConfig(tensor_parallel_size=2, gpus_per_worker=gpus)


HEAVY = ("torch", "vllm", "ray", "transformers", "polyray.sandbox")


def test_importing_the_config_loads_nothing_heavy():
    """polyray.config sits below every piece: in a fresh interpreter it loads no torch, vLLM, Ray,
    transformers or sandbox, so a config loads (and a bad one fails) at once."""
    code = (
        "import sys, polyray.config\n"
        "from polyray.config import load_config\n"
        f"load_config({str(ROOT / 'configs' / 'quickstart.yaml')!r})\n"
        f"print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_the_config_package_imports_only_io():
    """Its own modules and polyray.io: nothing of the pieces it configures (they import it)."""
    import ast

    for path in sorted((ROOT / "polyray" / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polyray"):
                assert node.module == "polyray.io" or node.module.startswith("polyray.config"), (path.name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("polyray") for a in node.names), (path.name, node.lineno)


@pytest.mark.parametrize("loader", ["run", "eval", "sweep", "experiment"])
def test_every_config_file_is_read_by_the_one_yaml_reader(tmp_path, loader):
    """Runs, evaluation jobs, sweeps and experiments fail alike on a file that is not YAML or missing."""
    from polyray.config.eval_job import load_eval_config
    from polyray.drivers.experiment import load_experiment
    from polyray.drivers.sweep import load_sweep

    load = {
        "run": load_config,
        "eval": load_eval_config,
        "sweep": load_sweep,
        "experiment": lambda p: load_experiment(p, seeds=1),
    }[loader]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=f"^{bad}: invalid YAML"):
        load(bad)
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'missing.yaml'}: .* not found"):
        load(tmp_path / "missing.yaml")


def test_lora_rank_sizes_are_vllms():
    """rollout.max_lora_rank (and the generation service's) accepts exactly the sizes vLLM reserves for:
    any other value would stop the engine at pool launch, after the run started."""
    import typing

    from vllm.config.lora import MaxLoRARanks

    from polyray.config.rollout import MaxLoraRank

    assert typing.get_args(MaxLoraRank) == typing.get_args(MaxLoRARanks)


def test_raw_logprobs_are_fine_at_temperature_one():
    """At T = 1 the raw and the processed log-probs are one distribution: nothing to refuse."""
    run = load_config(ROOT / "configs" / "quickstart.yaml", ["rollout.logprobs_mode=raw_logprobs"])
    assert all(p.sampling.temperature == 1 for p in run.phases if hasattr(p, "sampling"))


def test_lora_dropout_is_fine_for_sft_alone():
    run = load_config(ROOT / "configs" / "quickstart.yaml", ["learner.lora.dropout=0.1", "phases=[{type: sft}]"])
    assert run.learner.lora.dropout == 0.1


def test_a_config_extends_another_field_by_field(tmp_path):
    """``extends:`` starts from another file (relative to this one): mappings merge, values and lists
    replace; a missing file or a cycle is one error naming the file."""
    from polyray.config import load_config
    from polyray.io import ConfigError

    (tmp_path / "base.yaml").write_text(
        "name: base\nlearner: {threads: 3, lora: {r: 8, alpha: 16}}\neval: {ks: [1, 4]}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\nname: child\nlearner: {lora: {r: 4}}\neval: {ks: [1]}\n"
    )
    run = load_config(tmp_path / "sub" / "child.yaml", ["learner.threads=2"])
    assert run.name == "child" and run.learner.threads == 2  # an override over both
    assert load_config(tmp_path / "sub" / "child.yaml").learner.threads == 3  # the base's
    assert (run.learner.lora.r, run.learner.lora.alpha) == (4, 16) and run.eval.ks == [1]
    shipped = load_config(ROOT / "configs/gpu/qwen3_0.6b_24gb.yaml")
    base = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml")
    assert shipped.learner.gradient_checkpointing and not base.learner.gradient_checkpointing
    assert shipped.model_copy(update={"name": base.name, "learner": base.learner}) == base

    (tmp_path / "gone.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml: extends: nowhere.yaml not found"):
        load_config(tmp_path / "gone.yaml")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"b.yaml: extends: a.yaml extends this file again \(a cycle\)"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("kind", ["grpo", "dpo"])
def test_every_rollout_phase_holds_the_shared_rollout_rules(kind):
    # the rules written once in RolloutPhaseSpec, held by each type that samples per step
    def load(**phase):
        return RunConfig(phases=[{"type": kind, **phase}], rollout={"store_keep": 2})

    assert load(async_rollouts=True, max_lag=1).phases[0].max_lag == 1
    with pytest.raises(ValueError, match="async_rollouts samples one adapter version behind"):
        load(async_rollouts=True)
    with pytest.raises(ValueError, match=r"max_lag \(2\) must be < rollout.store_keep \(2\)"):
        load(async_rollouts=True, max_lag=2)
    with pytest.raises(ValueError, match="warmup_steps"):
        load(steps=10, lr_schedule="cosine", warmup_steps=11)
