"""The adapter store in-process: ids never repeat (a reserved id included), an id means one set of
weights, retention keeps the newest and the pinned versions, a store reopened on its directory (a
dead actor or driver) has everything that was written, and the wire form round-trips."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from polyray.rollout.store import (
    AdapterHashError,
    AdapterStore,
    VersionReusedError,
    adapter_bytes,
    adapter_hash,
    check_adapter,
    from_wire,
    read_adapter_dir,
    to_wire,
)


def _adapter(seed: int, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(4, 16, generator=g).to(dtype),
        "base_model.model.layers.0.q_proj.lora_B.weight": torch.randn(16, 4, generator=g).to(dtype),
    }
    return {"config": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, "tensors": tensors}


def test_hash_is_sha256_of_config_and_tensor_bytes_in_name_order():
    a = _adapter(0)
    h = hashlib.sha256(json.dumps(a["config"], sort_keys=True).encode())
    for name in sorted(a["tensors"]):
        t = a["tensors"][name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    assert adapter_hash(a) == h.hexdigest()
    reordered = {
        "config": dict(reversed(list(a["config"].items()))),
        "tensors": dict(reversed(list(a["tensors"].items()))),
    }
    assert adapter_hash(reordered) == adapter_hash(a)
    assert adapter_hash(_adapter(1)) != adapter_hash(a)
    bf16 = _adapter(0, torch.bfloat16)  # no numpy dtype for bfloat16: hashed as raw bytes
    assert adapter_hash(bf16) != adapter_hash(a) and adapter_hash(bf16) == adapter_hash(_adapter(0, torch.bfloat16))
    one_bit = _adapter(0)
    one_bit["tensors"]["base_model.model.layers.0.q_proj.lora_B.weight"][3, 1] += 1e-7
    with pytest.raises(AdapterHashError, match="adapter version 5"):
        check_adapter(one_bit, 5, adapter_hash(a))


def test_ids_never_repeat_and_a_retried_put_is_idempotent(tmp_path):
    store = AdapterStore(str(tmp_path), keep=3)
    r1 = store.put(1, _adapter(1), "grpo", 0)
    assert store.put(1, _adapter(1), "grpo", 0) == r1  # the same put retried
    store.put(2, _adapter(2), "grpo", 1)
    with pytest.raises(VersionReusedError, match="version 2 was already handed out"):
        store.put(2, _adapter(3), "grpo", 1)  # same id, other weights
    with pytest.raises(VersionReusedError, match="version 1"):
        store.put(1, _adapter(4))
    with pytest.raises(VersionReusedError):
        store.put(0, _adapter(4))
    store.put(7, _adapter(7))  # gaps are fine; ids only increase
    assert store.newest() == 7 and store.newest_stored() == 7


def test_retention_keeps_the_newest_and_the_pinned(tmp_path):
    store = AdapterStore(str(tmp_path), keep=3)
    for v in range(1, 5):
        store.put(v, _adapter(v), "sft", v)
    store.pin("sft", 4)
    for v in range(5, 10):
        store.put(v, _adapter(v), "grpo", v)
    assert [r.version for r in store.records_list()] == [4, 7, 8, 9]
    assert sorted(p.name for p in tmp_path.glob("v*")) == ["v000004", "v000007", "v000008", "v000009"]
    assert store.get(3) is None
    adapter, record = store.get(4)
    assert record.phase == "sft" and record.sha256 == adapter_hash(_adapter(4)) == adapter_hash(adapter)
    with pytest.raises(KeyError):
        store.pin("gone", 2)


def test_a_reopened_store_has_what_was_written_and_drops_a_torn_write(tmp_path):
    store = AdapterStore(str(tmp_path), keep=4)
    for v in (1, 2, 3):
        store.put(v, _adapter(v), "grpo", v)
    store.pin("sft", 1)
    # a put killed after reserving id 4 for its weights and writing part of its directory (no record.json yet)
    store.reserved, store.reserved_sha256 = 4, adapter_hash(_adapter(40))
    store._save_state()
    (tmp_path / "v000004").mkdir()
    (tmp_path / "v000004" / "adapter_config.json").write_text("{")

    again = AdapterStore(str(tmp_path), keep=4)
    assert not (tmp_path / "v000004").exists()
    assert [r.version for r in again.records_list()] == [1, 2, 3] and again.pinned() == {"sft": 1}
    assert again.newest() == 4 and again.newest_stored() == 3  # the torn id stays handed out ...
    again.put(4, _adapter(40))  # ... except to the put that was cut off, retried
    with pytest.raises(VersionReusedError):
        again.put(4, _adapter(41))
    for v in (1, 2, 3):  # bytes read back from disk, hash-checked
        adapter, record = again.get(v)
        check_adapter(adapter, v, record.sha256)
        assert torch.equal(
            from_wire(adapter)["tensors"]["base_model.model.layers.0.q_proj.lora_B.weight"],
            _adapter(v)["tensors"]["base_model.model.layers.0.q_proj.lora_B.weight"],
        )
    assert read_adapter_dir(tmp_path / "v000002")["config"] == _adapter(2)["config"]


def test_the_store_numbers_versions_and_never_repeats_one_across_restarts(tmp_path):
    store = AdapterStore(str(tmp_path), keep=2)
    assert store.next_version() == 1
    ids = [store.put_next(_adapter(i), "grpo", i).version for i in range(4)]
    assert ids == [1, 2, 3, 4] and store.newest() == 4 and store.next_version() == 5
    # a put reserved id 5 and was killed before its bytes were complete (a dead store actor)
    store.reserved = 5
    store._save_state()
    (tmp_path / "v000005").mkdir()

    again = AdapterStore(str(tmp_path), keep=2)  # the restarted actor reads the directory back
    assert again.next_version() == 6  # the torn id 5 is never handed out again, nor any pruned one
    more = [again.put_next(_adapter(10 + i), "grpo", i).version for i in range(3)]
    assert more == [6, 7, 8]
    handed_out = ids + more
    assert handed_out == sorted(set(handed_out))  # strictly increasing: none repeats
    assert AdapterStore(str(tmp_path), keep=2).next_version() == 9


def test_a_stale_publish_is_refused_after_the_store_numbered_past_it(tmp_path):
    store = AdapterStore(str(tmp_path))
    store.put(1, _adapter(1), "init")  # the run's init adapter names its id
    assert store.put_next(_adapter(2), "grpo", 1).version == 2
    with pytest.raises(VersionReusedError, match="version 2 was already handed out"):
        store.put(2, _adapter(3), "grpo", 1)  # e.g. a lost attempt's learner numbering on its own
    with pytest.raises(VersionReusedError):
        AdapterStore(str(tmp_path)).put(1, _adapter(4))
    assert store.put_next(_adapter(2), "grpo", 2).version == 3  # the same weights again get a new id


def test_the_wire_form_round_trips_every_dtype_and_keeps_the_hash():
    """numpy arrays on the wire where numpy has the dtype (bfloat16 stays torch); back in torch form the
    tensors are equal, writable, and hash as before; torch form passes through as it is."""
    import numpy as np

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a = _adapter(3, dtype)
        wire = to_wire(a)
        assert all(isinstance(v, np.ndarray) != (dtype == torch.bfloat16) for v in wire["tensors"].values())
        back = from_wire(wire)
        assert adapter_hash(back) == adapter_hash(a)
        for name, t in back["tensors"].items():
            assert t.dtype == dtype and torch.equal(t, a["tensors"][name])
    read_only = to_wire(_adapter(4))
    for v in read_only["tensors"].values():
        v.flags.writeable = False  # as an array Ray hands over is
    next(iter(from_wire(read_only)["tensors"].values())).add_(1.0)  # a writable copy
    a = _adapter(5)
    assert from_wire(a) is a


def test_a_reserved_id_takes_only_its_own_weights_once_and_is_never_handed_out_again(tmp_path):
    store = AdapterStore(str(tmp_path))
    store.put_next(_adapter(1))
    v = store.reserve_next(adapter_hash(_adapter(2)))
    assert v == 2 and store.newest() == 2 and store.newest_stored() == 1 and store.get(2) is None
    reopened = AdapterStore(str(tmp_path))  # the reservation is persisted before any bytes, with its hash
    assert reopened.next_version() == 3
    for s in (store, reopened):  # other weights under a reserved id: refused, live or after a restart
        with pytest.raises(VersionReusedError, match="version 2 is reserved for other weights"):
            s.put(v, _adapter(3))
    record = store.put(v, to_wire(_adapter(2)), "grpo", 1, adapter_hash(_adapter(2)))  # the wire form, hash checked
    assert record.version == 2 and adapter_hash(store.get(2)[0]) == adapter_hash(_adapter(2))
    assert store.put(v, _adapter(2), "grpo", 1) == record  # the same put retried
    with pytest.raises(VersionReusedError):
        store.put(v, _adapter(3))
    with pytest.raises(AdapterHashError, match="adapter version 3"):  # the publisher's hash must match the bytes
        store.put(store.reserve_next(adapter_hash(_adapter(3))), _adapter(3), sha256=adapter_hash(_adapter(4)))
    assert store.newest_stored() == 2 and store.put_next(_adapter(5)).version == 4  # 3: reserved, never stored


def test_a_published_adapter_unpickles_without_importing_peft(tmp_path):
    """What the learner publishes is plain data: its receivers (the adapter store, rollout workers,
    generation replicas) unpickle it without importing peft and transformers, which took seconds in
    the store's first put (the run's first publish) when the config held peft's PeftType enum."""
    import pickle
    import subprocess
    import sys

    from support.phase_harness import build_policy, tiny_model_dir

    from polyray.learner.lora import extract_adapter
    from polyray.rollout.store import to_wire

    model, _ = build_policy(tiny_model_dir(tmp_path))
    blob = tmp_path / "adapter.pkl"
    blob.write_bytes(pickle.dumps(to_wire(extract_adapter(model))))
    script = (
        "import pickle, sys; a = pickle.load(open(sys.argv[1], 'rb'));"
        " assert a['config']['peft_type'] == 'LORA' and a['config']['r'] == 4, a['config'];"
        " print(sorted(m for m in ('peft', 'transformers', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(blob)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]"], done.stdout  # numpy arrays and JSON values only


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_both_forms_hash_and_write_alike(dtype):
    adapter = _adapter(5, dtype)
    wire = to_wire(adapter)
    assert adapter_hash(wire) == adapter_hash(adapter)
    assert adapter_bytes(wire) == adapter_bytes(adapter)
    if dtype != torch.bfloat16:  # the numpy path: every tensor an array
        assert all(type(t).__module__ == "numpy" for t in wire["tensors"].values())


def test_the_bfloat16_adapter_reads_back_in_torch_form_and_the_rest_in_numpy(tmp_path):
    store = AdapterStore(str(tmp_path))
    store.put(1, to_wire(_adapter(1)))
    store.put(2, to_wire(_adapter(2, torch.bfloat16)))
    again = AdapterStore(str(tmp_path))  # from disk, not the put's cache
    for version, dtype in ((1, torch.float32), (2, torch.bfloat16)):
        adapter, record = again.get(version)
        check_adapter(adapter, version, record.sha256)
        back = from_wire(adapter)["tensors"]
        assert {t.dtype for t in back.values()} == {dtype}
        assert all(torch.equal(back[k], _adapter(version, dtype)["tensors"][k]) for k in back)


def test_the_store_process_hashes_writes_and_reads_without_torch(tmp_path):
    """The store's actor imports no torch for a float adapter: its put and get hash and write numpy arrays."""
    import subprocess
    import sys

    import numpy as np

    wire = to_wire(_adapter(3))
    np.savez(tmp_path / "wire.npz", **wire["tensors"])
    (tmp_path / "config.json").write_text(json.dumps(wire["config"]))
    script = f"""
import json, sys
import numpy as np
from polyray.rollout.store import AdapterStore, check_adapter
tensors = dict(np.load({str(tmp_path / "wire.npz")!r}))
adapter = {{"config": json.load(open({str(tmp_path / "config.json")!r})), "tensors": tensors}}
store = AdapterStore({str(tmp_path / "store")!r}, preload=True)
record = store.put(1, adapter, sha256={adapter_hash(wire)!r})
again = AdapterStore({str(tmp_path / "store")!r})
check_adapter(again.get(1)[0], 1, record.sha256)
import threading
for t in threading.enumerate():
    if t.name == "polyray-store-preload":
        t.join()
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
