"""The generation service on a local Ray cluster, through the official ``openai`` client and raw HTTP.

One Serve application per module over the embedded model, with an adapter store holding a random
LoRA as ``policy-v1`` and a saved adapter named ``run/sft``, an API key from a secret file and
small limits. The endpoint's log-probs under a version are checked against the learner's (peft,
float32) for the same weights.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from support.phase_harness import learner_logprobs, random_lora_policy

from polyray.http import free_port

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

KEY = "sk-polyray-test"
MAX_N, MAX_TOKENS, MAX_PROMPT = 4, 32, 96
TOL = 1e-3  # as the rollout sync test: float32 kernels differ only in summation order
FUZZ_EXAMPLES = 25


@pytest.fixture(scope="module")
def store_and_policies(ray_cluster, model_dir, run_config, tmp_path_factory):
    from polyray.learner.lora import extract_adapter, save_adapter
    from polyray.rollout.store import open_store

    root = tmp_path_factory.mktemp("gen-run") / "adapter_store"
    store = open_store(root, keep=8)
    import ray

    policy, tokenizer = random_lora_policy(model_dir, run_config.learner.lora, seed=11)
    ray.get(store.put.remote(1, extract_adapter(policy), "grpo", 1))
    named, _ = random_lora_policy(model_dir, run_config.learner.lora, seed=12)
    named_dir = save_adapter(named, tmp_path_factory.mktemp("named") / "sft")
    return store, root, {1: policy, "run/sft": named}, tokenizer, named_dir


@pytest.fixture(scope="module")
def service(store_and_policies, model_dir, tmp_path_factory):
    from ray import serve

    from services.generation_app import build_app

    _, root, _, _, named_dir = store_and_policies
    key_file = tmp_path_factory.mktemp("secret") / "key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "model_dir": str(model_dir),
        "store_root": str(root),
        "adapters": {"run/sft": str(named_dir)},
        "api_key_file": str(key_file),
        "max_n": MAX_N,
        "max_tokens": MAX_TOKENS,
        "max_prompt_tokens": MAX_PROMPT,
        "num_cpus": 0.5,
        "poll_s": 0.2,
        "keep_versions": 2,
        "max_num_seqs": 16,
    }
    serve.run(build_app(args), name="generation", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("generation")
    serve.shutdown()


@pytest.fixture(scope="module")
def client(service):
    from openai import OpenAI

    return OpenAI(base_url=f"{service}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(service):
    import httpx

    with httpx.Client(base_url=service, timeout=120.0, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def _prompt(run_config) -> str:
    from polyray.tasks import build_task

    return build_task(run_config.task).prompts("val", 1)[0].text


def assert_healthy(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    r = http.post("/v1/completions", json={"model": "base", "prompt": "nums 3 4", "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_models_lists_base_latest_versions_and_named(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:3] == ["base", "latest", "policy-v1"] and "run/sft" in ids
    assert client.models.retrieve("policy-v1").id == "policy-v1"


def test_completions_n_logprobs_usage(client, run_config):
    r = client.completions.create(
        model="base", prompt=_prompt(run_config), n=3, max_tokens=8, logprobs=1, seed=7, temperature=1.0
    )
    assert len(r.choices) == 3 and r.model == "base"
    tokens = [len(c.logprobs.tokens) for c in r.choices]
    assert r.usage.completion_tokens == sum(tokens) and all(1 <= t <= 8 for t in tokens)
    for c in r.choices:
        assert len(c.logprobs.token_logprobs) == len(c.logprobs.tokens)
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
        assert all(len(top) >= 1 for top in c.logprobs.top_logprobs)


def test_seed_reproduces_and_varies(client, run_config):
    def texts(seed):
        r = client.completions.create(
            model="policy-v1", prompt=_prompt(run_config), n=4, max_tokens=12, seed=seed, temperature=1.0
        )
        return [c.text for c in r.choices]

    first = texts(5)
    assert texts(5) == first
    assert texts(6) != first


def test_stream_matches_and_ends_with_usage(client, run_config):
    args = {"model": "policy-v1", "prompt": _prompt(run_config), "max_tokens": 10, "seed": 3, "temperature": 1.0}
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert {c.model for c in chunks} == {"policy-v1"}


def test_chat_with_named_adapter_and_latest(client):
    messages = [{"role": "user", "content": "nums 2 5 9 target 16"}]
    r = client.chat.completions.create(model="run/sft", messages=messages, n=2, max_tokens=6, seed=1)
    assert r.model == "run/sft" and len(r.choices) == 2 and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens > 0
    r = client.chat.completions.create(model="latest", messages=messages, max_tokens=6, logprobs=True, top_logprobs=2)
    assert r.model == "policy-v1"  # the version that answered
    assert r.choices[0].logprobs.content and len(r.choices[0].logprobs.content[0].top_logprobs) == 2


@pytest.mark.parametrize("model", [1, "run/sft"])
def test_endpoint_logprobs_equal_the_learners(client, store_and_policies, run_config, model):
    """Prompt log-probs of a fixed completion (echo) under an adapter = the peft model's, within 1e-3."""
    _, _, policies, tokenizer, _ = store_and_policies
    prompt_ids = tokenizer(_prompt(run_config))["input_ids"]
    completion_ids = tokenizer(" 3 + 4 * 2")["input_ids"]
    name = f"policy-v{model}" if isinstance(model, int) else model
    r = client.completions.create(
        model=name, prompt=prompt_ids + completion_ids, max_tokens=1, echo=True, logprobs=0, temperature=1.0
    )
    served = torch.tensor(r.choices[0].logprobs.token_logprobs[len(prompt_ids) : len(prompt_ids) + len(completion_ids)])
    learner = learner_logprobs(policies[model], prompt_ids, completion_ids, tokenizer.pad_token_id)
    assert torch.allclose(served.double(), learner.double(), atol=TOL), (served, learner)


def test_publish_moves_latest(client, store_and_policies, model_dir, run_config):
    import ray

    from polyray.learner.lora import extract_adapter

    store = store_and_policies[0]
    newest = max(int(m.id.removeprefix("policy-v")) for m in client.models.list().data if m.id.startswith("policy-v"))
    policy, _ = random_lora_policy(model_dir, run_config.learner.lora, seed=20 + newest)
    t0 = time.time()
    ray.get(store.put.remote(newest + 1, extract_adapter(policy), "grpo", newest + 1))
    deadline = time.time() + 30
    while f"policy-v{newest + 1}" not in [m.id for m in client.models.list().data]:
        assert time.time() < deadline, "the published version never appeared"
        time.sleep(0.05)
    r = client.completions.create(model="latest", prompt="nums 1 2", max_tokens=2)
    assert r.model == f"policy-v{newest + 1}"
    print(f"\npublish -> latest serving it: {time.time() - t0:.2f} s")
    r = client.completions.create(model="policy-v1", prompt="nums 1 2", max_tokens=2)  # older: pulled again if evicted
    assert r.model == "policy-v1"


@pytest.mark.parametrize(
    ("headers", "body", "status", "param"),
    [
        ({"Authorization": ""}, {"model": "base", "prompt": "x"}, 401, None),
        ({"Authorization": "Bearer wrong"}, {"model": "base", "prompt": "x"}, 401, None),
        ({}, {"model": "nope", "prompt": "x"}, 404, "model"),
        ({}, {"model": "policy-v999", "prompt": "x"}, 404, "model"),
        ({}, {"model": "base", "prompt": "x", "n": "many"}, 400, "n"),
        ({}, {"model": "base"}, 400, "prompt"),
        ({}, {"model": "base", "prompt": "x", "n": MAX_N + 1}, 400, "n"),
        ({}, {"model": "base", "prompt": "x", "max_tokens": MAX_TOKENS + 1}, 400, "max_tokens"),
        ({}, {"model": "base", "prompt": "3 " * (MAX_PROMPT + 5)}, 400, "prompt"),
        (
            {},
            {"model": "base", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 99},
            400,
            "max_completion_tokens",
        ),
    ],
)
def test_bad_requests_get_openai_errors(http, headers, body, status, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = http.post(path, json=body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] and (param is None or error["param"] == param), error
    assert_healthy(http)


def test_malformed_json_and_unknown_route(http):
    r = http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = http.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    assert_healthy(http)


def test_a_large_chat_body_never_blocks_the_replicas_event_loop(service, http):
    """Templating and tokenising run off the replica's event loop: polyray's token count in a worker thread
    (the tokenizer releases the GIL), and vLLM's renderer in its own pool, for prompts that passed that
    count only. While a 1.8 MB chat body is tokenised (seconds on 2 cores) and refused for its length,
    ``/healthz`` keeps answering: a loop blocked for as long fails Serve's health checks."""
    import threading

    import httpx

    line = "nums 3 4 9 target 12 expr: 3+9 " * 6
    messages = [{"role": ("user", "assistant")[i % 2], "content": line} for i in range(8000)]
    lags: list[float] = []
    done = threading.Event()

    def ping():
        with httpx.Client(base_url=service, timeout=60) as c:
            while not done.is_set():
                sent = time.monotonic()
                assert c.get("/healthz").status_code == 200
                lags.append(time.monotonic() - sent)
                time.sleep(0.05)

    pinger = threading.Thread(target=ping)
    pinger.start()
    try:
        time.sleep(0.3)
        start = time.monotonic()
        r = http.post("/v1/chat/completions", json={"model": "base", "messages": messages, "max_tokens": 4})
        took = time.monotonic() - start
    finally:
        done.set()
        pinger.join()
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert "tokens" in r.json()["error"]["message"]
    assert took > 1.0, took  # the body cost seconds of work, or this would check nothing
    # relative, so it holds beside other tests: a blocked loop holds a ping for about the body's whole time
    assert len(lags) >= 5 and max(lags) < took / 2, (max(lags), took)


def test_fuzz_never_5xx(service, http):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{service}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    tried: dict[str, int] = {}
    server_errors: list[str] = []
    for result, mode in [(r, m) for r in schema.get_all_operations() for m in GenerationMode]:
        operation = result.ok()
        if mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET":
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=service, timeout=60, headers={"Authorization": f"Bearer {KEY}"})
            key = f"{operation.label} ({mode.value})"
            tried[key] = tried.get(key, 0) + 1
            if response.status_code >= 500:
                server_errors.append(
                    f"{operation.label} {json.dumps(case.body)[:300]} -> {response.status_code}: {response.text[:300]}"
                )

        check()
    print(f"\nfuzzed {sum(tried.values())} requests {tried}; 5xx: {len(server_errors)}")
    assert tried and server_errors == [], server_errors[:5]
    assert_healthy(http)


# ------------------------------------------------------------------------------ LLM judge
# The embedded model is the judge: its verdicts are noise; what is checked is the plumbing (chat
# through the service, both orders, re-asks of malformed replies, the reward and the task metric).
# Its context is 128 tokens: short questions, one criterion.
# The tiny judge's context is 128 tokens: a pointwise question with its two tagged pieces fits (~92), a
# pairwise one with four does not, so pairwise is checked against a local endpoint (tests/unit/test_judge.py).
SHORT = {
    "pointwise_prompt": "{prompt}{response}{example}",
    "criteria": ["quality"],
    "scale": 5,
    "system_prompt": "Data.",
}


def _judge_config(service, **extra) -> dict:
    return {
        "base_url": f"{service}/v1",
        "model": "base",
        "api_key_env": "POLYRAY_TEST_JUDGE_KEY",
        "max_tokens": 24,
        "retries": 1,
        **SHORT,
        **extra,
    }


def test_llm_judge_reward_through_the_service(service, monkeypatch):
    from polyray.reward import RewardItem, build_reward

    monkeypatch.setenv("POLYRAY_TEST_JUDGE_KEY", KEY)
    items = [RewardItem(prompt="hi", completion=c, reference="it is") for c in ("yes", "no")]
    free = build_reward("llm_judge", **_judge_config(service), unparseable_score=-1.0, debug=True).score_batch(items)
    for result in free:  # a tiny model rarely writes valid ratings: re-asked, then unparseable_score
        if result.score == -1.0:
            assert result.detail["error"] == "no parseable ratings" and len(result.detail["replies"]) == 2, (
                result.detail
            )
        else:
            assert 0.0 <= result.score <= 1.0 and set(result.detail["ratings"]) == {"quality"}
    # with the schema sent as response_format, vLLM's structured outputs make every reply parse
    schema_bound = build_reward("llm_judge", **_judge_config(service, structured=True)).score_batch(items)
    for result in schema_bound:
        assert result.detail.get("attempts") == 1 and 0.0 <= result.score <= 1.0, result.detail
    # a question longer than the judge's context is that item's refusal (no score), not an outage of the run
    (long,) = build_reward("llm_judge", **_judge_config(service)).score_batch(
        [RewardItem(prompt="hi " * 40, completion="yes")]
    )
    assert long.score is None and "refused the question (HTTP 400)" in long.detail["error"], long.detail


def test_llm_judge_as_a_task_quality(service, monkeypatch, tmp_path):
    from polyray.config.tasks import JsonlTaskConfig
    from polyray.tasks import build_task

    monkeypatch.setenv("POLYRAY_TEST_JUDGE_KEY", KEY)
    data = tmp_path / "short.jsonl"  # short posts: the judge's question must fit the tiny model's context
    data.write_text(
        "".join(json.dumps({"prompt": f"d{i}", "response": "nice", "engagement": i % 5}) + "\n" for i in range(40))
    )
    task = build_task(
        JsonlTaskConfig(
            type="replies",
            path=str(data),
            quality="llm_judge",
            judge=_judge_config(service, structured=True),
            success_threshold=0.5,
        )
    )
    prompts = task.prompts("test", 2)
    judged = task.judge_groups(prompts, [["ok", "no"], ["yes"]])
    assert [len(g) for g in judged] == [2, 1]
    for j in (j for g in judged for j in g):
        assert 0.0 <= j.reward <= 1.0 and j.metrics["llm_judge"] == j.reward and "rougeL" in j.metrics


# Qwen3's convention, on the embedded model's minimal template: thinking off writes an empty think block
THINKING_TEMPLATE = (
    "{%- for message in messages -%}{{ message['role'] }}: {{ message['content'] }}\n{% endfor -%}"
    "{%- if add_generation_prompt -%}assistant: "
    "{%- if enable_thinking is defined and enable_thinking is false %} <think></think>{% endif %} {% endif -%}"
)


def test_chat_requests_get_the_services_template_arguments(service, model_dir, run_config, tmp_path):
    """A Qwen3 policy trained with thinking off answers chat with thinking off: the service renders every
    chat request with its ``chat_template_kwargs`` (a run passes its ``model.chat_template_kwargs``), a
    request's own winning; what a request sends there cannot break the service."""
    import httpx
    from openai import OpenAI
    from ray import serve

    from polyray.generation.service import run_generation_args
    from services.generation_app import build_app

    qwen = run_generation_args(
        run_config.model_copy(
            update={"model": run_config.model.model_copy(update={"chat_template_kwargs": {"enable_thinking": False}})}
        ),
        tmp_path,
        model_dir,
        named=False,
    )
    assert qwen["chat_template_kwargs"] == {"enable_thinking": False}
    template = tmp_path / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    args = {"model_dir": str(model_dir), "chat_template": str(template), "num_cpus": 0.5, "max_num_seqs": 4}
    args["chat_template_kwargs"] = qwen["chat_template_kwargs"]
    serve.run(build_app(args), name="thinking", route_prefix="/thinking")
    try:
        client = OpenAI(base_url=f"{service}/thinking/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "nums 2 5 9 target 16"}]

        def prompt_tokens(**extra) -> int:
            r = client.chat.completions.create(model="base", messages=messages, max_tokens=2, extra_body=extra)
            return r.usage.prompt_tokens

        default, off, on = (
            prompt_tokens(),
            prompt_tokens(chat_template_kwargs={"enable_thinking": False}),
            prompt_tokens(chat_template_kwargs={"enable_thinking": True}),
        )
        assert default == off > on, (default, off, on)  # the service's default is thinking off
        hostile_kwargs = ["not a mapping", {"tokenize": True, "add_generation_prompt": False}, {"": 1}]
        hostile_kwargs += [{"messages": []}, {"raise_exception": 1}, {"range": None}]
        for hostile in hostile_kwargs:
            r = httpx.post(
                f"{service}/thinking/v1/chat/completions",
                json={"model": "base", "messages": messages, "max_tokens": 2, "chat_template_kwargs": hostile},
                timeout=120,
            )
            assert r.status_code in (200, 400), (hostile, r.status_code, r.text)
    finally:
        serve.delete("thinking")
