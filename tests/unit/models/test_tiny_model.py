"""The embedded model builder is deterministic for a seed and writes a normal HF model directory."""

from __future__ import annotations

import hashlib

import pytest

from polyray.config.model import TinyModelConfig
from polyray.config.tasks import CountdownTaskConfig

pytestmark = pytest.mark.slow

# Small enough to build twice in a few seconds; same code path as the default build.
SMALL = dict(
    hidden_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=64,
    pretrain_steps=6,
    pretrain_batch_size=8,
    pretrain_prompts=200,
    vocab_size=320,
)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic_and_loadable(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polyray.models.tiny import build_tiny_model

    torch.set_num_threads(1)
    task = CountdownTaskConfig()
    a = build_tiny_model(TinyModelConfig(**SMALL), task, out_dir=tmp_path / "a")
    b = build_tiny_model(TinyModelConfig(**SMALL), task, out_dir=tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(a / name) == _digest(b / name), f"{name} differs between two builds with one seed"

    c = build_tiny_model(TinyModelConfig(**SMALL, seed=1), task, out_dir=tmp_path / "c")
    assert _digest(a / "model.safetensors") != _digest(c / "model.safetensors")

    model = AutoModelForCausalLM.from_pretrained(a)
    tok = AutoTokenizer.from_pretrained(a)
    assert model.config.model_type == "qwen3" and model.config.head_dim >= 32
    ids = tok("3 5 7 -> 22:", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size


def test_cache_key_tracks_config():
    from polyray.models.tiny import build_key

    task = CountdownTaskConfig()
    assert build_key(TinyModelConfig(), task) == build_key(TinyModelConfig(), task)
    assert build_key(TinyModelConfig(), task) != build_key(TinyModelConfig(pretrain_steps=10), task)


BUILD_AND_SAY = """
import sys
from pathlib import Path
from polyray.config.model import TinyModelConfig
from polyray.config.tasks import CountdownTaskConfig
from polyray.models.tiny import build_tiny_model
steps = []
build_tiny_model(TinyModelConfig(**{small!r}), CountdownTaskConfig(), Path(sys.argv[1]), lambda s, n, loss: steps.append(s))
print("built" if steps else "reused")
"""


def test_concurrent_builds_of_one_model_build_it_once(tmp_path):
    """Two processes that ask for the same model at once: one builds it, the other waits and reuses it."""
    import os
    import subprocess
    import sys

    script, env = BUILD_AND_SAY.format(small=SMALL), {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "m")], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    said = sorted(p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert said == ["built", "reused"], said
    assert (tmp_path / "m" / "build_info.json").is_file()


def test_a_prefix_of_a_build_reaches_the_weights_the_build_recorded_there(tmp_path):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from polyray.models.tiny import TRAJECTORY_STEPS, build_tiny_model, parameters_digest, pretrain_prefix

    torch.set_num_threads(1)
    task = CountdownTaskConfig()
    tiny = TinyModelConfig(**{**SMALL, "pretrain_steps": TRAJECTORY_STEPS[-1] + 10, "pretrain_batch_size": 2})
    built = build_tiny_model(tiny, task, out_dir=tmp_path / "m")
    recorded = json.loads((built / "build_info.json").read_text())["trajectory"]
    assert sorted(recorded) == sorted(str(s) for s in TRAJECTORY_STEPS)
    for steps, digest in recorded.items():
        assert pretrain_prefix(tiny, task, int(steps))[0] == digest
        assert pretrain_prefix(tiny, task, int(steps) - 1)[0] != digest
    # the digest is of what a build saves: the whole prefix gives the saved weights'
    saved = AutoModelForCausalLM.from_pretrained(built, dtype=torch.float32)
    assert parameters_digest(saved) == pretrain_prefix(tiny, task, tiny.pretrain_steps)[0]
