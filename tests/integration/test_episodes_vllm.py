"""Multi-turn episodes on the real vLLM engine: each turn is sampled after exactly the ids of the turns
before it, and the learner, reading an episode's history as one sequence, gives its model tokens the
log-probs the engine sampled them with (the canary's rule), observations between them and all."""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import learner_logprobs, random_lora_policy

from polyray.config import SamplingConfig
from polyray.config.envs import CountdownRetryEnvConfig
from polyray.envs import env_factory
from polyray.learner.sync import TOLERANCE
from polyray.rollout.episodes import DONE, MAX_TURNS, plain_observations, pool_turn_generator, run_episodes

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]


def test_episodes_hold_what_vllm_sampled_and_the_learner_scores_it_alike(pool, model_dir, run_config):
    from polyray.learner.lora import extract_adapter
    from polyray.tasks import build_task

    model, tokenizer = random_lora_policy(model_dir, run_config.learner.lora, seed=3)
    version = pool.newest_version() + 1
    pool.publish(version, extract_adapter(model))
    task = build_task(run_config.task)
    prompts = task.prompts("val", 4)
    config = CountdownRetryEnvConfig(max_turns=3, max_tokens=12)
    sampled: list[tuple[list[list[int]], list]] = []
    engine = pool_turn_generator(pool, SamplingConfig(temperature=1.0), version)

    def generate(histories, seeds, max_tokens):
        samples = engine(histories, seeds, max_tokens)
        sampled.append(([list(h) for h in histories], samples))
        return samples

    groups = run_episodes(
        prompts,
        2,
        make_env=env_factory(config, task),
        limits=config,
        generate=generate,
        encode_prompt=lambda text: tokenizer(text)["input_ids"],
        encode_observation=plain_observations(tokenizer),
        seeds=[11, 12, 13, 14],
    )
    episodes = [e for group in groups for e in group]
    assert all(e.error is None and e.end in (DONE, MAX_TURNS) for e in episodes), [e.error for e in episodes]
    assert max(len(e.turns) for e in episodes) >= 2, "no episode retried: nothing multi-turn was checked"

    # every turn was sampled after its episode's history so far, and went into it as sampled
    calls = {(tuple(h), tuple(s.token_ids)) for histories, samples in sampled for h, s in zip(histories, samples)}
    for e in episodes:
        for turn in e.turns:
            assert (tuple(e.token_ids[: turn.start]), tuple(turn.sample.token_ids)) in calls
            assert e.token_ids[turn.start : turn.start + len(turn.sample.token_ids)] == turn.sample.token_ids
            assert turn.sample.version == version

    # the learner on the whole history: the model tokens' log-probs are the sampling ones
    worst = 0.0
    for e in episodes:
        prompt_ids, completion_ids, mask = e.completion()
        learner = learner_logprobs(model, prompt_ids, completion_ids, tokenizer.pad_token_id)
        model_tokens = torch.tensor(mask, dtype=torch.bool)
        engine_logprobs = torch.tensor(e.logprobs[e.prompt_len :])[model_tokens]
        worst = max(worst, (learner[model_tokens] - engine_logprobs).abs().max().item())
    assert worst < TOLERANCE[run_config.model.dtype], worst
