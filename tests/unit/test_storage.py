"""cluster.storage: directories put into storage with a manifest, copied once per node, hash-checked."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from polyray.storage import MANIFEST, Storage, StorageError, StoredDir, local_dir, node_copy_dir


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    cache = tmp_path / "node-cache"
    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(cache))
    return cache


def _model(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "qwen3"}')
    (path / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 1000)
    return path


def test_a_stored_directory_is_copied_to_the_node_cache_with_the_same_bytes(tmp_path, node_cache):
    src = _model(tmp_path / "driver" / "model")
    ref = Storage(tmp_path / "shared").put_dir(src, "models/m")
    got = local_dir(str(ref))  # the string form crosses process boundaries inside configs
    assert got == node_copy_dir(ref) and got.is_relative_to(node_cache)
    for rel in ("config.json", "sub/weights.bin"):
        assert (got / rel).read_bytes() == (src / rel).read_bytes()
    manifest = json.loads((tmp_path / "shared" / "models" / "m" / MANIFEST).read_text())
    assert set(manifest["files"]) == {"config.json", "sub/weights.bin"}
    # once per node: a second resolve reads the node copy, not storage
    import shutil

    shutil.rmtree(tmp_path / "shared")
    assert local_dir(ref) == got


def test_a_plain_path_is_returned_as_it_is(tmp_path):
    assert local_dir(str(tmp_path)) == tmp_path and local_dir(tmp_path) == tmp_path


def test_reference_string_round_trip():
    ref = StoredDir("s3://bucket/prefix", "runs/q-1/adapters/sft", "ab" * 32)
    assert StoredDir.parse(str(ref)) == ref
    with pytest.raises(StorageError, match="not a stored-directory reference"):
        StoredDir.parse("storage:abc:key@uri")


def test_a_file_changed_in_storage_is_refused(tmp_path, node_cache):
    ref = Storage(tmp_path / "shared").put_dir(_model(tmp_path / "m"), "models/m")
    (tmp_path / "shared" / "models" / "m" / "sub" / "weights.bin").write_bytes(b"other weights")
    with pytest.raises(StorageError, match=r"sub/weights\.bin: content hash .* != manifest"):
        local_dir(ref)
    left = [p.name for p in node_copy_dir(ref).parent.iterdir() if not p.name.endswith(".lock")]
    assert left == []  # neither a copy nor a staging directory


def test_a_directory_replaced_after_the_reference_is_refused(tmp_path, node_cache):
    storage = Storage(tmp_path / "shared")
    ref = storage.put_dir(_model(tmp_path / "m"), "adapters/sft")
    (tmp_path / "m" / "config.json").write_text('{"model_type": "other"}')
    assert storage.put_dir(tmp_path / "m", "adapters/sft") != ref
    with pytest.raises(StorageError, match="manifest hash .* replaced after the reference"):
        local_dir(ref)


def test_put_is_idempotent_and_content_addressed_keys_differ(tmp_path):
    storage = Storage(tmp_path / "shared")
    src = _model(tmp_path / "m")
    a = storage.put_dir(src, "models", content_addressed=True)
    assert storage.put_dir(src, "models", content_addressed=True) == a
    assert a.key == f"models/m-{a.sha256[:16]}" and storage.ref(a.key) == a
    (src / "config.json").write_text("{}")
    assert storage.put_dir(src, "models", content_addressed=True).key != a.key


def test_a_uri_location(tmp_path, node_cache):
    storage = Storage(f"file://{tmp_path}/shared")
    # a file:// URI opens a local file system: other processes get the plain path
    assert storage.location("runs/x/checkpoints") == f"{tmp_path}/shared/runs/x/checkpoints"
    ref = storage.put_dir(_model(tmp_path / "m"), "models/m")
    assert (local_dir(ref) / "config.json").is_file()


def test_a_bad_uri_is_one_line():
    with pytest.raises(StorageError, match=r"^cluster.storage: cannot open 'nosuch://x'"):
        Storage("nosuch://x")


def _resolve(args):
    import os

    cache, ref = args
    os.environ["POLYRAY_CACHE_DIR"] = cache
    return str(local_dir(StoredDir.parse(ref)))


def test_processes_of_one_node_copy_once(tmp_path):
    ref = Storage(tmp_path / "shared").put_dir(_model(tmp_path / "m"), "models/m")
    with multiprocessing.get_context("spawn").Pool(3) as workers:
        got = set(workers.map(_resolve, [(str(tmp_path / "node"), str(ref))] * 6))
    assert len(got) == 1
    copies = [p for p in (tmp_path / "node" / "storage").iterdir() if not p.name.endswith(".lock")]
    assert [p.name for p in copies] == [Path(got.pop()).name]  # no staging directory left behind


def test_the_adapter_store_on_a_storage_uri(tmp_path):
    from polyray.rollout.store import AdapterStore, adapter_hash

    adapter = {"config": {"r": 2}, "tensors": {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}}
    store = AdapterStore(f"file://{tmp_path}/shared/runs/q/adapter_store", keep=2)
    record = store.put_next(adapter, phase="sft", step=3)
    store.pin("sft", record.version)
    reopened = AdapterStore(f"file://{tmp_path}/shared/runs/q/adapter_store", keep=2)
    got, again = reopened.get(record.version)
    assert again == record and adapter_hash(got) == record.sha256 and reopened.pinned() == {"sft": 1}
    assert (tmp_path / "shared" / "runs" / "q" / "adapter_store" / "v000001" / "record.json").is_file()


def test_cluster_settings_refuse_bad_values():
    from pydantic import ValidationError

    from polyray.config import ClusterConfig

    assert ClusterConfig(storage="s3://b/p", worker_resources={"worker": 1}).storage == "s3://b/p"
    with pytest.raises(ValidationError, match="empty"):
        ClusterConfig(storage=" ")
    with pytest.raises(ValidationError, match="'CPU': a custom resource"):
        ClusterConfig(worker_resources={"CPU": 1})


def test_a_run_has_one_key_per_output_directory_and_none_without_storage(tmp_path):
    from polyray.storage import RunStorage, share_model

    a = RunStorage.of(str(tmp_path / "shared"), "quickstart", tmp_path / "out")
    assert a == RunStorage.of(str(tmp_path / "shared"), "quickstart", tmp_path / "x" / ".." / "out")  # a resume
    assert a != RunStorage.of(str(tmp_path / "shared"), "quickstart", tmp_path / "out2")
    assert a.location("checkpoints") == f"{tmp_path}/shared/{a.key}/checkpoints" and a.key.startswith(
        "runs/quickstart-"
    )
    assert RunStorage.of(None, "quickstart", tmp_path / "out") is None
    assert share_model(None, tmp_path / "model") == str(tmp_path / "model")  # one node: the path, as before


def test_a_phase_adapter_round_trip_replaces_the_driver_copy(tmp_path, node_cache):
    from polyray.storage import RunStorage

    shared = RunStorage.of(str(tmp_path / "shared"), "q", tmp_path / "out")
    ref = shared.put_dir(_model(tmp_path / "rank0" / "sft"), "adapters", "sft")
    dest = tmp_path / "out" / "adapters" / "sft"
    dest.mkdir(parents=True)
    (dest / "stale.bin").write_bytes(b"from a lost attempt")
    assert shared.get_dir(dest, "adapters", "sft") == ref
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", MANIFEST, "sub"]
    assert shared.put_dir(dest, "adapters", "sft") == ref  # the driver hands the same reference on


def test_a_worker_reads_the_data_and_the_engagement_model_from_storage_not_the_driver(tmp_path, monkeypatch):
    """worker_config: what the driver ships names storage, so a node without the driver's disk scores the same."""
    import shutil

    from polyray.config import load_config
    from polyray.drivers.preflight import worker_config
    from polyray.reward.engagement import ensure_engagement_model
    from polyray.reward.scorer import RewardScorer
    from polyray.reward.service import resolve_reward
    from polyray.tasks import build_task

    root = Path(__file__).resolve().parents[2]
    driver = tmp_path / "driver"
    data = driver / "replies.jsonl"
    data.parent.mkdir()
    shutil.copy(root / "tests" / "fixtures" / "engagement.jsonl", data)
    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(driver / "cache"))
    run = load_config(
        root / "configs" / "replies.yaml", [f"task.path={data}", f"cluster.storage={tmp_path / 'shared'}"]
    )
    from polyray.reward.plan import plan

    for t in plan(run, build_task(run.task)).training.values():  # the driver trains both (reward, judge) into its cache
        ensure_engagement_model(data, t.path, run.task.seed, lines=t.lines, posts=t.posts)

    def scores(run):
        task = build_task(run.task)
        name, params = resolve_reward(run.reward, task)
        items = [task.reward_item(p, "thanks, great point") for p in task.prompts("test", 4)]
        return params, [r.score for r in RewardScorer().score(name, items, params)]

    _, expected = scores(run)
    shipped = worker_config(run)
    assert shipped.task.path.startswith("storage:") and shipped.task.engagement_model.startswith("storage:")
    assert shipped.task.eval_engagement_model.startswith("storage:")  # the judge (dynamics probe on a learner rank)
    assert build_task(shipped.task).eval_engagement_model_dir() != build_task(shipped.task).engagement_model_dir()
    shutil.rmtree(driver)  # a worker's node has none of the driver's files
    monkeypatch.setenv("POLYRAY_CACHE_DIR", str(tmp_path / "node" / "cache"))
    params, got = scores(shipped)
    assert params["model_path"] == shipped.task.engagement_model  # a replica on yet another node copies it too
    assert got == expected
    quickstart = load_config(root / "configs" / "quickstart.yaml")
    assert worker_config(quickstart) is quickstart  # no storage: the config as it is
