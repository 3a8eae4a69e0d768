"""The memory plan's token counts come from a model's tokenizer.json through ``tokenizers``: the same counts as
transformers' tokenizer of that model (whose import a run's driver no longer pays for them)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from polyray.config import load_config
from polyray.models.source import _tokenizer, prepare_model_dir, token_counter
from polyray.tasks import build_task

pytestmark = pytest.mark.slow

HOSTILE = ["", " ", "3 + 4 * 2<|endoftext|>", "<|pad|><|pad|>", "Ünïcödé — 数字 😀\n\ttabs", "a" * 500, "  leading"]


def _transformers_counts(model_dir, texts):
    return [len(ids) for ids in _tokenizer(str(model_dir))(texts, add_special_tokens=False)["input_ids"]]


def _embedded_and_texts():
    run = load_config("configs/quickstart.yaml")
    model_dir = prepare_model_dir(run.model, run.task)
    prompts = build_task(run.task).prompts("train", run.task.n_train)
    return model_dir, [p.text for p in prompts] + [p.reference or "" for p in prompts] + HOSTILE


def test_the_embedded_models_counts_equal_transformers(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(tmp_path))
    model_dir, texts = _embedded_and_texts()
    assert token_counter(model_dir)(texts) == _transformers_counts(model_dir, texts)


def test_a_wordpiece_tokenizers_counts_equal_transformers():
    # another family: a lower-casing normaliser, [CLS]/[SEP] it would add were special tokens added
    from polyray.embeddings import bundled_minilm_dir

    texts = ["Hello, World!", "don't STOP", "[CLS] x [SEP]", *HOSTILE]
    assert token_counter(bundled_minilm_dir())(texts) == _transformers_counts(bundled_minilm_dir(), texts)


def test_a_model_without_tokenizer_json_is_counted_by_transformers(tmp_path, monkeypatch):
    import polyray.models.source as source

    seen = []

    def slow_tokenizer(model_dir):
        seen.append(model_dir)
        return lambda texts, add_special_tokens: {"input_ids": [[0] * (len(t) + add_special_tokens) for t in texts]}

    monkeypatch.setattr(source, "_tokenizer", slow_tokenizer)
    assert token_counter(tmp_path)(["ab", "abcd"]) == [2, 4] and seen == [str(tmp_path)]


def test_planning_a_countdown_runs_memory_imports_no_transformers():
    code = (
        "import sys\n"
        "from polyray.config import load_config\n"
        "from polyray.learner.memory import longest_sequences\n"
        "from polyray.models.source import prepare_model_dir\n"
        "run = load_config('configs/quickstart.yaml')\n"
        "print(longest_sequences(run, prepare_model_dir(run.model, run.task)))\n"
        "assert 'transformers' not in sys.modules, 'the plan imported transformers'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
