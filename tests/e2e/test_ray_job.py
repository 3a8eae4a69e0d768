"""The training entrypoint as a Ray job: `ray job submit --working-dir . -- python -m jobs.train ...`.

Starts a head node with `ray start --head` and metrics export on, submits a shortened quickstart
(polychromic SFT then GRPO, 8 and 4 steps, the reward service and the generation service on, 8 test
prompts) with the README's command, and checks the job succeeded and wrote results. While the job
runs, the test scrapes the node's Prometheus endpoint: every polyray metric the Grafana dashboard
(deploy/grafana-dashboard.json) queries has a sample tagged with the job's run; and it opens the Ray
dashboard in headless Chromium (signed in with the cluster's token) and finds the job and polyray's
actors on its pages, saving screenshots to test-artifacts/. And it watches the run's generation service
(``--serve-generation``) as an OpenAI client: ``/v1/models`` gains versions while the phases train, and the
endpoint's log-probs of a fixed completion under ``latest`` equal the learner's for the version that
answered (its adapter, as published to the store, on the base model in peft, float32) within 1e-3.
The head keeps its session under a temp dir of its own, so no other cluster's `ray.init()` on this
machine finds it (Ray's default temp dir names the last `ray start`), and its processes, found by a marker
in their environment, are killed afterwards: the test runs beside others.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from support.dashboard import declared_metrics
from support.phase_harness import learner_logprobs
from support.processes import kill_by_env

from polyray.http import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NO_AGENT = "No available agent to submit job"
AGENT_WAIT_S = 120.0
MARKER = "POLYRAY_TEST_RAY_JOB"  # in the environment of every process the head starts, and theirs


def test_train_entrypoint_runs_as_ray_job(tmp_path, model_dir, run_config):
    from polyray.learner.lora import build_peft_model
    from polyray.tasks import build_task

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # The head and the submitting client share a token (environment variables keep ~/.ray untouched;
    # with a token file in ~/.ray, `ray start` turns token auth on and the client must use it too).
    env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"] = "token", secrets.token_hex(16)
    env["RAY_metrics_report_interval_ms"] = "1000"  # samples reach the endpoint within a second
    env[MARKER] = secrets.token_hex(8)
    # short: Ray's socket paths under it must fit a Unix socket's 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))
    dashboard, metrics_port, gen_port, agent = free_port(), free_port(), free_port(), free_port()
    start = subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--port=0",
            f"--dashboard-port={dashboard}",
            "--num-cpus=6",
            "--include-dashboard=true",
            f"--metrics-export-port={metrics_port}",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={agent}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if start.returncode != 0:
        kill_by_env(MARKER, env[MARKER])
    assert start.returncode == 0, start.stderr[-3000:]
    out = tmp_path / "job-run"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
        "--", sys.executable, "-m", "jobs.train", "configs/quickstart.yaml", "--set", f"name={RUN}",
        "--set", "phases.0.type=polychromic_sft", "--set", "phases.0.name=sft", "--set", "phases.0.steps=8",
        "--set", "phases.0.batch_size=8", "--set", "phases.0.prompts_per_step=4", "--set", "phases.0.n_samples=3",
        "--set", "phases.1.steps=4", "--set", "phases.1.prompts_per_step=8", "--set", "phases.1.group_size=4",
        "--set", "task.n_test=8", "--set", "dynamics.every=0", "--set", "eval.n_samples=4", "--set", "eval.ks=[1, 4]",
        "--serve-generation", "--set", f"generation.http_port={gen_port}", "--set", "generation.args.poll_s=0.2",
        "--set", "rollout.store_keep=64", "--output-dir", str(out),  # (every version the watcher saw, kept)
    ]  # fmt: skip
    prompt = build_task(run_config.task).prompts("val", 1)[0].text
    _, tokenizer = build_peft_model(str(model_dir), run_config.learner.lora)
    prompt_ids, completion_ids = tokenizer(prompt)["input_ids"], tokenizer(" 3 + 4 * 2")["input_ids"]
    listed: list[set[str]] = []  # /v1/models' policy versions, poll by poll
    served: dict[str, torch.Tensor] = {}  # version that answered -> its log-probs of the fixed completion
    errors: list[Exception] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_generation,
        daemon=True,
        args=(f"http://127.0.0.1:{gen_port}/generation/v1", prompt_ids, completion_ids, listed, served, errors, stop),
    )
    prometheus = _start_prometheus(tmp_path, temp_dir) if shutil.which("prometheus") else None
    in_prometheus: set[str] = set()
    seen: set[str] = set()  # metric families with a sample tagged run=RUN
    pages: dict[str, str] = {}  # dashboard page -> its text (or "error")
    browser = None
    watcher.start()
    try:
        # `ray start` returns before the head's dashboard agent accepts jobs; until it does, a
        # submission is refused ("No available agent") without creating a job, so it is retried.
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            proc = subprocess.Popen(
                submit, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            while proc.poll() is None:  # scrape while the job runs
                seen |= _scrape(metrics_port)
                if browser is None and "ray_polyray_rollout_adapter_versions" in seen:  # its actors are up
                    browser = threading.Thread(
                        target=_read_dashboard,
                        daemon=True,
                        args=(f"http://127.0.0.1:{dashboard}", env["RAY_AUTH_TOKEN"], pages),
                    )
                    browser.start()  # beside the scraping: a phase's metrics live only as long as its processes
                if prometheus is not None:
                    in_prometheus |= _prometheus_series(prometheus[1])
                time.sleep(0.5)
            output = proc.communicate()[0]
            if NO_AGENT not in output or time.monotonic() > deadline:
                break
            time.sleep(2.0)
        apps = _serve_apps(f"http://127.0.0.1:{dashboard}", env)  # on the cluster, which outlives the job
    finally:
        stop.set()
        watcher.join(timeout=120)
        if prometheus is not None:
            prometheus[0].terminate()
        kill_by_env(MARKER, env[MARKER])  # the vLLM engines of a failed job's replicas with the rest
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 0, output[-4000:]
    assert browser is not None, "the job's actors never showed in the metrics"
    browser.join(timeout=180)
    assert "error" not in pages, pages.get("error")
    assert "succeeded" in output.lower()
    assert "generation" not in apps, apps  # the run's live-policy service ended with the run
    results = json.loads((out / "results.json").read_text())
    assert set(results["phases"]) == {"base", "sft", "grpo"}
    assert (out / "adapters" / "grpo" / "adapter_model.safetensors").is_file()
    suffix = {"gauge": "", "histogram": "_bucket", "counter": "_total"}
    expected = {f"ray_{name}{suffix[kind]}" for name, kind in declared_metrics().items()}
    assert expected <= seen, f"never scraped with run={RUN}: {sorted(expected - seen)}"
    if prometheus is not None:  # a real Prometheus, on the scrape config Ray generated, holds them too
        assert expected <= in_prometheus, f"not in Prometheus: {sorted(expected - in_prometheus)}"
    assert "jobs.train" in pages["jobs"] and "RUNNING" in pages["jobs"].upper(), pages.get("jobs", "")[:2000]
    for actor in ("RolloutWorker", "AdapterStore", "LearnerRank", "ServeReplica"):
        assert actor in pages["actors"], (actor, pages["actors"][:2000])

    # the live policy: /v1/models gained versions while the run trained (each step publishes one)
    assert "generation service: http://127.0.0.1" in output and "generation_service_start" in results["timings_s"]
    sizes = [len(s) for s in listed]
    assert len(listed) >= 3 and sizes == sorted(sizes) and sizes[-1] >= 3, (listed, errors[-1:])
    assert len(served) >= 2, (served.keys(), errors[-1:])
    for name, lps in served.items():
        version = int(name.removeprefix("policy-v"))
        model, _ = build_peft_model(
            str(model_dir), run_config.learner.lora, adapter_dir=str(out / "adapter_store" / f"v{version:06d}")
        )
        model.eval()
        learner = learner_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id).double()
        assert torch.allclose(lps, learner, atol=1e-3), (name, lps, learner)


RUN = "rayjob"


def _watch_generation(
    url: str, prompt_ids, completion_ids, listed: list, served: dict, errors: list, stop: threading.Event
) -> None:
    """Until ``stop``: the policy versions ``/v1/models`` lists, each new set appended to ``listed``; for up to
    3 of them, the log-probs of ``completion_ids`` after ``prompt_ids`` under ``latest``, by the version
    that answered, into ``served``."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)
    while not stop.is_set():
        try:
            versions = {m.id for m in client.models.list().data if m.id.startswith("policy-v")}
            if not listed or versions != listed[-1]:
                listed.append(versions)
                if versions and len(served) < 3:
                    r = client.completions.create(
                        model="latest",
                        prompt=prompt_ids + completion_ids,
                        max_tokens=1,
                        echo=True,
                        logprobs=0,
                        temperature=1.0,
                    )
                    lps = r.choices[0].logprobs.token_logprobs[len(prompt_ids) : len(prompt_ids) + len(completion_ids)]
                    served[r.model] = torch.tensor(lps, dtype=torch.float64)
        except Exception as exc:  # noqa: BLE001 - not up yet, or going down with the run
            errors.append(exc)
        stop.wait(0.2)


def _serve_apps(address: str, env: dict[str, str]) -> dict:
    """The Serve applications on the cluster at ``address`` (``serve status``), by name."""
    import yaml

    status = subprocess.run(
        [str(BIN / "serve"), "status", "--address", address], env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0, status.stderr[-2000:]
    return yaml.safe_load(status.stdout).get("applications") or {}


def _scrape(port: int) -> set[str]:
    """Metric names (as exported) with a sample labelled run=RUN on the node's Prometheus endpoint."""
    import httpx

    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except httpx.HTTPError:
        return set()
    return {line.split("{", 1)[0] for line in text.splitlines() if f'run="{RUN}"' in line and not line.startswith("#")}


ARTIFACTS = ROOT / "test-artifacts"


def _start_prometheus(tmp_path: Path, temp_dir: Path) -> tuple[subprocess.Popen, int]:
    """Prometheus (Debian's package) on the scrape config the head's dashboard generated."""
    config = temp_dir / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"
    deadline = time.monotonic() + 60
    while not config.is_file():
        assert time.monotonic() < deadline, f"the head wrote no {config}"
        time.sleep(0.5)
    # Ray's config scrapes every node in its service-discovery file; a shorter interval suits a short job
    text = re.sub(r"scrape_interval:\s*\S+", "scrape_interval: 2s\n  scrape_timeout: 2s", config.read_text(), count=1)
    (tmp_path / "prometheus.yml").write_text(text)
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def _prometheus_series(port: int) -> set[str]:
    """polyray series names Prometheus holds for the run (its HTTP API)."""
    import httpx

    try:
        r = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/series",
            params={"match[]": f'{{__name__=~"ray_polyray_.+", run="{RUN}"}}'},
            timeout=10,
        )
        return {s["__name__"] for s in r.json().get("data", [])}
    except (httpx.HTTPError, ValueError):
        return set()


def _read_dashboard(url: str, token: str, pages: dict[str, str]) -> None:
    try:
        pages.update(_dashboard_pages(url, token))
    except Exception as exc:  # noqa: BLE001 - reported by the test's thread
        pages["error"] = repr(exc)


def _dashboard_pages(url: str, token: str) -> dict[str, str]:
    """The text of the dashboard's Jobs and Actors pages, read in headless Chromium signed in with the
    cluster's token (Ray's cookie); screenshots in test-artifacts/."""
    from support.browser import chromium
    from playwright.sync_api import sync_playwright

    exe = chromium()
    assert exe, "chromium not found (make test-tools installs it): this test needs a real browser"
    ARTIFACTS.mkdir(exist_ok=True)
    texts = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.add_cookies([{"name": "ray-authentication-token", "value": token, "url": url}])
            page = context.new_page()
            for name, marker in (("jobs", "jobs.train"), ("actors", "RolloutWorker")):
                page.goto(f"{url}/#/{name}", wait_until="domcontentloaded")
                page.get_by_text(marker).first.wait_for(timeout=60_000)
                if name == "actors":  # every actor on one page (10 per page by default)
                    page.locator("input[value='10']").first.fill("100")  # (the locator no longer matches after)
                    page.keyboard.press("Enter")
                    page.get_by_text("AdapterStore").first.wait_for(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / f"ray-dashboard-{name}.png"), full_page=True)
                texts[name] = page.inner_text("body")
        finally:
            browser.close()
    return texts
