"""The manifests in deploy/ hold what only a cluster would otherwise check.

KubeRay takes ``serveConfigV2``, ``entrypoint`` and ``runtimeEnvYAML`` as opaque strings, so each is
checked here with Ray's own models: Serve configs with ``ServeDeploySchema`` (every ``import_path``
imports, every app's ``args`` validate with its settings model), runtime envs with ``RuntimeEnv``,
entrypoints by loading their module and config; the GPUs a cluster offers cover what its job or
service asks for; the cluster-launcher YAML passes Ray's autoscaler schema.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml
from dashboard import dashboard_metrics, declared_metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
KINDS = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig", "RayCluster": None}


def _kuberay() -> list[tuple[Path, dict]]:
    out = []
    for path in MANIFESTS:
        doc = yaml.safe_load(path.read_text())
        if doc.get("apiVersion", "").startswith("ray.io/"):
            out.append((path, doc))
    return out


def _cluster(doc: dict) -> dict:
    key = KINDS[doc["kind"]]
    return doc["spec"][key] if key else doc["spec"]


def _workdirs() -> dict[str, str]:
    """image tag -> WORKDIR of its Dockerfile."""
    out = {}
    for tag, name in (("polyray:gpu", "Dockerfile.gpu"), ("polyray:cpu", "Dockerfile.cpu")):
        out[tag] = re.search(r"^WORKDIR (\S+)", (ROOT / "docker" / name).read_text(), re.M).group(1)
    return out


def _pod_gpus(template: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in template["spec"]["containers"])


def _gpus_offered(cluster: dict) -> int:
    head = _pod_gpus(cluster["headGroupSpec"]["template"])
    return head + sum(g.get("maxReplicas", g["replicas"]) * _pod_gpus(g["template"]) for g in cluster["workerGroupSpecs"])


def _largest_pod_gpus(cluster: dict) -> int:
    """The most GPUs one node (pod) has: an actor's GPUs must all be on one node."""
    return max(_pod_gpus(t) for t in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])])


def _run_gpus(run) -> tuple[float, float]:
    """(GPUs the run asks for at once, the most one of its actors asks for)."""
    learner = 1 if run.learner.use_gpu else 0
    total = run.rollout.num_workers * run.rollout.gpus_per_worker + run.learner.num_workers * learner
    return total, max(run.rollout.gpus_per_worker, learner)


def _entrypoint_gpus(entrypoint: str) -> tuple[float, float]:
    """Load the job's module and config; the GPUs it asks for at once, and the most one actor asks for."""
    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], entrypoint
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, module
    config = ROOT / argv[3]  # the command's config argument
    assert config.is_file(), config
    if module == "jobs.train":
        from polyray.config import load_config

        return _run_gpus(load_config(config))
    if module == "jobs.sweep":
        from polyray.config import RunConfig
        from polyray.drivers.sweep import load_sweep

        sweep, base = load_sweep(config)
        total, actor = _run_gpus(RunConfig.model_validate(base))
        return total * sweep.max_concurrent_trials, actor
    if module == "jobs.evaluate":
        from polyray.drivers.evaluate import load_eval_config

        cfg = load_eval_config(config)
        return cfg.rollout.num_workers * cfg.rollout.gpus_per_worker, cfg.rollout.gpus_per_worker
    raise AssertionError(f"no check for {module}")


def test_every_yaml_parses_and_kuberay_kinds_are_known():
    import ray

    assert MANIFESTS
    for path in MANIFESTS:
        assert list(yaml.safe_load_all(path.read_text())), path
    kinds = {doc["kind"] for _, doc in _kuberay()}
    assert kinds == set(KINDS)
    workdirs = _workdirs()
    for path, doc in _kuberay():
        assert doc["apiVersion"] == "ray.io/v1", path
        cluster = _cluster(doc)
        assert cluster["rayVersion"] == ray.__version__, path  # the images are built at this version
        for template in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
            for container in template["spec"]["containers"]:
                assert container["workingDir"] == workdirs[container["image"]], (path, container["image"])


@pytest.mark.parametrize("path", [p for p, d in _kuberay() if d["kind"] == "RayJob"], ids=lambda p: p.name)
def test_rayjob_entrypoint_runtime_env_and_gpus(path):
    from ray.runtime_env import RuntimeEnv

    doc = yaml.safe_load(path.read_text())
    RuntimeEnv(**yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}"))
    needed, per_actor = _entrypoint_gpus(doc["spec"]["entrypoint"])
    assert _gpus_offered(_cluster(doc)) >= needed > 0, path
    assert _largest_pod_gpus(_cluster(doc)) >= per_actor, path  # a tensor-parallel worker's GPUs share a node


@pytest.mark.parametrize("path", [p for p, d in _kuberay() if d["kind"] == "RayService"], ids=lambda p: p.name)
def test_rayservice_serve_config(path):
    from ray.runtime_env import RuntimeEnv
    from ray.serve.schema import ServeDeploySchema

    from polyray.config.services import GenerationServiceConfig
    from polyray.config.services import RewardServiceConfig

    settings = {"polyray.services.reward_app:build_app": RewardServiceConfig,
                "polyray.services.generation_app:build_app": GenerationServiceConfig}  # fmt: skip
    doc = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    needed = 0.0
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), app.import_path
        config = settings[app.import_path].model_validate(app.args)
        if app.runtime_env:
            RuntimeEnv(**app.runtime_env)
        needed += getattr(config, "gpus", 0) * config.num_replicas
    assert _gpus_offered(_cluster(doc)) >= needed, path


def test_a_typo_in_a_serve_config_is_caught():
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from polyray.config.services import GenerationServiceConfig

    with pytest.raises(ValidationError):
        ServeDeploySchema.model_validate({"applications": [{"name": "g", "import_pth": "x:y"}]})
    with pytest.raises(ValidationError, match="max_replica"):
        GenerationServiceConfig.model_validate({"model_dir": "/m", "max_replica": 2})


def test_cluster_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster-launcher.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"] == "polyray:gpu"
    config["available_node_types"]["gpu"]["min_workerz"] = 1
    with pytest.raises(Exception, match="min_workerz"):
        validate_config(prepare_config(config))


def test_cpu_image_and_make_setup_share_one_install():
    """docker/install-cpu.sh is the one list: neither the Makefile nor the CPU image installs anything else."""
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    image = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    for text in (recipe, image):
        assert "docker/install-cpu.sh" in text
        assert "pip install" not in text.replace("\\\n", " ")
    script = (ROOT / "docker" / "install-cpu.sh").read_text()
    assert '-e ".[dev]"' in script and "docker/requirements-vllm-cpu.txt" in script


def test_grafana_dashboard_covers_every_polyray_metric():
    declared = declared_metrics()
    assert dashboard_metrics() == set(declared)
    assert len(declared) >= 15 and {"histogram", "gauge", "counter"} == set(declared.values())
