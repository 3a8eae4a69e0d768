"""``polyray export``: a run's adapter, alone or merged into the base, loads without polyray and is the same model.

The run directory is laid out as ``polyray run`` leaves it (``config.resolved.yaml``, ``results.json``
naming the base, ``adapters/<phase>/``), with LoRA adapters on the embedded model whose B matrices
are random and non-zero (a freshly initialised LoRA is the identity, which would hide a merge that
drops the adapter).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support.export_harness import PROMPTS, greedy_and_logprobs, make_run
from typer.testing import CliRunner

from polyray.cli import app
from polyray.models.export import ExportError, export_run, push_to_hub

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, run_config, model_dir):
    return make_run(tmp_path_factory.mktemp("export"), run_config, model_dir)


def test_merged_export_is_the_adapter_on_the_base(run_dir, model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_run(run_dir, tmp_path / "merged", merge=True)
    assert not list(out.glob("adapter_*")) and (out / "model.safetensors").is_file()
    assert (out / "generation_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    reference = PeftModel.from_pretrained(base, run_dir / "adapters" / "grpo").eval()  # the last phase by default

    got_tokens, got_lp = greedy_and_logprobs(merged, tokenizer, PROMPTS)
    want_tokens, want_lp = greedy_and_logprobs(reference, tokenizer, PROMPTS)
    assert got_tokens == want_tokens
    for got, want in zip(got_lp, want_lp):
        assert torch.allclose(got, want, atol=1e-3), (got - want).abs().max()
    # the adapter changed the model: a merge that dropped it would not pass the checks above
    plain_tokens, plain_lp = greedy_and_logprobs(
        AutoModelForCausalLM.from_pretrained(model_dir).eval(), tokenizer, PROMPTS
    )
    assert max((a - b).abs().max().item() for a, b in zip(plain_lp, want_lp)) > 0.05
    info = json.loads((out / "polyray_export.json").read_text())
    assert info["phase"] == "grpo" and info["policy_version"] == 2 and info["merged"]
    # the embedded model's chat template travels with it
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "user: hi\nassistant: "


def test_adapter_export_loads_with_its_tokenizer(run_dir, model_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = CliRunner().invoke(app, ["export", str(run_dir), "--phase", "sft", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "a"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and (out / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out).eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # finds the base through adapter_config.json
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run_dir / "adapters" / "sft")
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = original.eval()(input_ids=ids).logits
        assert torch.equal(loaded(input_ids=ids).logits, want) and torch.equal(auto(input_ids=ids).logits, want)


def test_adapter_config_names_a_hub_base_by_its_id(run_dir, tmp_path):
    import shutil

    import yaml

    run = tmp_path / "hub_run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((run / "config.resolved.yaml").read_text())
    config["model"]["source"] = "Qwen/Qwen3-0.6B"  # the weights at results.json's model_dir (a snapshot)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(config))
    out = export_run(run, tmp_path / "a")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "Qwen/Qwen3-0.6B"
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in out.iterdir())


def test_default_out_and_an_existing_out_is_refused(run_dir):
    out = export_run(run_dir, phase="sft")
    assert out == run_dir / "export" / "sft" and (out / "adapter_config.json").is_file()
    with pytest.raises(ExportError, match=r"--out: .*export/sft already exists"):
        export_run(run_dir, phase="sft")


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], r"error: {missing}: no such run directory"),
        (["{run}", "--phase", "dpo"], r"error: {run}: the run has no phase 'dpo' \(its phases: sft, grpo\)"),
        (
            ["{half}"],
            r"error: {half}/adapters/grpo: phase 'grpo' has no saved adapter \(adapter_config.json; trained: sft\)",
        ),
        (["{empty}"], r"error: {empty} is not a polyray run directory"),
    ],
)
def test_bad_run_phase_or_adapter_is_one_line_naming_the_path(tmp_path, run_dir, args, message):
    import shutil

    half = tmp_path / "half"
    shutil.copytree(run_dir, half, ignore=shutil.ignore_patterns("export"))
    shutil.rmtree(half / "adapters" / "grpo")  # the last phase not trained yet
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "run": run_dir, "half": half, "empty": tmp_path / "empty"}
    result = CliRunner().invoke(app, ["export", *[a.format(**paths) for a in args]])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and re.match(message.format(**paths), lines[0]), result.output


def test_push_to_hub_without_a_reachable_hub_is_one_line(run_dir, tmp_path):
    """The CLI in a fresh process (the hub endpoint is read at import) against a closed local port."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_TOKEN": "hf_test",
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    out = tmp_path / "pushed"
    cmd = [
        sys.executable,
        "-m",
        "polyray.cli",
        "export",
        str(run_dir),
        "--phase",
        "sft",
        "--out",
        str(out),
        "--push-to-hub",
        "someone/polyray-test",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith(f"error: --push-to-hub: cannot upload {out} to 'someone/polyray-test' (")
    assert (out / "adapter_config.json").is_file()  # the export itself is kept


def test_push_to_hub_in_offline_mode_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ExportError, match=r"^--push-to-hub: cannot upload .* to 'a/b' \(\w+") as info:
        push_to_hub(tmp_path, "a/b")
    assert "\n" not in str(info.value)
