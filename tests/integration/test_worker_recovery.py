"""A rollout worker killed for real (its process, by Ray) is restarted and caught up before it serves:
it pulls the store's newest version while it starts, any other version it is asked for on demand,
and the pool re-registers the named adapters.

Runs last among the integration tests: it kills the session's shared worker twice (its
``max_restarts`` budget), once idle between calls and once with a generation in flight.
"""

from __future__ import annotations

import time

import pytest
import ray

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def _policy(model_dir, run_config, seed):
    from support.phase_harness import random_lora_policy

    return random_lora_policy(model_dir, run_config.learner.lora, seed, std=0.05)[0]


def _pid(worker) -> int:
    return ray.get(worker.__ray_call__.remote(lambda self: __import__("os").getpid()), timeout=10)


def _kill_and_wait(worker) -> list[int]:
    """SIGKILL the worker's process through Ray, wait until a new process answers; the versions it holds then."""
    pid = _pid(worker)
    ray.kill(worker, no_restart=False)
    for _ in range(1200):  # the restart builds a new vLLM engine
        try:
            if _pid(worker) != pid:
                return ray.get(worker.versions.remote())
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError("the rollout worker did not come back")


def test_idle_kill_then_newest_version_and_named_adapter(pool, model_dir, run_config, tmp_path):
    """A worker killed while idle comes back holding the store's newest version (before any call),
    and serves it and the evaluation job's named adapter exactly as before."""
    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter, save_adapter
    from polyray.rollout.request import GenerationRequest
    from polyray.rollout.sampling import request_seeds
    from polyray.tasks import build_task

    model = _policy(model_dir, run_config, seed=11)
    version = pool.newest_version() + 1
    pool.publish(version, extract_adapter(model))
    saved = save_adapter(model, tmp_path / "adapters" / "sft")
    pool.add_named_adapter("run/sft", str(saved))
    texts = [p.text for p in build_task(run_config.task).prompts("val", 3)]
    seeds = request_seeds(0, "recovery", ["0", "1", "2"])
    sampling = SamplingConfig(max_tokens=12)

    def draw(**kw):
        return [
            [s.text for s in g]
            for g in pool.generate(GenerationRequest(prompts=texts, n=3, sampling=sampling, seeds=seeds, **kw))
        ]

    before_version, before_named = draw(version=version), draw(adapter_name="run/sft")
    incarnations = pool.incarnations()
    assert _kill_and_wait(pool.workers[0]) == [version]  # pulled while starting, before serving
    assert pool.incarnations()[0] != incarnations[0]  # what the sync canary goes by to check it again
    assert draw(version=version) == before_version
    assert draw(adapter_name="run/sft") == before_named


def test_kill_in_flight_retries_under_the_same_version(pool, model_dir, run_config):
    """A generation in flight when the worker dies is retried on the restarted worker, under the version
    it asked for (an older one than the newest, pulled from the store), with the same samples."""
    from polyray.config import SamplingConfig
    from polyray.learner.lora import extract_adapter
    from polyray.rollout.pool import wait_restarted
    from polyray.rollout.request import GenerationRequest
    from polyray.rollout.sampling import request_seeds
    from polyray.tasks import build_task

    wait_restarted(pool.workers[0])
    older = pool.newest_version() + 1
    pool.publish(older, extract_adapter(_policy(model_dir, run_config, seed=12)))
    pool.publish(older + 1, extract_adapter(_policy(model_dir, run_config, seed=13)))  # the learner moved on
    texts = [p.text for p in build_task(run_config.task).prompts("val", 64)]
    seeds = request_seeds(0, "in-flight", [str(i) for i in range(len(texts))])
    sampling = SamplingConfig(max_tokens=48)
    request = GenerationRequest(prompts=texts, n=8, sampling=sampling, version=older, seeds=seeds)
    expected = [[s.text for s in g] for g in pool.generate(request)]

    pending = pool.submit(request)
    time.sleep(0.1)
    ready, _ = ray.wait([future for *_, future in pending.chunks], timeout=0)
    assert not ready, "the generation finished before the kill: give it more work"
    ray.kill(pool.workers[0], no_restart=False)  # dies with the chunk in flight
    got = pending.result()
    assert [[s.text for s in g] for g in got] == expected
    assert all(s.version == older for g in got for s in g)
    # the restarted worker pulled the newest version while starting and the asked-for one on demand
    assert sorted(ray.get(pool.workers[0].versions.remote())) == [older, older + 1]


def test_a_restart_needs_nothing_the_driver_held_for_the_start(ray_cluster, model_dir, run_config, tmp_path, capfd):
    """A worker's constructor arguments are plain values (the store by its actor name): Ray keeps no object
    for its restarts, so none can be lost (ray-project/ray#53727) and Ray prints no warning about one; a
    restart after the driver dropped everything of the launch but the pool comes back caught up."""
    import gc

    from polyray.learner.lora import extract_adapter
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    store = open_store(tmp_path / "adapter_store")
    pool = RolloutPool.launch(str(model_dir), run_config.rollout, run_config.model.dtype, store=store)
    try:
        pool.publish(1, extract_adapter(_policy(model_dir, run_config, seed=14)))
        assert "constructor arguments in the object store" not in capfd.readouterr().err
        worker = pool.workers[0]
        # the driver's own references to what it launched with: only the pool's are left
        del store
        gc.collect()
        assert _kill_and_wait(worker) == [1]
    finally:
        pool.shutdown()
