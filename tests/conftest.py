"""Shared fixtures: one local Ray cluster and one vLLM rollout pool per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionstart(session):
    """With test workers (``make test``: pytest-xdist), build the embedded model here, in the controller,
    before any worker starts a test: otherwise the first test that needs it builds it (~3 minutes on
    2 cores, more beside another test) inside its own time limit, while the other worker waits."""
    if getattr(session.config.option, "numprocesses", None) and not hasattr(session.config, "workerinput"):
        from polyray.models.source import resolve_model_dir

        run = _quickstart()
        print("\nbuilding the embedded model before the workers start (once per cache)", flush=True)
        resolve_model_dir(run.model, run.task)


def pytest_ignore_collect(collection_path, config):
    """`make test`'s second pass selects ``-m "serial and ..."``: a test file that never names the mark (in any
    case, so a name bound to it counts) holds none of its tests and is not imported (collecting every file
    imports torch, vLLM and Ray for a few dozen tests)."""
    if not config.option.markexpr.startswith("serial and") or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    # None, not False, for a file that may hold one: pytest's own --ignore check still decides it
    return True if "serial" not in collection_path.read_text().lower() else None


def _quickstart():
    from pathlib import Path

    from polyray.config import load_config

    return load_config(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


@pytest.fixture(scope="session")
def run_config():
    return _quickstart()


@pytest.fixture(scope="session")
def model_dir(run_config):
    """The embedded default model (built once into the user cache, reused afterwards)."""
    from polyray.models.source import resolve_model_dir

    return resolve_model_dir(run_config.model, run_config.task)


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def pool(ray_cluster, model_dir, run_config, tmp_path_factory):
    """The session's rollout pool, publishing through an adapter store in a temporary run directory."""
    from polyray.rollout.pool import RolloutPool
    from polyray.rollout.store import open_store

    store = open_store(tmp_path_factory.mktemp("run") / "adapter_store")
    p = RolloutPool.launch(str(model_dir), run_config.rollout, run_config.model.dtype, store=store)
    yield p
    p.shutdown()
