"""Training on multi-turn episodes: the loss, the KL and their token counts see the model's turns only.

A GRPO step and a polychromic SFT step on episodes (polyray.rollout.episodes, on a stand-in engine that
samples token ids): the gradient does not move when what the batch holds at the observation tokens'
positions for the engine's log-probs changes (a loss that reached an environment token would read it),
and the token count a token mean divides by is the model's tokens."""

from __future__ import annotations

import random

import pytest
import torch

import polyray.envs
import polyray.rollout.episodes as episodes_module
from support.phase_harness import build_policy, lora_grads, make_phase, tiny_model_dir

from polyray.config.envs import CountdownRetryEnvConfig
from polyray.config.phases import GRPOPhaseConfig, PolychromicSFTPhaseConfig
from polyray.envs import Environment, Step
from polyray.rollout.worker import Sample


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("episode-training"))


class TokenPool:
    """A stand-in engine for token-id prompts: 1-4 random ids per turn from the request's seed, each at
    log-prob -1.5; it keeps every history it was sent."""

    def __init__(self, tokenizer):
        self.tokenizer, self.histories = tokenizer, []

    def generate(self, request):
        groups = []
        for i, (prompt, seed) in enumerate(zip(request.prompts, request.seeds)):
            rng = random.Random(seed)
            ids = [rng.randrange(3, len(self.tokenizer)) for _ in range(rng.randint(1, 4))]
            self.histories.append(prompt["prompt_token_ids"])
            text = self.tokenizer.decode(ids)
            groups.append([Sample(i, text, prompt["prompt_token_ids"], ids, [-1.5] * len(ids), request.version, True)])
        return groups


class Graded(Environment):
    """Two turns; the reward a fixed function of the answer's length, so groups carry advantages."""

    def reset(self, prompt):
        return prompt.text

    def step(self, model_text):
        self.turn = getattr(self, "turn", 0) + 1
        reward = (len(model_text) % 4) / 3
        return Step(None if self.turn == 2 else "\nagain:", reward, done=self.turn == 2)


ENV = CountdownRetryEnvConfig(max_turns=2, max_tokens=4, max_total_tokens=120)
CASES = {
    "grpo": GRPOPhaseConfig(steps=1, prompts_per_step=3, group_size=3, kl_beta=0.1, kl_reference="base"),
    "polychromic_sft": PolychromicSFTPhaseConfig(
        steps=1, batch_size=2, prompts_per_step=3, n_samples=3, lam=0.5, diversity="countdown_expr"
    ),
}


def _step(model_dir, monkeypatch, case: str, placeholder: float):
    """One step's LoRA gradients and metrics, the batch holding ``placeholder`` as the engine's log-prob of
    every observation token (and the prompt's stand-in in an episode without turns)."""
    monkeypatch.setitem(polyray.envs.ENVS, "countdown_retry", Graded)
    as_samples = episodes_module.as_samples

    def with_placeholder(groups, max_turns, pad_id, version):
        out = as_samples(groups, max_turns, pad_id, version)
        for s in (s for g in out for s in g):
            s.logprobs = [lp if m else placeholder for lp, m in zip(s.logprobs, s.loss_mask)]
        return out

    monkeypatch.setattr(episodes_module, "as_samples", with_placeholder)
    model, tokenizer = build_policy(model_dir)
    pool = TokenPool(tokenizer)
    phase = make_phase(CASES[case], model, tokenizer, 0, 1, pool, reference_adapter=None, env=ENV)
    metrics = phase.step(0, 1)
    return lora_grads(model), metrics, pool


@pytest.mark.parametrize("case", CASES)
def test_observation_tokens_carry_no_loss(model_dir, monkeypatch, case):
    grads, metrics, pool = _step(model_dir, monkeypatch, case, placeholder=0.0)
    other, _, _ = _step(model_dir, monkeypatch, case, placeholder=-7.0)
    assert any(g.abs().sum() > 0 for g in grads.values())
    # the stand-in engine was sent second turns: there were observation tokens to leave out
    assert any(len(h) > min(map(len, pool.histories)) for h in pool.histories)
    for name in grads:
        assert torch.allclose(grads[name], other[name], rtol=0, atol=1e-7), name
    if case == "grpo":
        # turns used, no failures, the share right after each turn
        assert metrics["turns_mean"] == 2 and metrics["episode_errors"] == 0
        assert {"solved_turn1_frac", "solved_turn2_frac"} <= set(metrics)


def test_a_token_mean_divides_by_the_model_tokens(model_dir, monkeypatch):
    from polyray.learner.batch import TrainBatch

    _, metrics, pool = _step(model_dir, monkeypatch, "grpo", placeholder=0.0)
    batch = TrainBatch(
        prompt_ids=[[1, 2], [1, 2]],
        completion_ids=[[5, 6, 7, 8], [9]],
        sample_logprobs=[[-1.0, 0.0, 0.0, -2.0], [-3.0]],
        advantages=torch.zeros(2, dtype=torch.float64),
        group_size=2,
        loss_masks=[[1, 0, 0, 1], [1]],
    )
    assert batch.num_tokens() == 3 and batch.sequence_logprobs() == [-3.0, -3.0]
    # (N, width) as the learner's target-aligned mask: completion token j of sequence i at len(prompt) - 1 + j
    full = torch.ones(2, 5)
    assert batch.masked(full, targets=True).tolist() == [[0, 1, 0, 0, 1], [0, 1, 0, 0, 0]]
    assert batch.masked(full, targets=False).tolist() == [[1, 0, 0, 1, 0], [1, 0, 0, 0, 0]]
    assert batch.select([1]).loss_masks == [[1]]
    # the step's completion length: the model's tokens per episode, each turn 1-4 of them
    assert 2 <= metrics["completion_len"] <= 8


class SelfPool(TokenPool):
    """The learner's own model as the engine: each turn sampled by ``generate`` with the drawn tokens'
    log-probs, so at lag 0 the learner's log-probs of the model's turns are the engine's."""

    def __init__(self, model, tokenizer):
        super().__init__(tokenizer)
        self.model = model

    @torch.no_grad()
    def generate(self, request):
        groups = []
        for i, (prompt, seed) in enumerate(zip(request.prompts, request.seeds)):
            history = prompt["prompt_token_ids"]
            self.histories.append(history)
            torch.manual_seed(seed)
            out = self.model.generate(
                input_ids=torch.tensor([history]),
                attention_mask=torch.ones(1, len(history), dtype=torch.long),
                do_sample=True,
                top_k=0,
                max_new_tokens=request.sampling.max_tokens,
                min_new_tokens=2,
                return_dict_in_generate=True,
                output_scores=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=None,
            )
            ids = out.sequences[0, len(history) :].tolist()
            steps = torch.stack(out.scores, dim=1).float().log_softmax(-1)[0]
            logprobs = [float(steps[t, tok]) for t, tok in enumerate(ids)]
            groups.append([Sample(i, self.tokenizer.decode(ids), history, ids, logprobs, request.version, True)])
        return groups


@pytest.mark.parametrize(("case", "ratio"), [("grpo", "ratio_mean"), ("polychromic_sft", "weight_mean")])
def test_at_lag_zero_every_episodes_ratio_is_one(model_dir, monkeypatch, case, ratio):
    """Sampled by the learner itself, an episode's importance ratio (the learner's log-probs of its model
    turns against the engine's) is 1: one that counted an observation token's log-prob would not be."""
    monkeypatch.setitem(polyray.envs.ENVS, "countdown_retry", Graded)
    model, tokenizer = build_policy(model_dir)
    pool = SelfPool(model, tokenizer)
    phase = make_phase(CASES[case], model, tokenizer, 0, 1, pool, reference_adapter=None, env=ENV)
    metrics = phase.step(0, 1)
    assert any(len(h) > min(map(len, pool.histories)) for h in pool.histories)  # second turns were sampled
    assert metrics[ratio] == pytest.approx(1.0, abs=1e-4), metrics


def test_estimators_read_the_model_tokens_log_probs_and_a_group_may_not_share_a_prompt():
    from polyray.learner.batch import TrainBatch
    from polyray.learner.phases.grpo import model_logprobs

    episode = Sample(0, "", [1], [5, 6, 7], [-1.0, 0.0, -3.0], 1, True, loss_mask=[1, 0, 1])
    assert model_logprobs(episode) == [-1.0, -3.0]  # the observation's placeholder left out
    assert model_logprobs(Sample(0, "", [1], [2], [0.0], 1, True, loss_mask=[0])) == [0.0]
    assert model_logprobs(Sample(0, "", [1], [5, 6], [-1.0, -2.0], 1, True)) == [-1.0, -2.0]
    batch = TrainBatch(
        prompt_ids=[[1, 2], [1, 2], [1, 3], [1, 3]],
        completion_ids=[[5], [6], [7], [8]],
        sample_logprobs=[[-1.0]] * 4,
        advantages=torch.zeros(4, dtype=torch.float64),
        group_size=2,
    )
    assert batch.groups_share_prompts()
    batch.prompt_ids[3] = [1, 4]  # a custom environment that opened one episode differently
    assert not batch.groups_share_prompts()


def test_a_custom_environment_that_cannot_load_stops_the_run_before_it_starts(tmp_path):
    from polyray.config import load_config
    from polyray.drivers.preflight import check_inputs
    from polyray.io import ConfigError

    (tmp_path / "broken.py").write_text("raise ImportError('no sandbox here')\n")
    run = load_config("configs/multiturn.yaml", ["env.type=custom", f"env.environment={tmp_path}/broken.py:Env"])
    with pytest.raises(ConfigError, match=r"broken.py:Env.*importing it raised ImportError: no sandbox here"):
        check_inputs(run)
