"""A run's fingerprint (polyray.fingerprint): digests that follow exactly what the numbers depend on."""

from __future__ import annotations

from polyray import fingerprint as fp
from polyray.tasks.base import Prompt


def _model(tmp_path, weights: bytes, name: str = "m"):
    d = tmp_path / name
    d.mkdir()
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text("{}")
    return d


def test_weights_digest_follows_the_weight_bytes_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(tmp_path / "cache"))
    a, b = _model(tmp_path, b"\x01" * 64, "a"), _model(tmp_path, b"\x01" * 64, "b")
    assert fp.weights_digest(a) == fp.weights_digest(b)
    (b / "config.json").write_text('{"other": 1}')
    (b / "README.md").write_text("notes")
    assert fp.weights_digest(a) == fp.weights_digest(b)
    (b / "model.safetensors").write_bytes(b"\x01" * 63 + b"\x02")
    assert fp.weights_digest(a) != fp.weights_digest(b)
    assert fp.weights_digest(tmp_path / "cache") == "none"


def test_a_weight_file_is_read_once_per_size_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(tmp_path / "cache"))
    model = _model(tmp_path, b"\x07" * 4096)
    reads = []
    real = fp._file_sha256
    monkeypatch.setattr(fp, "_file_sha256", lambda p: reads.append(p) or real(p))
    first = fp.weights_digest(model)
    assert fp.weights_digest(model) == first and len(reads) == 1
    # rewritten (another size): read again, and the digest follows
    (model / "model.safetensors").write_bytes(b"\x07" * 4095)
    assert fp.weights_digest(model) != first and len(reads) == 2


def test_prompts_digest_follows_texts_references_and_order():
    a, b = Prompt("3 4 -> 7:", reference="3+4"), Prompt("2 5 -> 10:", reference="2*5")
    assert fp.prompts_digest([a, b]) == fp.prompts_digest([Prompt(a.text, reference=a.reference), b])
    assert fp.prompts_digest([a, b]) != fp.prompts_digest([b, a])
    assert fp.prompts_digest([a]) != fp.prompts_digest([Prompt(a.text, reference="4+3")])


def test_same_numbers_ignores_the_cpu_name_but_not_its_kernels():
    base = {
        "model_weights": "w",
        "eval_prompts": "p",
        "cpu": {"model": "AMD EPYC", "cores": 2, "kernel_flags": ["avx2", "fma"]},
        "libraries": {"torch": "2.13.0+cpu"},
    }
    other_box = {**base, "cpu": {"model": "Intel Xeon", "cores": 16, "kernel_flags": ["avx2", "fma"]}}
    assert fp.same_numbers(base, other_box)
    assert not fp.same_numbers(base, {**base, "cpu": {**base["cpu"], "kernel_flags": ["avx2", "fma", "avx512f"]}})
    assert not fp.same_numbers(base, {**base, "libraries": {"torch": "2.14.0+cpu"}})
    assert not fp.same_numbers(base, {**base, "model_weights": "v"})


def test_this_machine_is_described():
    cpu = fp.cpu_description()
    assert cpu["model"] and cpu["cores"] >= 1 and set(cpu["kernel_flags"]) <= set(fp.KERNEL_FLAGS)
    assert "torch" in fp.library_versions()
    line = fp.describe(fp.run_fingerprint("/nonexistent", []))
    assert line.startswith("fingerprint: model weights none, eval prompts ") and "torch " in line
