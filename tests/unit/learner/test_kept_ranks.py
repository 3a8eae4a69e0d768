"""The kept learner ranks' bookkeeping without a cluster: what a sweep's keeper hands on, what it stops, and
the checkpoint names kept ranks write beside Ray Train's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polyray.learner.group import CHECKPOINT_TIME, RankKeeper

ROOT = Path(__file__).resolve().parents[3]
OPTIONS = {"num_cpus": 1, "num_gpus": 0, "resources": {}, "scheduling_strategy": "DEFAULT"}


def _keeper(monkeypatch) -> tuple[RankKeeper, list]:
    killed: list = []
    monkeypatch.setattr(RankKeeper, "_kill", staticmethod(lambda actors: killed.extend(actors)))
    return RankKeeper(), killed


def test_a_keeper_hands_the_next_run_what_the_last_gave_back(monkeypatch):
    keeper, killed = _keeper(monkeypatch)
    assert keeper.take(OPTIONS) == ([], [])  # nothing kept yet: the run starts its own
    keeper.give(["rank0", "rank1"], OPTIONS)
    assert keeper.take(OPTIONS) == (["rank0", "rank1"], []) and killed == []
    keeper.give(["rank0", "rank1"], OPTIONS)
    keeper.release()
    assert killed == ["rank0", "rank1"] and keeper.take(OPTIONS) == ([], [])


def test_a_keeper_stops_ranks_a_run_never_gave_back_and_ranks_of_other_options(monkeypatch):
    keeper, killed = _keeper(monkeypatch)
    keeper.give(["rank0"], OPTIONS)
    assert keeper.take(OPTIONS) == (["rank0"], [])
    # that run died before its end: its ranks may be mid-phase, so the next run gets none of them
    assert keeper.take(OPTIONS) == ([], []) and killed == ["rank0"]
    keeper.give(["rank1"], OPTIONS)
    assert keeper.take({**OPTIONS, "num_cpus": 2}) == ([], []) and killed == ["rank0", "rank1"]  # not what it asks


def test_ranks_a_keeper_started_early_go_to_the_first_run_that_matches_them(monkeypatch):
    """prestart's ranks (started while the sweep's engines start) are handed over as still starting, once;
    a first run asking for other options gets none of them, and they are stopped."""
    import ray

    keeper, killed = _keeper(monkeypatch)
    monkeypatch.setattr(ray, "remote", _Remote)
    monkeypatch.setattr(_Remote, "started", 0)
    keeper.prestart(2, OPTIONS, threads=1)
    assert keeper.take(OPTIONS) == ([], ["rank1", "rank2"]) and killed == []
    assert keeper.take(OPTIONS) == ([], []) and killed == ["rank1", "rank2"]  # never given back: stopped
    keeper.prestart(1, OPTIONS, threads=1)
    assert keeper.take({**OPTIONS, "num_cpus": 2}) == ([], []) and killed[-1] == "rank3"  # not what it asks
    keeper.prestart(1, OPTIONS, threads=1)
    keeper.release()
    assert killed[-1] == "rank4"


class _Remote:
    """``ray.remote(LearnerRank)`` without a cluster: each start a new name."""

    started = 0

    def __init__(self, cls):
        pass

    def options(self, **options):
        return self

    def remote(self, threads: int) -> str:
        _Remote.started += 1
        return f"rank{_Remote.started}"


def test_kept_ranks_name_checkpoints_as_ray_train_does(monkeypatch):
    """Either learner resumes the other's checkpoints, the newest by directory name: the same format, the same
    clock (Ray Train's own name for a frozen moment)."""
    import datetime

    from ray.train.v2._internal import util

    moment = datetime.datetime(2026, 11, 28, 9, 5, 7, 123)

    class Frozen(datetime.datetime):
        @classmethod
        def today(cls):
            return moment

        @classmethod
        def now(cls, tz=None):
            return moment

    monkeypatch.setattr(util, "datetime", Frozen)
    assert moment.strftime(CHECKPOINT_TIME) == util.date_str(include_ms=True)


@pytest.mark.slow
def test_a_learner_rank_trains_without_importing_scikit_learn(tmp_path):
    """transformers imports scikit-learn (with scipy.stats and pandas) for a generation feature polyray never
    uses; a rank skips it, through both phases of the worker function, and it stays importable after."""
    import subprocess
    import sys
    from pathlib import Path

    from support.phase_harness import tiny_model_dir

    model = tiny_model_dir(tmp_path)
    script = f"""
import sys
import torch
torch.set_num_threads(1)
from polyray.learner.group import LearnerRank
LearnerRank(1)
from pathlib import Path
from support.phase_harness import check_two_phase_run, run_sft_then_grpo
check_two_phase_run(run_sft_then_grpo(Path({str(model)!r}), Path({str(tmp_path / "run")!r})))
assert "sklearn" not in sys.modules, "a rank imported scikit-learn"
import sklearn.metrics
print("ok")
"""
    tests = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tests.parent,
        env={**os.environ, "PYTHONPATH": str(tests)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_kept_gpu_ranks_see_their_nodes_gpus_and_use_the_one_ray_assigned():
    """The decision: as Ray Train's ranks (one CUDA_VISIBLE_DEVICES per node), kept ranks see every GPU of
    their node, for NCCL's peer-to-peer path between them (a peer's device must be visible to open its
    memory; isolated, NCCL moves every all-reduce through host memory), and each uses its own."""
    from polyray.config import load_config
    from polyray.learner.group import SHARED_GPU_VISIBILITY, rank_device, rank_options

    gpu = load_config(ROOT / "configs/gpu/qwen3_0.6b.yaml")
    options = rank_options(gpu)
    assert options["num_gpus"] == 1 and options["runtime_env"] == {"env_vars": SHARED_GPU_VISIBILITY}
    assert SHARED_GPU_VISIBILITY == {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}
    assert "runtime_env" not in rank_options(load_config(ROOT / "configs/quickstart.yaml"))  # CPU ranks
    # ray.get_gpu_ids() in the rank, and the node's CUDA_VISIBLE_DEVICES it then inherits
    assert rank_device([3], None) == 3  # a node without CUDA_VISIBLE_DEVICES: GPUs by index
    assert rank_device(["6"], "4,5,6,7") == 2  # a node restricted to some GPUs: the place in its list
    assert rank_device(["GPU-b2"], "GPU-a1,GPU-b2") == 1  # listed by UUID
    with pytest.raises(RuntimeError, match="holds one GPU"):
        rank_device(["0", "1"], None)
    with pytest.raises(RuntimeError, match="not in CUDA_VISIBLE_DEVICES"):
        rank_device(["1"], "2,3")
