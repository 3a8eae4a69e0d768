"""The reward service on a local Ray cluster: scores, batching, errors, overload, handle.

One Serve application per module (``build_app`` with small limits so the 413/503 paths
are cheap to reach) on a free loopback port; every error case also checks that
``/healthz`` still answers 200 afterwards.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from polyray.http import free_port
from polyray.sandbox import detect_isolation
from polyray.sandbox.cgroups import limits_report

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
MAX_ITEMS = 50
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def engagement_model(tmp_path_factory):
    from polyray.reward.engagement import train_engagement_model

    out = tmp_path_factory.mktemp("engagement")
    train_engagement_model(ROOT / "tests" / "fixtures" / "engagement.jsonl", out, seed=0)
    return out


# A user's reward file, written outside the repository: a graded score of the completion and its metadata.
USER_REWARD = """
import math

def score(prompts, completions, references, metadata):
    return [math.tanh(len(c.split()) / 4) + 0.5 * m.get("bonus", 0) - 0.25 * (r is None)
            for c, r, m in zip(completions, references, metadata)]

def where(prompts, completions, **kwargs):
    return [float(__name__.startswith("_polyray_fn_"))] * len(completions)  # 1: the copy shipped to a replica
"""


@pytest.fixture(scope="module")
def user_rewards(tmp_path_factory):
    """(file named in rewards.custom, file named only in ``functions`` and deleted once deployed)."""
    folder = tmp_path_factory.mktemp("user_rewards")
    (folder / "my_rewards.py").write_text(USER_REWARD)
    (folder / "other_rewards.py").write_text(USER_REWARD)
    return folder / "my_rewards.py", folder / "other_rewards.py"


@pytest.fixture(scope="module")
def service(engagement_model, user_rewards):
    import ray
    from ray import serve

    from services.reward_app import build_app

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "num_cpus": 0.5,
        "max_items": MAX_ITEMS,
        "max_body_bytes": MAX_BODY,
        "max_batch_size": 32,
        "batch_wait_timeout_s": 0.05,
        "slow_down_s": 0.05,  # each batch takes a moment, so concurrent requests pile up into the next one
        "rewards": {"engagement": {"model_path": str(engagement_model)},
                    "custom": {"function": f"{user_rewards[0]}:score"}},
        "functions": [f"{user_rewards[1]}:where"],
    }  # fmt: skip
    serve.run(build_app(args), name="reward", route_prefix="/")
    user_rewards[1].unlink()  # its replica reads the copy Ray shipped (as on another node), not this file
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    if started_ray:
        ray.shutdown()


@pytest.fixture(scope="module")
def http(service):
    import httpx

    with httpx.Client(base_url=service, timeout=60.0) as client:
        yield client


def countdown_item(numbers, target, completion):
    return {"prompt": f"nums {' '.join(map(str, numbers))} target {target}\nexpr:", "completion": completion}


def assert_healthy(http):
    assert http.get("/healthz").status_code == 200


def test_scores_come_back_in_order(http):
    items = [
        countdown_item([3, 4, 9], 12, " 3*4"),
        countdown_item([3, 4, 9], 12, " 9+4"),
        {"prompt": "x", "completion": " 2+5", "metadata": {"numbers": [2, 5], "target": 7}},
        countdown_item([1, 2, 3], 6, " 1+2+3"),
        countdown_item([1, 2, 3], 6, " nonsense"),
    ]
    r = http.post("/v1/rewards", json={"reward": "countdown", "items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scores"] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert len(body["details"]) == 5 and body["details"][1]["reason"].startswith("evaluates to")


def test_engagement_and_per_request_params(http):
    post = "Won my first rated chess tournament game today."
    items = [
        {"prompt": post, "completion": "What a great achievement! Any tips for someone new to chess?"},
        {"prompt": post, "completion": "Honestly, who asked?"},
    ]
    good, rude = http.post("/v1/rewards", json={"reward": "engagement", "items": items}).json()["scores"]
    assert good > rude
    r = http.post("/v1/rewards", json={"reward": "engagement", "items": items, "params": {"model_path": "/etc"}})
    assert r.status_code == 400 and "set by the server" in r.json()["error"]["message"]
    r = http.post(
        "/v1/rewards",
        json={
            "reward": "length",
            "items": [{"prompt": "", "completion": "a b c"}],
            "params": {"min_length": 1, "max_length": 3},
        },
    )
    assert r.json()["scores"] == [1.0]
    assert_healthy(http)


def test_concurrent_requests_are_batched(http):
    def one(i):
        items = [countdown_item([i % 9 + 1, 2, 3], (i % 9 + 1) * 2, f" {i % 9 + 1}*2")]
        r = http.post("/v1/rewards", json={"reward": "countdown", "items": items})
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(one, range(32)))
    assert all(b["scores"] == [1.0] for b in bodies)
    merged = [b["details"][0]["batch_requests"] for b in bodies]
    assert max(merged) > 1, merged
    assert max(b["details"][0]["batch_size"] for b in bodies) > 1


@pytest.mark.parametrize(
    "content,status,needle",
    [
        (b'{"reward": "countdown", "items": [', 400, "malformed JSON"),
        (b'{"reward": "countdown"}', 400, "items"),
        (b'{"items": []}', 400, "reward"),
        (b'{"reward": "countdown", "items": [{"prompt": "p"}]}', 400, "items.0.completion"),
        (b'{"reward": "countdown", "items": [{"prompt": 3, "completion": "x"}]}', 400, "items.0.prompt"),
        (b'{"reward": ["countdown"], "items": []}', 400, "reward"),
        (b'{"reward": "countdown", "items": [], "bogus": 1}', 400, "bogus"),
        (b'{"reward": "nope", "items": []}', 404, "known: code_exec, countdown"),
        (b'{"reward": "length", "items": [], "params": {"min_length": -1}}', 400, "min_length"),
        (
            b'{"reward": "countdown", "items": [{"prompt": "p", "completion": "c", "metadata": {"t": NaN}}]}',
            400,
            "items.0.metadata.t",
        ),
    ],
)
def test_bad_requests_get_4xx_with_a_message(http, content, status, needle):
    r = http.post("/v1/rewards", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text
    assert needle in r.json()["error"]["message"], r.text
    assert_healthy(http)


def test_oversized_requests_get_413(http):
    big = {"reward": "length", "items": [{"prompt": "p", "completion": "x" * (MAX_BODY + 10)}]}
    r = http.post("/v1/rewards", json=big)
    assert r.status_code == 413 and str(MAX_BODY) in r.text
    chunks = iter([b'{"reward": "length", "items": [{"prompt": "', b"x" * MAX_BODY, b'", "completion": "y"}]}'])
    r = http.post("/v1/rewards", content=chunks, headers={"content-type": "application/json"})  # chunked, no length
    assert r.status_code == 413
    many = {"reward": "length", "items": [{"prompt": "", "completion": "a"}] * (MAX_ITEMS + 1)}
    r = http.post("/v1/rewards", json=many)
    assert r.status_code == 413 and str(MAX_ITEMS) in r.text
    assert_healthy(http)


def test_listing_health_and_openapi(http):
    listing = {r["name"]: r for r in http.get("/v1/rewards").json()["rewards"]}
    assert {"countdown", "code_exec", "engagement", "length"} <= set(listing)
    assert listing["length"]["params"]["max_length"]["default"] == 60
    assert listing["engagement"]["server_only_params"] == ["model_path"]
    health = {"status": "ok", "sandbox": detect_isolation(), "sandbox_limits": limits_report()}  # the mode code runs in
    assert http.get("/healthz").json() == health
    spec = http.get("/openapi.json").json()
    assert "/v1/rewards" in spec["paths"] and "post" in spec["paths"]["/v1/rewards"]
    assert "RewardRequest" in json.dumps(spec["components"])


def test_code_exec_over_http(http):
    items = [
        {
            "prompt": "def inc(x):\n",
            "completion": "    return x + 1\n",
            "metadata": {"test": "def check(f):\n    assert f(1) == 2\n", "entry_point": "inc"},
        },
        {
            "prompt": "def inc(x):\n",
            "completion": "    import os\n    os.kill(os.getppid(), 9)\n",
            "metadata": {"test": "def check(f):\n    assert f(1) == 2\n", "entry_point": "inc"},
        },
    ]
    body = http.post("/v1/rewards", json={"reward": "code_exec", "items": items}).json()
    assert body["scores"] == [1.0, 0.0]
    assert body["details"][0]["isolation"] in ("uid+namespaces", "userns", "rlimits")
    assert_healthy(http)


def test_a_hostile_flood_leaves_every_other_caller_served(http, service):
    """48 concurrent requests of hostile code_exec items: completions and tests holding a lone
    UTF-16 surrogate (valid JSON), an ``entry_point`` that is an expression, a test that raises. Each is
    refused at the edge (400 naming the field) or fails its own item only; beside the flood, another
    client's honest requests are all scored right; afterwards countdown and code_exec answer in normal
    time and the replica is healthy. (Before, each surrogate item leaked two sandbox uids until the pool
    ran dry and every later request hung, and one bad entry_point failed every request batched with it.)"""
    import time

    import httpx

    test = {"test": "def check(f):\n    assert f(1) == 2\n", "entry_point": "inc"}
    honest = {"prompt": "def inc(x):\n", "completion": "    return x + 1\n", "metadata": test}
    hostile = [
        {**honest, "completion": "    return '\ud800'\n"},  # a lone surrogate: no UTF-8 text
        {**honest, "metadata": {**test, "test": "# \udfff\n" + test["test"]}},
        {**honest, "metadata": {**test, "entry_point": "inc()"}},  # an expression, not a name
        {**honest, "metadata": {**test, "test": "raise SystemExit(3)\n"}},
    ]
    surrogates = [
        {"reward": "code_exec", "items": [hostile[(i + j) % 4] for j in range(7)] + [honest]} for i in range(4)
    ]
    mixed = {"reward": "code_exec", "items": [hostile[2], hostile[3], honest, hostile[2]]}  # past the edge
    bodies = [surrogates[i % 4] if i % 3 else mixed for i in range(48)]

    def flood(body):  # JSON with \uXXXX escapes, as a client sends a lone surrogate (httpx's json= cannot)
        with httpx.Client(base_url=service, timeout=120) as c:
            return c.post("/v1/rewards", content=json.dumps(body), headers={"content-type": "application/json"})

    def honest_caller(stop):
        scores = []
        with httpx.Client(base_url=service, timeout=120) as c:
            while not stop.is_set():
                r = c.post("/v1/rewards", json={"reward": "code_exec", "items": [honest]})
                scores.append((r.status_code, r.json().get("scores")))
        return scores

    stop = threading.Event()
    with ThreadPoolExecutor(9) as pool:
        other = pool.submit(honest_caller, stop)
        try:
            answers = list(pool.map(flood, bodies))
        finally:
            stop.set()
        served = other.result()
    for body, r in zip(bodies, answers):
        if body is mixed:  # the expression entry_point and the raising test fail alone; the honest item passes
            assert r.status_code == 200 and r.json()["scores"] == [0.0, 0.0, 1.0, 0.0], r.text
            assert r.json()["details"][0]["status"] == "error" and "identifier" in r.json()["details"][0]["reason"]
        else:  # refused at the edge, naming the field
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_text", r.text
            assert r.json()["error"]["param"].startswith("items."), r.text
    assert served and all(s == (200, [1.0]) for s in served), served  # the other caller: every request scored

    started = time.monotonic()
    r = http.post("/v1/rewards", json={"reward": "countdown", "items": [countdown_item([3, 4, 9], 12, " 3*4")]})
    assert r.json()["scores"] == [1.0] and time.monotonic() - started < 5.0
    started = time.monotonic()
    assert http.post("/v1/rewards", json={"reward": "code_exec", "items": [honest]}).json()["scores"] == [1.0]
    assert time.monotonic() - started < 15.0
    assert_healthy(http)


def test_score_via_handle(service):
    from polyray.reward.client import get_reward_handle, score_via_handle

    handle = get_reward_handle()
    results = score_via_handle(
        handle, "countdown", [countdown_item([2, 3], 6, " 2*3"), countdown_item([2, 3], 6, " 2+3")], timeout_s=60
    )
    assert [r.score for r in results] == [1.0, 0.0]
    # trusted in-cluster callers may set server-only parameters
    results = score_via_handle(
        handle,
        "code_exec",
        [{"prompt": "", "completion": "", "metadata": {"task_id": "HumanEval/0"}}],
        params={"max_workers": 1},
        timeout_s=60,
    )
    assert results[0].score == 0.0 and results[0].detail["status"] == "failed"


CUSTOM_ITEMS = [
    {"prompt": "p", "completion": "one two three", "reference": "x"},
    {"prompt": "p", "completion": "", "metadata": {"bonus": 1}},
    {"prompt": "q", "completion": "a b c d e f g h", "reference": "y", "metadata": {"bonus": -2}},
]


def test_a_users_reward_scores_the_same_in_process_and_over_http(http, user_rewards):
    from polyray.reward.scorer import RewardScorer

    local = [r.score for r in RewardScorer().score("custom", CUSTOM_ITEMS, {"function": f"{user_rewards[0]}:score"})]
    r = http.post("/v1/rewards", json={"reward": "custom", "items": CUSTOM_ITEMS})
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == local and len(set(local)) == 3
    # an HTTP caller cannot make the server import code of its choosing
    r = http.post("/v1/rewards", json={"reward": "custom", "items": CUSTOM_ITEMS, "params": {"function": "os:getcwd"}})
    assert r.status_code == 400 and "set by the server" in r.json()["error"]["message"]


def test_a_users_reward_reaches_the_replica_through_the_runtime_env(service, user_rewards):
    from polyray.reward.client import get_reward_handle, score_via_handle

    assert not user_rewards[1].exists()  # deleted after deploying: only the shipped copy is left
    results = score_via_handle(
        get_reward_handle(), "custom", CUSTOM_ITEMS, {"function": f"{user_rewards[1]}:where"}, timeout_s=60
    )
    assert [r.score for r in results] == [1.0, 1.0, 1.0]


def test_http_client_helper(service):
    from polyray.reward.client import RewardClient, RewardServiceError

    with RewardClient(service) as client:
        assert client.healthy()
        assert [r.score for r in client.score("countdown", [countdown_item([5, 6], 11, " 5+6")])] == [1.0]
        with pytest.raises(RewardServiceError) as info:
            client.score("nope", [])
        assert info.value.status == 404 and "countdown" in info.value.message


def test_api_key(service, tmp_path):
    """A second app with a key from a secret file: 401 in OpenAI's shape without it, /healthz open."""
    import httpx
    from ray import serve

    from polyray.reward.client import RewardClient, RewardServiceError
    from services.reward_app import build_app

    (tmp_path / "key").write_text("sk-reward\n")
    serve.run(
        build_app({"num_cpus": 0.25, "api_key_file": str(tmp_path / "key")}), name="secured", route_prefix="/secured"
    )
    try:
        item = [countdown_item([5, 6], 11, " 5+6")]
        r = httpx.post(f"{service}/secured/v1/rewards", json={"reward": "countdown", "items": item}, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{service}/secured/healthz").status_code == 200
        with RewardClient(f"{service}/secured", api_key="wrong") as client, pytest.raises(RewardServiceError) as info:
            client.score("countdown", item)
        assert info.value.status == 401 and "invalid API key" in info.value.message
        with RewardClient(f"{service}/secured", api_key="sk-reward") as client:
            assert [r.score for r in client.score("countdown", item)] == [1.0]
    finally:
        serve.delete("secured")


def test_overload_returns_503(service):
    """A second app with one slot and a queue of one: a burst must be partly refused with 503."""
    import httpx
    from ray import serve

    from services.reward_app import build_app

    args = {
        "num_cpus": 0.25,
        "max_ongoing_requests": 1,
        "max_queued_requests": 1,
        "max_batch_size": 1,
        "slow_down_s": 1.0,
    }
    serve.run(build_app(args), name="slow", route_prefix="/slow")
    try:
        body = {"reward": "length", "items": [{"prompt": "", "completion": "a b c d e"}]}
        barrier = threading.Barrier(8)

        def one(_):
            barrier.wait()
            return httpx.post(f"{service}/slow/v1/rewards", json=body, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(8)))
        assert 503 in statuses and 200 in statuses, statuses
        assert set(statuses) <= {200, 503}
        assert httpx.get(f"{service}/healthz").status_code == 200
    finally:
        serve.delete("slow")


# ---------------------------------------------------------------------------- fuzzing
# Property-based requests generated from the service's own OpenAPI schema, sent over loopback only.
# Bounded: FUZZ_EXAMPLES cases per operation, no deadline per case. The only check is that the
# service never answers 5xx (a 413/422/400/404 is the service working as documented).
FUZZ_EXAMPLES = 60


@pytest.fixture(scope="module")
def reward_schema(service):
    import schemathesis

    return schemathesis.openapi.from_url(f"{service}/openapi.json")


def test_fuzz_never_5xx(reward_schema, service):
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    tried: dict[str, int] = {}
    server_errors: list[str] = []
    for result, mode in [(r, m) for r in reward_schema.get_all_operations() for m in GenerationMode]:
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue  # the GET endpoints take no input to violate

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=service, timeout=30)
            key = f"{operation.label} ({mode.value})"
            tried[key] = tried.get(key, 0) + 1
            if response.status_code >= 500:
                server_errors.append(f"{operation.label} -> {response.status_code}: {response.text[:200]}")

        check()
    print(f"\nfuzzed {sum(tried.values())} requests {tried}; 5xx: {len(server_errors)}")
    assert tried and server_errors == []


def test_service_healthy_after_fuzzing(http):
    health = {"status": "ok", "sandbox": detect_isolation(), "sandbox_limits": limits_report()}  # the mode code runs in
    assert http.get("/healthz").json() == health
    r = http.post(
        "/v1/rewards",
        json={"reward": "countdown", "items": [{"prompt": "nums 3 4 9 target 12\nexpr:", "completion": " 3+9"}]},
    )
    assert r.status_code == 200 and r.json()["scores"] == [1.0]


# ---------------------------------------------------------------------------- the learner's own app
# Last in the module: it replaces the module's app with the ones a run deploys, on the same Serve and port.
SLOW_CODE_ITEM = {
    "prompt": "def answer():\n",
    "completion": "    return 42\n",
    "metadata": {
        "test": "import time\n\ndef check(candidate):\n    time.sleep(3)\n    assert candidate() == 42\n",
        "entry_point": "answer",
    },
}


@pytest.mark.serial  # compares wall times under load
def test_http_callers_never_hold_the_learners_scoring(service, capsys):
    """A run with http_port: slow code_exec requests fill the public app's replica (one batch at a time),
    a countdown request over HTTP queues behind them, while the learner's scoring call comes back at once."""
    import time

    import httpx
    from ray import serve
    from ray.serve.context import _get_global_client

    from polyray.config import RewardConfig, load_config
    from polyray.reward.service import build_reward_fn, ensure_reward_service
    from polyray.tasks import build_task

    serve.delete("reward")  # the module's app, so the run deploys its own under the default name
    cfg = RewardConfig(endpoint=True, http_port=int(service.rsplit(":", 1)[1]), num_cpus=0.25, retries=0, timeout_s=60)
    ensure_reward_service(cfg)  # serve.run returns once each app is ready
    task = build_task(load_config(ROOT / "configs" / "quickstart.yaml").task)
    prompts = task.prompts("train", 2)
    texts = [[p.reference, " nonsense"] for p in prompts]
    expected = build_reward_fn(RewardConfig(), task)(prompts, texts)  # in-process, the same reward
    learner = build_reward_fn(cfg, task)
    assert learner(prompts, texts).tolist() == expected.tolist() == [[1.0, 0.0], [1.0, 0.0]]  # warm
    probe = {"reward": "countdown", "items": [task.reward_item(prompts[0], prompts[0].reference)]}
    assert httpx.post(f"{service}/v1/rewards", json=probe, timeout=60).json()["scores"] == [1.0]  # warm

    flood = {"reward": "code_exec", "items": [SLOW_CODE_ITEM] * 4}  # 4 sandboxes x 3 s per request, 4 at once
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(httpx.post, f"{service}/v1/rewards", json=flood, timeout=120) for _ in range(3)]
        time.sleep(1.0)  # the flood's first batch is running
        waited = pool.submit(lambda: (time.monotonic(), httpx.post(f"{service}/v1/rewards", json=probe, timeout=120)))
        start = time.monotonic()
        scores = learner(prompts, texts)  # retries=0: back-pressure or a timeout would raise
        learner_s = time.monotonic() - start
        sent, answer = waited.result()
        http_s = time.monotonic() - sent
        assert all(f.result().json()["scores"] == [1.0] * 4 for f in slow)  # the flood was real work
    assert scores.tolist() == expected.tolist()
    assert answer.json()["scores"] == [1.0]
    with capsys.disabled():
        print(f"\nunder the HTTP flood: learner's call {learner_s:.2f} s, an HTTP countdown request {http_s:.2f} s")
    assert http_s > 4.0, http_s  # the public app was saturated: HTTP queued behind the slow batches
    assert learner_s < 2.0, learner_s  # the learner's app did not see them
    apps = _get_global_client().get_serve_details()["applications"]
    assert apps["reward"]["route_prefix"] == "/" and apps["reward-learner"].get("route_prefix") is None

    # a public app deployed by serve.run (its args unknown) alone: the learner's own app comes back, with a warning
    serve.delete("reward-learner")
    capsys.readouterr()
    ensure_reward_service(cfg)
    warning = capsys.readouterr().err
    assert "reward.app_name" in warning and "'reward-learner'" in warning, warning
    assert set(serve.status().applications) == {"reward", "reward-learner"}
    assert learner(prompts, texts).tolist() == expected.tolist()


def test_beside_an_operators_deployed_app_the_learner_scores_with_its_config(service, user_rewards, tmp_path, capsys):
    """A public app deployed from a Serve config (as ``serve deploy`` does): the run's learner app copies
    that config's args (here: the operator's custom reward, which the run's own args do not name) without
    its API key and replica count, and scores through them on replicas of its own."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from polyray.config import RewardConfig
    from polyray.reward.client import get_reward_handle, score_via_handle
    from polyray.reward.service import ensure_reward_service

    for name in ("reward", "reward-learner"):  # what earlier tests left
        if name in serve.status().applications:
            serve.delete(name)
    key_file = tmp_path / "key"
    key_file.write_text("operator-secret\n")
    operator_args = {
        "num_replicas": 2,
        "num_cpus": 0.25,
        "api_key_file": str(key_file),
        "max_items": MAX_ITEMS,
        "rewards": {"custom": {"function": f"{user_rewards[0]}:score"}},
    }
    config = ServeDeploySchema.model_validate(
        {
            "applications": [
                {
                    "name": "reward",
                    "route_prefix": "/",
                    "import_path": "services.reward_app:build_app",
                    "args": operator_args,
                }
            ]
        }
    )
    client = _get_global_client()
    client.deploy_apps(config, _blocking=True)
    capsys.readouterr()
    ensure_reward_service(RewardConfig(endpoint=True, num_cpus=0.25, retries=0, timeout_s=60))
    assert "reward.app_name" not in capsys.readouterr().err  # copied: no fallback warning

    apps = client.get_serve_details()["applications"]
    assert apps["reward-learner"].get("route_prefix") is None

    def replicas(app):
        return [d["target_num_replicas"] for d in apps[app]["deployments"].values()]

    assert replicas("reward") == [2] and replicas("reward-learner") == [1]  # not the operator's replica count
    items = [
        {"prompt": "p", "completion": "one two three", "metadata": {"bonus": 1}},
        {"prompt": "p", "completion": "a", "reference": "b"},
    ]
    results = score_via_handle(get_reward_handle("reward-learner"), "custom", items, {}, timeout_s=60, retries=0)
    import math

    assert [r.score for r in results] == pytest.approx([math.tanh(3 / 4) + 0.5 - 0.25, math.tanh(1 / 4)])
    import httpx  # the public app kept the operator's key

    assert httpx.post(f"{service}/v1/rewards", json={"reward": "custom", "items": items}).status_code == 401
    serve.delete("reward")
    serve.delete("reward-learner")
