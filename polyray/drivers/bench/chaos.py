"""Load and chaos on loopback: each service under a fixed load, then the same load with its replica SIGKILLed.

- :func:`run_load`: ``clients`` concurrent HTTP clients (asyncio + one pooled ``httpx`` client), each
  sending the same request again as soon as the last one ended, for ``seconds``; every request's start,
  end and status (-1: no HTTP answer, the connection failed or timed out) is kept. Optionally a
  ``kill`` runs ``kill_at`` seconds in; the load then goes on until the service answered a request
  started after the kill (or ``max_recovery_s`` passed), and at least ``seconds``.
- :func:`summarize`: requests/s, p50/p99 latency of the answered (200) requests, counts by status,
  back-pressure (503, 429: the service shedding load, what a client should retry) apart from errors
  (everything else that is not 200), and the recovery time: from the kill to the first 200 of a request
  started after it. With a kill, the errors outside its window too: those of requests that ended before
  the kill, and of requests sent after the service answered again (a killed replica may fail the requests
  it was serving and those sent while it was down, and nothing else).
- :func:`kill_replica`: SIGKILLs the Serve replica process of an application in the Ray cluster this
  process started (found among its descendants by the process title Ray gives an actor,
  ``ray::ServeReplica:<app>:<deployment>``; never a process of another cluster), remembering every process
  below it and the scratch directories it owned; :func:`leftovers` then lists what outlived it (an
  engine core, a sandbox) and what it left on disk (polyray.lifetime's per-process directories).
- :func:`retrying_calls`: the learner's own reward path (:func:`~polyray.reward.client.score_via_handle`
  with its retries) called in a loop beside the load, checking every answer: a request it lost is one
  that raised after its retries or came back wrong.
- :func:`bench_chaos`: ``polyray bench chaos``, each service under load then killed, on a Ray cluster of its own.

The client shares the machine with the service, so at many clients on few cores the figures include
the client's own CPU use. Only loopback: the services are started on 127.0.0.1 by the caller.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from typing import Any, Callable

import numpy as np
from rich.markup import escape
from rich.table import Table

from polyray import lifetime
from polyray.drivers.bench.common import console

BACK_PRESSURE = (503, 429)


def replica_pids(app: str) -> list[int]:
    """PIDs of the live Serve replicas of ``app`` in the Ray cluster this process started (its raylet and
    workers are this process's descendants), found by the title Ray gives an actor's process,
    ``ray::<class>``. Only below this process: another cluster on the machine is never touched."""
    needle = f"ServeReplica:{app}:".encode()
    found = []
    for pid in lifetime.descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if needle in f.read() and lifetime.alive(pid):
                    found.append(pid)
        except OSError:
            continue
    return sorted(found)


def kill_replica(app: str, scratch_roots: list[str]) -> dict[str, Any]:
    """SIGKILL one replica of ``app``; what it had running below it and the directories it owned under ``scratch_roots``."""
    pids = replica_pids(app)
    if not pids:
        raise RuntimeError(
            f"no live replica of the Serve application {app!r} below this process (chaos kills"
            " replicas of a Ray cluster it started itself only)"
        )
    pid = pids[0]
    below = sorted(lifetime.descendants(pid))
    owned = [os.path.join(root, lifetime.owner_tag(pid)) for root in scratch_roots]
    processes = [(p, lifetime.start_time(p), _title(p)) for p in below]
    # read before the signal: whatever ended before it ended before the kill
    t = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    return {
        "t": t,
        "pid": pid,
        "processes": [p for p in processes if p[1] is not None],
        "dirs": [d for d in owned if os.path.isdir(d)],
    }


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
    except OSError:
        return ""


def leftovers(killed: dict[str, Any], grace_s: float = 10.0) -> dict[str, list]:
    """What the killed replica left: processes below it still running after ``grace_s``, directories it owned."""
    deadline = time.monotonic() + grace_s
    while True:
        orphans = [[p, title] for p, started, title in killed["processes"] if lifetime.alive(p, started)]
        if not orphans or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return {"orphans": orphans, "leaked_dirs": [d for d in killed["dirs"] if os.path.isdir(d)]}


async def _load(
    base_url: str,
    path: str,
    body: dict[str, Any],
    clients: int,
    seconds: float,
    headers: dict[str, str],
    kill: Callable[[], dict[str, Any]] | None,
    kill_at: float,
    max_recovery_s: float,
    timeout_s: float,
) -> dict[str, Any]:
    import httpx

    # (start, end, status), perf_counter seconds
    outcomes: list[tuple[float, float, int]] = []
    killed: dict[str, Any] = {}
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    start = time.perf_counter()

    def recovered() -> bool:
        return bool(killed) and any(s == 200 and t0 >= killed["t"] for t0, _, s in outcomes)

    async def client(http) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status = (await http.post(path, json=body)).status_code
            except httpx.HTTPError:
                status = -1
            outcomes.append((t0, time.perf_counter(), status))
            if status != 200:
                # a refused request costs nothing: do not spin on it
                await asyncio.sleep(0.05)

    async def clock() -> None:
        if kill is not None:
            await asyncio.sleep(kill_at)
            killed.update(await asyncio.to_thread(kill))
        while True:
            now = time.perf_counter() - start
            if now >= seconds and (kill is None or recovered() or now >= kill_at + max_recovery_s):
                break
            await asyncio.sleep(0.05)
        stop.set()

    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/"), timeout=timeout_s, limits=limits, headers=headers
    ) as http:
        await asyncio.gather(clock(), *(client(http) for _ in range(clients)))
    return {"outcomes": outcomes, "start": start, "end": time.perf_counter(), "killed": killed}


def run_load(
    base_url: str,
    path: str,
    body: dict[str, Any],
    clients: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    kill: Callable[[], dict[str, Any]] | None = None,
    kill_at: float = 0.0,
    max_recovery_s: float = 120.0,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """``clients`` clients posting ``body`` to ``path`` for ``seconds`` (and through a ``kill`` at ``kill_at``)."""
    run = asyncio.run(
        _load(base_url, path, body, clients, seconds, headers or {}, kill, kill_at, max_recovery_s, timeout_s)
    )
    return {
        **summarize(run["outcomes"], run["end"] - run["start"], run["killed"].get("t")),
        "clients": clients,
        "killed": run["killed"],
    }


def summarize(
    outcomes: list[tuple[float, float, int]], elapsed_s: float, t_kill: float | None = None
) -> dict[str, Any]:
    """Throughput, latency of the answered requests, counts by status; recovery from ``t_kill`` when given."""
    statuses = Counter(s for _, _, s in outcomes)
    latencies = np.array([t1 - t0 for t0, t1, s in outcomes if s == 200]) * 1000.0
    out = {
        "seconds": round(elapsed_s, 3),
        "requests": len(outcomes),
        "ok": statuses[200],
        "rps": statuses[200] / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else float("nan"),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "back_pressure": sum(statuses[s] for s in BACK_PRESSURE),
        "errors": sum(v for s, v in statuses.items() if s != 200 and s not in BACK_PRESSURE),
    }
    if t_kill is not None:
        answered = [t1 for t0, t1, s in outcomes if s == 200 and t0 >= t_kill]
        recovered = min(answered) if answered else None
        out["recovery_s"] = recovered - t_kill if answered else None
        failed = [(t0, t1) for t0, t1, s in outcomes if s != 200 and s not in BACK_PRESSURE]
        out["errors_before_kill"] = sum(1 for _, t1 in failed if t1 < t_kill)
        out["errors_after_recovery"] = sum(1 for t0, _ in failed if recovered is not None and t0 > recovered)
    return out


def retrying_calls(score: Callable[[], bool], stop: threading.Event, threads: int = 2) -> Callable[[], dict[str, int]]:
    """Start ``threads`` threads calling ``score`` (True: a right answer) until ``stop``; returns a function
    that joins them and gives calls, lost (raised after its retries or came back wrong) and the errors' types."""
    tally: Counter = Counter()
    lock = threading.Lock()

    def loop() -> None:
        while not stop.is_set():
            try:
                outcome = "ok" if score() else "wrong"
            except Exception as exc:  # noqa: BLE001 - a lost request, counted
                outcome = f"raised {type(exc).__name__}"
            with lock:
                tally[outcome] += 1

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()

    def join() -> dict[str, Any]:
        for w in workers:
            w.join()
        return {
            "calls": sum(tally.values()),
            "lost": sum(v for k, v in tally.items() if k != "ok"),
            "outcomes": dict(tally),
        }

    return join


def bench_chaos(
    services: list[str],
    clients: int,
    seconds: float,
    kill_at: float,
    config: str,
    max_recovery_s: float = 120.0,
    replicas: int = 1,
) -> dict[str, Any]:
    """Each service on loopback with ``replicas`` replicas (one CPU each): ``clients`` clients for ``seconds``,
    then the same load with one replica SIGKILLed ``kill_at`` seconds in (:mod:`.chaos`). The reward service
    also takes the learner's own retrying calls (code_exec items, so sandboxes run when the replica dies)
    during the kill."""
    import ray
    from ray import serve

    from polyray.http import free_port

    results: dict[str, Any] = {"clients": clients, "seconds": seconds, "kill_at": kill_at, "replicas": replicas}
    # a cluster of its own (address="local": never one RAY_ADDRESS names): the replicas it kills are its own
    ray.init(address="local", num_cpus=max(2, replicas), include_dashboard=False, log_to_driver=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        if "reward" in services:
            results["reward"] = _chaos_reward(url, clients, seconds, kill_at, max_recovery_s, replicas)
        if "generation" in services:
            results["generation"] = _chaos_generation(url, clients, seconds, kill_at, max_recovery_s, config, replicas)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


CHAOS_CODE_ITEM = {
    "prompt": "def answer():\n",
    "completion": "    return 42\n",
    "metadata": {
        "test": "import time\n\ndef check(candidate):\n    time.sleep(0.5)\n    assert candidate() == 42\n",
        "entry_point": "answer",
    },
}


def _chaos_reward(
    url: str, clients: int, seconds: float, kill_at: float, max_recovery_s: float, replicas: int = 1
) -> dict[str, Any]:
    import httpx
    from ray import serve

    from polyray.config.reward import RewardConfig
    from polyray.reward.client import get_reward_handle, score_via_handle
    from polyray.reward.deployment import build_reward_app
    from polyray.sandbox import WORK_ROOT

    serve.run(build_reward_app({"num_replicas": replicas}), name="reward", route_prefix="/reward")
    body = {
        "reward": "countdown",
        "items": [
            {"prompt": "nums 3 4 9 target 12\nexpr:", "completion": c}
            for c in (" 3+9", " 4*3", " 9+4-1", " 3*4", " 12", " 9+3", " 4+9-1", " 3+4")
        ],
    }
    base = f"{url}/reward"
    # warm-up
    httpx.post(f"{base}/v1/rewards", json=body, timeout=120).raise_for_status()
    # the learner's own timeout and retries
    learner = RewardConfig()
    handle = get_reward_handle("reward")

    def score() -> bool:
        results = score_via_handle(handle, "code_exec", [CHAOS_CODE_ITEM], None, learner.timeout_s, learner.retries)
        return [r.score for r in results] == [1.0]

    # the HTTP clients, and beside them the learner's calls
    def load(**kill) -> dict[str, Any]:
        stop = threading.Event()
        join = retrying_calls(score, stop)
        try:
            result = run_load(base, "/v1/rewards", body, clients, seconds, max_recovery_s=max_recovery_s, **kill)
        finally:
            stop.set()
            retrying = join()
        return {**result, "retrying": retrying}

    roots = [lifetime.shared_root(WORK_ROOT)]
    out: dict[str, Any] = {}
    with console.status(f"reward: {clients} clients + the learner's calls, {seconds:g} s"):
        out["steady"] = load()
    with console.status(f"reward: {clients} clients + the learner's calls, the replica SIGKILLed at {kill_at:g} s"):
        out["kill"] = load(kill=lambda: kill_replica("reward", roots), kill_at=kill_at)
    out["kill"].update(leftovers(out["kill"]["killed"]))
    serve.delete("reward")
    return out


def _chaos_generation(
    url: str, clients: int, seconds: float, kill_at: float, max_recovery_s: float, config: str, replicas: int = 1
) -> dict[str, Any]:
    import httpx
    from ray import serve

    from polyray.config import load_config
    from polyray.config.services import GenerationServiceConfig
    from polyray.generation.deployment import SCRATCH, build_generation_app
    from polyray.models.source import prepare_model_dir

    run = load_config(config)
    cfg = GenerationServiceConfig(
        model_dir=str(prepare_model_dir(run.model, run.task)),
        num_cpus=1,
        num_replicas=replicas,
        max_model_len=run.rollout.max_model_len,
        max_lora_rank=run.rollout.max_lora_rank,
        max_num_seqs=max(4, clients),
    )
    with console.status("starting the generation service"):
        serve.run(build_generation_app(cfg.model_dump()), name="generation", route_prefix="/generation")
    body = {"model": cfg.base_name, "prompt": "nums 3 4 9 target 12\nexpr:", "max_tokens": 8, "temperature": 1.0}
    base = f"{url}/generation"
    # warm-up
    httpx.post(f"{base}/v1/completions", json=body, timeout=300).raise_for_status()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    roots = [lifetime.shared_root(SCRATCH, shm)]
    out: dict[str, Any] = {}
    with console.status(f"generation: {clients} clients, {seconds:g} s"):
        out["steady"] = run_load(base, "/v1/completions", body, clients, seconds)
    with console.status(f"generation: {clients} clients, the replica SIGKILLed at {kill_at:g} s"):
        out["kill"] = run_load(
            base,
            "/v1/completions",
            body,
            clients,
            seconds,
            kill=lambda: kill_replica("generation", roots),
            kill_at=kill_at,
            max_recovery_s=max_recovery_s,
        )
    out["kill"].update(leftovers(out["kill"]["killed"]))
    serve.delete("generation")
    return out


def print_chaos(results: dict[str, Any]) -> None:
    replicas = results.get("replicas", 1)
    table = Table(
        title=f"services on loopback, {replicas} replica{'s' if replicas > 1 else ''}, {results['clients']} clients,"
        f" {results['seconds']:g} s of load; kill: {'one' if replicas > 1 else 'the'} replica SIGKILLed"
        f" {results['kill_at']:g} s in"
    )
    table.caption = (
        "back-pressure = 503/429 (shed load, retry); errors = any other non-200 (-1: no answer);"
        " recovery = kill -> first 200 of a request sent after it; retry lost = the learner's retrying"
        " reward calls that failed or came back wrong"
    )
    for col in (
        "service",
        "run",
        "requests",
        "ok",
        "req/s",
        "p50 ms",
        "p99 ms",
        "back-pressure",
        "errors",
        "recovery s",
        "retry lost",
        "orphans",
        "leaked dirs",
    ):
        table.add_column(col, justify="left" if col in ("service", "run") else "right")
    for service in ("reward", "generation"):
        for name in ("steady", "kill"):
            r = results.get(service, {}).get(name)
            if r is None:
                continue
            retry = r.get("retrying")
            recovery = r.get("recovery_s")
            table.add_row(
                service,
                name,
                str(r["requests"]),
                str(r["ok"]),
                f"{r['rps']:.1f}",
                f"{r['p50_ms']:.0f}",
                f"{r['p99_ms']:.0f}",
                str(r["back_pressure"]),
                str(r["errors"]),
                "–" if name == "steady" else ("never" if recovery is None else f"{recovery:.2f}"),
                f"{retry['lost']} of {retry['calls']}" if retry else "–",
                str(len(r["orphans"])) if "orphans" in r else "–",
                str(len(r["leaked_dirs"])) if "leaked_dirs" in r else "–",
            )
    console.print(table)
    _print_kill_aftermath(results)


def _print_kill_aftermath(results: dict[str, Any]) -> None:
    """Each kill run's processes and directories that outlived the replica, and its requests that failed
    outside the outage."""
    for service in ("reward", "generation"):
        r = results.get(service, {}).get("kill", {})
        for pid, title in r.get("orphans", []):
            console.print(f"[red]{service}: process {pid} outlived its replica: {escape(title)}[/red]")
        for path in r.get("leaked_dirs", []):
            console.print(f"[red]{service}: {escape(path)} outlived its replica[/red]")
        outside = {
            "before the kill": r.get("errors_before_kill", 0),
            "after it answered again": r.get("errors_after_recovery", 0),
        }
        for when, count in outside.items():
            if count:
                console.print(f"[red]{service}: {count} request(s) failed {when}[/red]")
