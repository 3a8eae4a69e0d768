"""``polyray run --serve-generation``: while a GRPO phase trains, an OpenAI client sees ``/v1/models``
gain versions, and the endpoint's log-probs of a fixed completion under ``latest`` equal the
learner's for the version that answered (its adapter, as published to the store, on the base model
in peft, float32) within 1e-3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from phase_harness import learner_logprobs

from polyray.http import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-3
# enough steps that versions keep coming while the test polls: a step takes ~0.2 s on 2 cores
GRPO = "[{type: grpo, steps: 32, prompts_per_step: 4, group_size: 4, lr: 3.0e-3, kl_beta: 0.02, checkpoint_every: 8}]"


def test_live_policy_served_during_training(tmp_path, model_dir, run_config):
    from openai import APIConnectionError, NotFoundError, OpenAI

    from polyray.learner.lora import build_peft_model
    from polyray.tasks import build_task

    out, port = tmp_path / "run", free_port()
    cmd = [sys.executable, "-m", "polyray.cli", "run", str(ROOT / "configs" / "quickstart.yaml"), "--output-dir", str(out),
           "--serve-generation", "--set", f"generation.http_port={port}", "--set", "generation.args.poll_s=0.2",
           "--set", f"phases={GRPO}", "--set", "task.n_test=4", "--set", "eval.n_samples=2", "--set", "eval.ks=[1, 2]",
           "--set", "dynamics.every=0", "--set", "rollout.store_keep=64"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/generation/v1", api_key="none", max_retries=0, timeout=60)

    prompt = build_task(run_config.task).prompts("val", 1)[0].text
    _, tokenizer = build_peft_model(str(model_dir), run_config.learner.lora)
    prompt_ids, completion_ids = tokenizer(prompt)["input_ids"], tokenizer(" 3 + 4 * 2")["input_ids"]
    seen: list[set[str]] = []  # /v1/models' policy versions, poll by poll
    served: dict[str, torch.Tensor] = {}  # version that answered -> its log-probs of the fixed completion
    deadline, last_error = time.time() + 900, None
    while proc.poll() is None and time.time() < deadline:
        try:
            versions = {m.id for m in client.models.list().data if m.id.startswith("policy-v")}
        except Exception as exc:  # not up yet, or going down with the run
            last_error = exc
            time.sleep(0.5)
            continue
        if not seen or versions != seen[-1]:
            seen.append(versions)
            if versions and len(served) < 3:
                try:
                    r = client.completions.create(model="latest", prompt=prompt_ids + completion_ids, max_tokens=1,
                                                  echo=True, logprobs=0, temperature=1.0)  # fmt: skip
                except (APIConnectionError, NotFoundError) as exc:  # the run ended, and its service with it
                    last_error = exc
                    continue
                lps = r.choices[0].logprobs.token_logprobs[len(prompt_ids) : len(prompt_ids) + len(completion_ids)]
                served[r.model] = torch.tensor(lps, dtype=torch.float64)
        time.sleep(0.2)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, output[-4000:]
    assert "generation service: http://127.0.0.1" in output

    # /v1/models gained versions while the run trained (GRPO publishes one per step)
    sizes = [len(s) for s in seen]
    assert len(seen) >= 3 and sizes == sorted(sizes) and sizes[-1] >= 3, (seen, repr(last_error))
    assert len(served) >= 2, served.keys()
    for name, lps in served.items():
        version = int(name.removeprefix("policy-v"))
        adapter = out / "adapter_store" / f"v{version:06d}"
        model, _ = build_peft_model(str(model_dir), run_config.learner.lora, adapter_dir=str(adapter))
        model.eval()
        learner = learner_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id).double()
        assert torch.allclose(lps, learner, atol=TOL), (name, lps, learner)
    results = json.loads((out / "results.json").read_text())
    assert "grpo" in results["phases"] and "generation_service_start" in results["timings_s"]
