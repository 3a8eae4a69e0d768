"""Every wait for something Ray must place is bounded, and says what it waited for: a Serve app whose
replicas the cluster cannot hold, one that fails, and a learner phase whose ranks Ray Train cannot place
(each used to wait forever: Serve and Ray Train retry placement without end)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from polyray.cluster import ClusterShortfall
from polyray.io import ConfigError

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_a_serve_app_the_cluster_cannot_hold_stops_the_wait_naming_it(ray_cluster):
    from ray import serve

    from polyray.cluster import run_serve_apps

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Fine:
        def __call__(self, request) -> str:
            return "ok"

    @serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {"nowhere": 1}})
    class Unplaced:
        def __call__(self, request) -> str:
            return "never"

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Broken:
        def __init__(self):
            raise RuntimeError("the model file is not there")

    serve.start(proxy_location="Disabled")
    try:
        run_serve_apps([(Fine.bind(), "fine", None)], wait_s=60)
        assert serve.status().applications["fine"].status == "RUNNING"

        started = time.monotonic()
        with pytest.raises(ClusterShortfall) as err:
            run_serve_apps([(Unplaced.bind(), "unplaced", None)], wait_s=2, poll_s=0.2)
        assert time.monotonic() - started < 30
        assert str(err.value).startswith("Serve app 'unplaced' (Unplaced: ")
        assert str(err.value).endswith(") not running after 2 s (cluster.resource_wait_s)")

        with pytest.raises(ConfigError, match="Serve app 'broken' failed to deploy: .*the model file is not there"):
            run_serve_apps([(Broken.bind(), "broken", None)], wait_s=120, poll_s=0.2)
    finally:
        serve.shutdown()


def test_a_learner_ray_train_cannot_place_stops_the_phase_naming_its_ranks(
    ray_cluster, run_config, model_dir, tmp_path
):
    """Ranks asking for more CPUs than the cluster has: Ray Train's start times out once per try
    (learner.max_failures + 1 tries of cluster.resource_wait_s), then the phase stops, naming them."""
    from polyray.learner.trainer import run_phase

    run = run_config.model_copy(deep=True)
    run.learner.cpus_per_worker = 64.0  # the test cluster has 4
    run.learner.max_failures = 0
    run.cluster.resource_wait_s = 2.0
    run.learner.keep_ranks = False
    started = time.monotonic()
    with pytest.raises(ClusterShortfall) as err:
        run_phase(run, 0, model_dir, tmp_path, None, 0, None)
    assert time.monotonic() - started < 120
    message = str(err.value)
    assert message.startswith(
        f"learner: {run.phase_workers(0)} rank(s) of phase {run.phases[0].name!r} not placed in 1"
        " start(s) of 2 s each (learner.max_failures + 1, cluster.resource_wait_s): each asks {CPU: 64}"
    )
    assert "free now: {CPU: " in message


@pytest.mark.parametrize("started_early", [False, True], ids=["by-the-fit", "before-the-fit"])
def test_kept_ranks_the_cluster_cannot_place_stop_the_phase_naming_them(
    ray_cluster, run_config, model_dir, tmp_path, started_early
):
    """The same with kept ranks (learner.keep_ranks): one wait of cluster.resource_wait_s, then the phase stops
    naming the ranks, and the ones that were started are released. Ranks a run started before the fit
    (``start``, as the driver does while the engines start) are the ones the fit waits for, not more."""
    import ray

    from polyray.learner.group import LearnerGroup
    from polyray.learner.trainer import run_phase

    run = run_config.model_copy(deep=True)
    run.learner.cpus_per_worker = 64.0
    run.cluster.resource_wait_s = 2.0

    def rank_actors() -> list[dict]:  # this test's: the session's cluster holds other tests' too
        return [
            a
            for i, a in ray._private.state.actors().items()
            if a["ActorClassName"] == "LearnerRank" and i not in before
        ]

    before = set(ray._private.state.actors())
    group = LearnerGroup(run)
    if started_early:
        group.start(run.phase_workers(0))
        assert len(group.starting) == run.phase_workers(0) and group.ranks == []
    started = time.monotonic()
    with pytest.raises(ClusterShortfall) as err:
        run_phase(run, 0, model_dir, tmp_path, None, 0, None, group=group)
    assert time.monotonic() - started < 60
    world = run.phase_workers(0)
    assert str(err.value).startswith(
        f"learner: {world} of {world} rank(s) not placed in 2 s (cluster.resource_wait_s): each asks {{CPU: 64}}"
    )
    assert "free now: {CPU: " in str(err.value)
    assert group.ranks == [] and group.starting == []
    deadline = time.monotonic() + 30  # ray.kill is asynchronous
    while time.monotonic() < deadline:
        ranks = rank_actors()
        if ranks and all(a["State"] == "DEAD" for a in ranks):
            break
        time.sleep(0.2)
    assert ranks and all(a["State"] == "DEAD" for a in ranks), ranks  # none left waiting for its CPUs
    assert len(ranks) == world  # the fit started no more than the early start had


def test_an_eval_job_whose_workers_need_a_gpu_stops_naming_them(ray_cluster, model_dir, tmp_path):
    """The evaluation job on a cluster without the GPU its rollout worker asks for: one bounded wait of
    cluster.resource_wait_s, then it stops naming the workers (it used to wait without bound), and the
    worker it asked for is not left queued."""
    import ray

    from polyray.config.eval_job import load_eval_config
    from polyray.drivers.evaluate.driver import run_eval

    overrides = ["models=[{name: base, kind: base}]", "compare=[]", "lora=[]", "tasks.0.n_prompts=2"]
    overrides += ["rollout.gpus_per_worker=1", "cluster.resource_wait_s=3"]
    cfg = load_eval_config(ROOT / "configs/eval/quickstart.yaml", overrides)
    before = set(ray._private.state.actors())
    started = time.monotonic()
    with pytest.raises(ClusterShortfall) as err:
        run_eval(cfg, tmp_path / "eval")
    assert time.monotonic() - started < 60
    assert str(err.value).startswith(
        "rollout workers [0] not placed after 3 s (cluster.resource_wait_s): each asks {CPU: 1, GPU: 1} on one node"
    ), str(err.value)
    deadline = time.monotonic() + 30  # ray.kill is asynchronous
    while time.monotonic() < deadline:
        workers = [a for i, a in ray._private.state.actors().items() if i not in before]
        if workers and all(a["State"] == "DEAD" for a in workers):
            break
        time.sleep(0.2)
    assert workers and all(a["State"] == "DEAD" for a in workers), workers
