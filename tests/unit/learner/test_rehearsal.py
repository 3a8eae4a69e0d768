"""Rehearsal and expert iteration (docs/algorithms.md §3): the buffer holds exactly the correct samples of
the incoming adapter's own draws, and the losses are γ × the NLL of the drawn buffer batch, checked in
float64 against a per-token loop over the model's logits."""

from __future__ import annotations

import random

import pytest
import torch

from support.phase_harness import TASK, FixedPool, build_policy, lora_grads, make_phase, text_reward, tiny_model_dir
from polyray.config import ExpertIterationPhaseConfig, GRPOPhaseConfig
from polyray.learner.phases.rehearsal import SampleBuffer
from polyray.rollout.request import GenerationRequest
from polyray.tasks import build_task

SOURCE = "/adapters/sft"  # the incoming adapter as the workers would load it


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("rehearsal"))


class RecordingPool(FixedPool):
    """FixedPool that records the named adapters and every generate call."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.named: dict[str, str] = {}
        self.calls: list[dict] = []

    def add_named_adapter(self, name: str, path: str) -> None:
        self.named[name] = path

    def generate(self, request):
        self.calls.append(
            {
                "n": request.n,
                "temperature": request.sampling.temperature,
                "adapter": request.adapter_name,
                "seeds": request.seeds,
            }
        )
        return super().generate(request)


def _grpo(rehearsal: dict | None) -> GRPOPhaseConfig:
    return GRPOPhaseConfig(
        steps=4, prompts_per_step=3, group_size=3, kl_beta=0.0, sampling={"max_tokens": 5}, rehearsal=rehearsal
    )


def loop_nll(model, seqs) -> torch.Tensor:
    """Token-mean NLL of the completions, one sequence and one token at a time."""
    total, tokens = torch.zeros((), dtype=torch.float64), 0
    for prompt, completion in zip(seqs.prompt_ids, seqs.completion_ids):
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
        for t, token in enumerate(completion):
            total = total - torch.log_softmax(logits[len(prompt) - 1 + t], dim=-1)[token]
            tokens += 1
    return total / tokens


def test_the_buffer_holds_exactly_the_correct_samples_of_the_incoming_adapters_draws(model_dir):
    model, tokenizer = build_policy(model_dir)
    pool = RecordingPool(tokenizer)
    cfg = _grpo({"gamma": 0.3, "samples_per_prompt": 4, "temperature": 0.7, "threshold": 1.0})
    phase = make_phase(cfg, model, tokenizer, 0, 1, pool, init_source=SOURCE)

    assert pool.named == {"grpo/buffer-source": SOURCE}
    assert pool.calls and all(c["adapter"] == "grpo/buffer-source" for c in pool.calls)
    assert {(c["n"], c["temperature"]) for c in pool.calls} == {(4, 0.7)}
    # every draw again, independently: the correct ones (text_reward 1) are the buffer, nothing else
    prompts = build_task(TASK).prompts("train", TASK.n_train)
    expected: dict[str, list] = {}
    request = GenerationRequest(prompts=[p.text for p in prompts], n=4, sampling=cfg.sampling)
    for prompt, group in zip(prompts, FixedPool(tokenizer).generate(request)):
        rewards = text_reward([prompt], [[s.text for s in group]])[0]
        kept = [(s.prompt_token_ids, s.token_ids) for s, r in zip(group, rewards) if r >= 1.0]
        if kept:
            expected[prompt.text] = kept
    assert 0 < len(expected) < len(prompts)  # the check needs prompts both solved and not
    assert phase.buffer.samples == expected
    assert phase.buffer.drawn == 4 * len(prompts)
    other = RecordingPool(tokenizer)
    again = make_phase(cfg, model, tokenizer, 0, 1, other, init_source=SOURCE)
    assert again.buffer.samples == phase.buffer.samples
    seeds = [s for c in pool.calls for s in c["seeds"]]
    assert seeds == [s for c in other.calls for s in c["seeds"]] and len(set(seeds)) == len(prompts)


def test_a_phase_from_the_base_model_draws_its_buffer_adapter_less(model_dir):
    model, tokenizer = build_policy(model_dir)
    pool = RecordingPool(tokenizer)
    make_phase(_grpo({"gamma": 1.0, "samples_per_prompt": 2}), model, tokenizer, 0, 1, pool)
    assert pool.named == {} and {c["adapter"] for c in pool.calls} == {None}


def test_a_draw_takes_the_steps_prompts_first_then_any_buffered_prompt():
    buffer = SampleBuffer({"a": [([1], [2])], "b": [([3], [4]), ([3], [5])], "c": [([6], [7])]}, drawn=9, prompts=4)
    first = buffer.draw(["x", "c", "a", "c"], 2, random.Random(0))  # x is not buffered; c once
    assert first.prompt_ids == [[6], [1]]
    drawn = buffer.draw(["b"], 50, random.Random(1))
    assert drawn.prompt_ids[0] == [3] and len(drawn) == 50
    pairs = set(zip(map(tuple, drawn.prompt_ids), map(tuple, drawn.completion_ids)))
    assert pairs <= {((1,), (2,)), ((3,), (4,)), ((3,), (5,)), ((6,), (7,))} and len(pairs) == 4
    assert len(SampleBuffer().draw(["a"], 4, random.Random(0))) == 0
    assert buffer.stats() == {"buffer_samples": 4, "buffer_prompts": 3, "buffer_prompt_frac": 0.75}


def test_grpo_with_rehearsal_adds_gamma_times_the_buffer_batchs_nll(model_dir):
    """Loss and gradient: GRPO with rehearsal = GRPO + γ × NLL(the step's buffer batch), in float64."""
    gamma = 0.7
    model, tokenizer = build_policy(model_dir)
    model = model.double()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def reset():
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
                p.grad = None

    plain = make_phase(_grpo(None), model, tokenizer, 0, 1, FixedPool(tokenizer)).step(2, 1)
    plain_grads = lora_grads(model)
    reset()
    phase = make_phase(_grpo({"gamma": gamma, "samples_per_prompt": 4, "batch_size": 6}), model, tokenizer, 0, 1,
                       RecordingPool(tokenizer), init_source=SOURCE)  # fmt: skip
    drawn = []
    draw = phase._rehearsal_batch
    phase._rehearsal_batch = lambda step, prompts: drawn.append(draw(step, prompts)) or drawn[-1]
    metrics = phase.step(2, 1)
    grads = lora_grads(model)
    assert len(drawn[0]) == 6
    reset()
    nll = loop_nll(model, drawn[0])
    (gamma * nll).backward()
    assert metrics["rehearsal_nll"] == pytest.approx(float(nll.detach()), rel=1e-10)
    assert metrics["loss"] == pytest.approx(plain["loss"] + gamma * float(nll.detach()), rel=1e-10)
    assert metrics["buffer_samples"] == len(phase.buffer)
    for name, g in lora_grads(model).items():
        torch.testing.assert_close(grads[name] - plain_grads[name], g, rtol=1e-8, atol=1e-12, msg=name)


def test_expert_iteration_trains_on_the_buffer_alone(model_dir):
    model, tokenizer = build_policy(model_dir)
    model = model.double()
    cfg = ExpertIterationPhaseConfig(
        steps=3, batch_size=7, buffer={"samples_per_prompt": 4}, sampling={"max_tokens": 5}
    )
    phase = make_phase(cfg, model, tokenizer, 0, 1, RecordingPool(tokenizer), init_source=SOURCE)
    metrics = phase.step(1, 0)
    grads = lora_grads(model)
    batch = phase.buffer.draw([], 7, random.Random(f"{cfg.name}:0:1"))  # the step's draw, as keyed
    for p in model.parameters():
        p.grad = None
    nll = loop_nll(model, batch)
    nll.backward()
    assert metrics["loss"] == metrics["nll"] == pytest.approx(float(nll.detach()), rel=1e-10)
    for name, g in lora_grads(model).items():
        torch.testing.assert_close(grads[name], g, rtol=1e-8, atol=1e-12, msg=name)


def test_rehearsal_config_checks_its_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="gamma"):
        _grpo({"samples_per_prompt": 4})
    with pytest.raises(ValidationError, match="gamma"):
        _grpo({"gamma": 0})
    assert _grpo({"gamma": 1.0}).rehearsal_batch == 3  # default: prompts_per_step
    assert _grpo(None).rehearsal_batch == 0


class TruncatingPool(RecordingPool):
    """Every second sample of a prompt ends at max_tokens rather than on its own."""

    def generate(self, request):
        groups = super().generate(request)
        for group in groups:
            for j, sample in enumerate(group):
                sample.finished = j % 2 == 0
        return groups


def test_a_sample_cut_off_at_max_tokens_stays_out_of_the_buffer(model_dir):
    model, tokenizer = build_policy(model_dir)
    cfg = _grpo({"gamma": 1.0, "samples_per_prompt": 4})
    full = make_phase(cfg, model, tokenizer, 0, 1, RecordingPool(tokenizer), init_source=SOURCE).buffer
    cut = make_phase(cfg, model, tokenizer, 0, 1, TruncatingPool(tokenizer), init_source=SOURCE).buffer
    assert 0 < len(cut) < len(full)
    pool = TruncatingPool(tokenizer)
    prompts = build_task(TASK).prompts("train", TASK.n_train)
    request = GenerationRequest(prompts=[p.text for p in prompts], n=4, sampling=cfg.sampling)
    finished = {
        (tuple(s.prompt_token_ids), tuple(s.token_ids)) for g in pool.generate(request) for s in g if s.finished
    }
    assert all((tuple(p), tuple(c)) in finished for v in cut.samples.values() for p, c in v)


def test_expert_iteration_with_an_empty_buffer_stops_with_a_clear_error(model_dir):
    model, tokenizer = build_policy(model_dir)
    cfg = ExpertIterationPhaseConfig(steps=1, batch_size=4, buffer={"samples_per_prompt": 2, "threshold": 2.0})
    with pytest.raises(RuntimeError, match=r"solved none of 64 training prompts in 128 draws.*buffer\.threshold"):
        make_phase(cfg, model, tokenizer, 0, 1, RecordingPool(tokenizer), init_source=SOURCE)
