"""A phase resumes after its driver died while Ray Train rewrote its checkpoint record.

Ray Train's controller rewrites ``checkpoint_manager_snapshot.json`` in place; a driver killed during
that write leaves it empty or cut off, and the phase's next ``fit()`` stopped in the controller
(``CheckpointManagerInitializationError``). :func:`recover_run_dir` sets such a file aside and hands
the ranks the phase's newest *whole* checkpoint (every file its manifest lists, at its size and hash)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyray.learner.checkpoints import newest_whole_checkpoint, recover_run_dir, seal, snapshot_name
from polyray.storage import Storage


def _checkpoint(run_dir: Path, name: str, step: int, size: int = 64) -> Path:
    d = run_dir / f"checkpoint_{name}"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "weights.bin").write_bytes(bytes(range(256)) * size)
    (d / "optimizer.pt").write_bytes(b"o" * size)
    seal(d, step, 100 + step)
    return d


def test_newest_whole_checkpoint(tmp_path):
    run_dir = tmp_path / "sft"
    _checkpoint(run_dir, "2026-01-01_00-00-01.000000", 2)
    whole = _checkpoint(run_dir, "2026-01-01_00-00-03.000000", 4)
    _checkpoint(run_dir, "2026-01-01_00-00-02.000000", 8)  # more steps, but older: a lost attempt's
    cut = _checkpoint(run_dir, "2026-01-01_00-00-04.000000", 6)  # cut off in upload: one file short
    (cut / "adapter" / "weights.bin").write_bytes(b"short")
    lost = _checkpoint(run_dir, "2026-01-01_00-00-05.000000", 6)  # a file missing
    (lost / "optimizer.pt").unlink()
    zeros = _checkpoint(run_dir, "2026-01-01_00-00-06.000000", 6)  # right sizes, wrong bytes
    (zeros / "optimizer.pt").write_bytes(bytes(len((zeros / "optimizer.pt").read_bytes())))
    unsealed = run_dir / "checkpoint_2026-01-01_00-00-07.000000"  # no manifest yet
    unsealed.mkdir()
    (unsealed / "state.json").write_text(json.dumps({"step": 9, "version": 109}))
    (run_dir / "zz_not_a_checkpoint").mkdir()
    found = newest_whole_checkpoint(Storage(tmp_path), "sft")
    assert (found.step, found.version, Path(found.location)) == (4, 104, whole)
    assert newest_whole_checkpoint(Storage(tmp_path), "grpo") is None  # no such phase directory


def test_readable_record_stays_ray_trains(tmp_path):
    run_dir = tmp_path / "sft"
    _checkpoint(run_dir, "a", 2)
    (run_dir / snapshot_name()).write_text(json.dumps({"checkpoint_results": []}))
    assert recover_run_dir(str(tmp_path), "sft") is None
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint_a", snapshot_name()]


@pytest.mark.parametrize("written", [b"", b'{"checkpoint_results": [{"checkpoint_dir_name": "checkp', b"\xff\xfe"])
def test_unreadable_record_set_aside(tmp_path, written):
    run_dir = tmp_path / "sft"
    _checkpoint(run_dir, "a", 2)
    newest = _checkpoint(run_dir, "b", 4)
    (run_dir / snapshot_name()).write_bytes(written)
    found = recover_run_dir(str(tmp_path), "sft")
    assert (found.step, Path(found.location)) == (4, newest)
    assert not (run_dir / snapshot_name()).exists()
    (aside,) = run_dir.glob(f"{snapshot_name()}.unreadable-*")
    assert aside.read_bytes() == written  # kept, not deleted
    assert recover_run_dir(str(tmp_path), "sft") == found  # again (no record now): the same checkpoint
    (run_dir / snapshot_name()).write_bytes(written)  # cut off again: set aside beside the first
    assert recover_run_dir(str(tmp_path), "sft") == found
    assert len(list(run_dir.glob(f"{snapshot_name()}.unreadable-*"))) == 2


def test_no_record_no_checkpoint_is_a_fresh_start(tmp_path):
    assert recover_run_dir(str(tmp_path), "sft") is None
    (tmp_path / "sft").mkdir()
    assert recover_run_dir(str(tmp_path), "sft") is None


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_resumes_past_a_cut_off_record(ray_cluster, tmp_path, monkeypatch):
    """Real Ray Train: a phase whose record was cut off does not start again without the recovery,
    and with it resumes from its latest whole checkpoint; the fit after that uses Ray Train's record."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from polyray.learner.trainer import TRAIN_POLL_ENV, TRAIN_POLL_S

    monkeypatch.setenv(TRAIN_POLL_ENV, str(TRAIN_POLL_S))  # as the learner's fits (each sees its end at a poll)

    def loop(config):
        import tempfile

        import ray.train

        from polyray.learner.checkpoints import seal
        from polyray.learner.loop import RayTrainSession

        with RayTrainSession(config["recovered"]).latest_checkpoint() as resumed:
            start = json.loads((Path(resumed) / "state.json").read_text())["step"] if resumed else 0
            in_place = resumed is None or Path(resumed).parent == Path(config["storage"]) / "sft"
        for step in range(start + 1, start + 3):
            d = tempfile.mkdtemp()
            (Path(d) / "weights.bin").write_bytes(b"w" * step)
            seal(d, step, step)
            ray.train.report(
                {"start": start, "step": step, "in_place": in_place}, checkpoint=ray.train.Checkpoint.from_directory(d)
            )

    def fit(recovered=None):
        return TorchTrainer(
            loop,
            train_loop_config={"recovered": recovered, "storage": str(tmp_path)},
            scaling_config=ScalingConfig(num_workers=1),
            run_config=RunConfig(name="sft", storage_path=str(tmp_path)),
        ).fit()

    assert fit().metrics == {"start": 0, "step": 2, "in_place": True}
    record = tmp_path / "sft" / snapshot_name()
    record.write_bytes(record.read_bytes()[: len(record.read_bytes()) // 2])  # the driver died mid-write
    with pytest.raises(Exception, match="Expecting|Unterminated|CheckpointManager"):
        fit()  # Ray Train alone cannot resume the phase
    found = recover_run_dir(str(tmp_path), "sft")
    assert found.step == 2
    # read where it lies (a local disk): no copy left in the temp folder at each restart
    assert fit(found.location).metrics == {"start": 2, "step": 4, "in_place": True}
    assert recover_run_dir(str(tmp_path), "sft") is None  # Ray Train's new record is whole
    assert fit().metrics == {"start": 4, "step": 6, "in_place": True}
