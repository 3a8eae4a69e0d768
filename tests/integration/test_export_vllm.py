"""A merged ``polyray export`` loads in vLLM as a plain model and is the adapter on the base.

vLLM runs in a spawned child process with the rollout workers' environment (thread caps, KV cache
size, set before torch loads), as the rollout benchmark's bare engine does.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from support.export_harness import PROMPTS, greedy_and_logprobs, make_run

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_NEW_TOKENS = 12


def _vllm_greedy(model_dir: str, prompts: list[str], engine: dict) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy token ids and prompt-token log-probs from a bare ``vllm.LLM`` on ``model_dir``."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, **engine)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS, prompt_logprobs=0)
    outs = llm.generate(prompts, params, use_tqdm=False)
    tokens = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[next(iter(d.values())).logprob for d in o.prompt_logprobs[1:]] for o in outs]
    return tokens, logprobs


def test_merged_export_in_vllm_matches_the_adapter_on_the_base(tmp_path, run_config, model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polyray.models.export import export_run
    from polyray.rollout.worker import engine_kwargs, rollout_env

    run = make_run(tmp_path, run_config, model_dir)
    merged = export_run(run, tmp_path / "merged", merge=True)

    kwargs = engine_kwargs(str(merged), run_config.rollout, "float32")
    engine = {
        k: kwargs[k]
        for k in ("dtype", "max_model_len", "max_num_seqs", "max_num_batched_tokens", "seed", "enforce_eager")
    }
    saved = dict(os.environ)
    os.environ.update(rollout_env(run_config.rollout))  # the child inherits the environment it is spawned with
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            got_tokens, got_lp = child.submit(_vllm_greedy, str(merged), PROMPTS, engine).result()
    finally:
        os.environ.clear()
        os.environ.update(saved)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run / "adapters" / "grpo")
    want_tokens, want_lp = greedy_and_logprobs(reference.eval(), tokenizer, PROMPTS, MAX_NEW_TOKENS)
    assert got_tokens == want_tokens
    for got, want in zip(got_lp, want_lp):
        assert torch.allclose(torch.tensor(got), want, atol=1e-3), (torch.tensor(got) - want).abs().max()
