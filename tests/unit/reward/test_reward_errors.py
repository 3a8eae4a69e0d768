"""The reward service's refusals: one JSON shape (OpenAI's), the right status, the field named.

The real FastAPI app and the real deployment class, served in-process by Starlette's test client:
only Serve's lookup of the replica instance (``serve.get_replica_context``) is pointed at a
plain instance, so no Ray cluster starts. The same cases over a real Serve app are in
``tests/integration/test_reward_service.py``.
"""

from __future__ import annotations

import os
import textwrap
import time
import types

import pytest
from fastapi.testclient import TestClient

from polyray.http import validation_error
from polyray.reward.api import ApiError, api_error, non_finite_field, not_utf8_field
from polyray.reward.base import RewardError, UnknownRewardError
from polyray.reward.budget import RequestTooCostly
from support.processes import processes_with

SHAPE = {"message", "type", "param", "code"}


@pytest.fixture
def client(monkeypatch):
    from ray import serve

    from polyray.reward import deployment

    # What a request leaves on the module's app and class (the built middleware stack, @serve.batch's
    # queue with its asyncio futures) goes back after the test: Serve pickles the class by value, so a
    # later test that deploys it would fail to serialize them.
    cls = deployment.RewardDeployment.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper
    monkeypatch.setattr(deployment.app, "middleware_stack", None)
    monkeypatch.setattr(cls._score_batched.set_max_batch_size.__self__, "_queue", None)

    def make(**config):
        context = types.SimpleNamespace(_deployment_config=types.SimpleNamespace(max_ongoing_requests=64))
        monkeypatch.setattr(serve, "get_replica_context", lambda: context)  # @serve.batch reads it too
        context.servable_object = cls(config)
        return TestClient(deployment.app, raise_server_exceptions=False)

    return make


def post(client, body: bytes):
    return client.post("/v1/rewards", content=body, headers={"content-type": "application/json"})


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and set(response.json()["error"]) == SHAPE, response.text
    return response.json()["error"]


COUNTDOWN = b'{"prompt": "nums 3 4 9 target 12\\nexpr:", "completion": " 3+9"'


@pytest.mark.parametrize(
    "body,status,param,needle",
    [
        (b'{"reward": "countdown", "items": [', 400, None, "malformed JSON"),
        (b'{"reward": "countdown", "items": [{"prompt": "p"}]}', 400, "items.0.completion", "Field required"),
        (b'{"reward": "countdown", "items": [], "bogus": 1}', 400, "bogus", "bogus"),
        (b'{"reward": "nope", "items": []}', 404, "reward", "known: code_exec"),
        (b'{"reward": "length", "items": [], "params": {"min_length": -1}}', 400, None, "min_length"),
        (
            b'{"reward": "countdown", "items": [' + COUNTDOWN + b', "metadata": {"a": [1, NaN]}}]}',
            400,
            "items.0.metadata.a.1",
            "NaN",
        ),
        (
            b'{"reward": "countdown", "items": ['
            + COUNTDOWN
            + b"}, "
            + COUNTDOWN
            + b', "metadata": {"t": Infinity}}]}',
            400,
            "items.1.metadata.t",
            "Infinity",
        ),
        (b'{"reward": "length", "items": [], "params": {"min_length": -Infinity}}', 400, "params.min_length", "NaN"),
        (b'{"reward": "code_exec", "items": [], "params": {"timeout_s": 100}}', 400, "params.timeout_s", "limit"),
        (
            b'{"reward": "code_exec", "items": [' + b", ".join([COUNTDOWN + b"}"] * 5) + b"]}",
            413,
            "items",
            "sandbox seconds",
        ),
        (b'{"reward": "length", "items": [' + b", ".join([COUNTDOWN + b"}"] * 9) + b"]}", 413, "items", "limit is 8"),
        (b'{"reward": "engagement", "items": [], "params": {"model_path": "/etc"}}', 400, None, "set by the server"),
        # a lone surrogate is valid JSON, and no text a program, a file or a sandbox can hold
        (
            b'{"reward": "countdown", "items": [' + COUNTDOWN + b'}, {"prompt": "p", "completion": "\\ud800"}]}',
            400,
            "items.1.completion",
            "not valid UTF-8",
        ),
        (
            b'{"reward": "code_exec", "items": ['
            + COUNTDOWN
            + b', "metadata": {"test": "x\\udfff", "entry_point": "f"}}]}',
            400,
            "items.0.metadata.test",
            "lone surrogate",
        ),
        (b'{"reward": "length", "items": [], "params": {"\\ud800": 1}}', 400, "params.\\ud800", "not valid UTF-8"),
    ],
)
def test_every_refusal_has_one_shape_status_and_field(client, body, status, param, needle):
    http = client(max_items=8, limits={"max_sandbox_s": 10})
    err = error(post(http, body), status)
    assert err["param"] == param and needle in err["message"], err
    assert http.get("/healthz").json()["status"] == "ok"


def test_unknown_routes_and_methods_share_the_shape(client):
    http = client()
    assert error(http.get("/v1/nothing"), 404)["type"] == "NotFoundError"
    error(http.put("/v1/rewards"), 405)


def test_a_good_request_still_scores(client):
    r = post(client(), b'{"reward": "countdown", "items": [' + COUNTDOWN + b"}]}")
    assert r.status_code == 200 and r.json()["scores"] == [1.0], r.text


@pytest.mark.slow
def test_a_request_past_max_request_s_gets_504_and_its_sandbox_is_killed(client):
    """A candidate that sleeps: at the deadline the caller gets 504 and the sandbox is gone (~2 s)."""
    from polyray.tasks.humaneval import humaneval_problems

    marker = f"polyray-504-{os.getpid()}"
    problem = humaneval_problems()["HumanEval/0"]
    body = textwrap.indent(
        textwrap.dedent(f"""
        import os, sys, time
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}])
        time.sleep(600)
    """),
        "    ",
    )
    http = client(limits={"max_request_s": 1.5}, rewards={"code_exec": {"timeout_s": 60}})
    item = {"prompt": problem["prompt"], "completion": body, "metadata": {"task_id": "HumanEval/0"}}
    response = http.post("/v1/rewards", json={"reward": "code_exec", "items": [item]})
    err = error(response, 504)
    assert err["code"] == "timeout" and "1.5 s" in err["message"]
    deadline = time.monotonic() + 3  # the worker thread sees the cancel within its next poll (0.1 s)
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with(marker), "the timed-out request's sandbox is still running"


def test_error_pieces():
    assert api_error(UnknownRewardError("unknown reward 'x'")).status == 404
    assert api_error(RewardError("bad")).status == 400
    capped = api_error(RequestTooCostly(400, "params.timeout_s", "too long"))
    assert (capped.status, capped.param, capped.code) == (400, "params.timeout_s", "over_limit")
    assert api_error(RequestTooCostly(413, "items", "too much")).code == "over_budget"
    assert ApiError(504, "late").response().status_code == 504
    assert (
        validation_error(
            [{"type": "json_invalid", "loc": ("body", 3), "msg": "x", "ctx": {"error": "bad"}}]
        ).status_code
        == 400
    )
    assert non_finite_field({"a": [1.0, {"b": float("nan")}]}, "m") == "m.a.1.b"
    assert non_finite_field({"a": [1.0, "inf", 10**400]}, "m") is None
    assert not_utf8_field({"a": ["ok", {"b": "x\ud800"}]}, "m") == "m.a.1.b"
    assert not_utf8_field({"a": ["ok", "\U0001f600 é"]}, "m") is None  # a pair of surrogates in JSON is one emoji


def test_one_bad_item_is_that_items_alone(client):
    """An entry_point that is no identifier (it passed the type check and raised inside the sandbox's harness,
    failing every request merged into its batch) is its item's error: the item beside it is judged."""
    from polyray.tasks.humaneval import humaneval_problems

    problem = humaneval_problems()["HumanEval/53"]  # add(x, y)
    good = {
        "prompt": problem["prompt"],
        "completion": "    return x + y\n",
        "metadata": {"test": problem["test"], "entry_point": problem["entry_point"]},
    }
    bad = {**good, "metadata": {**good["metadata"], "entry_point": "add()"}}
    r = client().post("/v1/rewards", json={"reward": "code_exec", "items": [bad, good]})
    assert r.status_code == 200, r.text
    assert r.json()["scores"] == [0.0, 1.0]
    detail = r.json()["details"][0]
    assert detail["status"] == "error" and "not a Python identifier" in detail["reason"], detail


def test_healthz_says_which_limits_apply(client):
    from polyray.sandbox.cgroups import cgroup_v1_roots, cgroup_v2_status

    health = client().get("/healthz").json()
    v1 = cgroup_v1_roots()
    expected = (
        "cgroup v1 (memory, pids) + rlimits"
        if isinstance(v1, dict)
        else f"rlimits (cgroup v1: {v1}; cgroup v2 {cgroup_v2_status()})"
    )
    assert health["sandbox_limits"] == expected, health


def test_healthz_and_serves_health_check_fail_while_the_replica_cannot_score(client, monkeypatch):
    """A replica whose sandbox cannot start a program, or whose worker threads are all stuck, says so:
    /healthz is 503 with the reason and Serve's health check raises it (Serve then restarts the replica)."""
    import asyncio

    from polyray import sandbox
    from polyray.reward import deployment
    from polyray.tasks.humaneval import humaneval_problems

    http = client()
    replica = deployment.serve.get_replica_context().servable_object
    replica.probe_every_s = 0.0  # a fresh verdict on every call
    assert http.get("/healthz").status_code == 200 and asyncio.run(replica.check_health()) is None
    problem = humaneval_problems()["HumanEval/53"]
    item = {
        "prompt": problem["prompt"],
        "completion": "    return x + y\n",
        "metadata": {"test": problem["test"], "entry_point": problem["entry_point"]},
    }
    assert http.post("/v1/rewards", json={"reward": "code_exec", "items": [item]}).json()["scores"] == [1.0]

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as disk:
        disk.setattr(sandbox, "_make_workdir", full_disk)  # the sandbox can start no program now
        r = http.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable", r.text
        assert "the sandbox cannot run a program" in r.json()["reason"] and "No space left" in r.json()["reason"]
        with pytest.raises(RuntimeError, match="reward replica cannot score: the sandbox cannot run a program"):
            asyncio.run(replica.check_health())
    assert http.get("/healthz").status_code == 200  # the disk has room again: healthy again

    replica.health_probe_s = 0.5
    monkeypatch.setattr(replica.scorer, "score", lambda *a, **k: time.sleep(2))  # a scoring call stuck past the probe
    r = http.get("/healthz")
    assert r.status_code == 503 and "did not finish within 0.5 s" in r.json()["reason"], r.text


def test_cgroup_v2_status_reads_the_hosts_delegation(tmp_path):
    from polyray.sandbox.cgroups import cgroup_v2_status

    mountinfo, membership, fs = tmp_path / "mountinfo", tmp_path / "cgroup", tmp_path / "fs"
    (fs / "svc").mkdir(parents=True)
    membership.write_text("4:memory:/x\n0::/svc\n")
    mountinfo.write_text(f"30 1 0:26 / {tmp_path}/v1 rw - cgroup cgroup rw,memory\n")
    assert "no cgroup2" in cgroup_v2_status(str(mountinfo), str(membership))
    mountinfo.write_text(mountinfo.read_text() + f"41 31 0:38 / {fs} rw,relatime - cgroup2 cgroup2 rw\n")
    (fs / "svc" / "cgroup.controllers").write_text("hugetlb pids\n")
    assert "memory controller(s) are not delegated" in cgroup_v2_status(str(mountinfo), str(membership))
    (fs / "svc" / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroup_v2_status(str(mountinfo), str(membership)) == f"available ({fs}/svc)"


def test_only_healthz_itself_skips_the_reward_services_key(client, monkeypatch):
    """The reward app's own middleware: /healthz answers without the key, a path merely ending in
    /healthz does not, and GET /v1/rewards shows no server-only value to a caller with the key."""
    monkeypatch.setenv("POLYRAY_TEST_REWARD_KEY", "sk-reward")
    judge = {"base_url": "http://judge.internal/v1", "model": "judge-7b", "api_key_env": "POLYRAY_TEST_REWARD_KEY"}
    from polyray.reward import deployment

    http = client(api_key_env="POLYRAY_TEST_REWARD_KEY", rewards={"llm_judge": judge})
    # under this fixture the replica's __init__ does not reach this module's app.state: set the key it reads
    monkeypatch.setattr(deployment.app.state, "api_key", "sk-reward")
    assert http.get("/healthz").status_code == 200
    for path in ("/v1/rewards/healthz", "/v1/healthz", "/x/healthz", "/healthz/", "/healthzz"):
        assert error(http.get(path), 401)["code"] == "invalid_api_key", path
    assert http.get("/v1/rewards").status_code == 401
    listing = http.get("/v1/rewards", headers={"authorization": "Bearer sk-reward"})
    assert listing.status_code == 200
    for value in ("judge.internal", "judge-7b", "POLYRAY_TEST_REWARD_KEY", "sk-reward"):
        assert value not in listing.text, value
