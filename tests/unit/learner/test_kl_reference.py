"""GRPO's KL reference is the policy at the start of the phase: a frozen second adapter, not the base model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from support.phase_harness import FixedPool, build_policy, make_phase, tiny_model_dir

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("kl"))


def _grpo(reference: str):
    from polyray.config import GRPOPhaseConfig

    return GRPOPhaseConfig(
        steps=1, prompts_per_step=2, group_size=3, kl_beta=0.5, kl_reference=reference, sampling={"max_tokens": 5}
    )


def test_phase_start_reference_starts_at_zero_kl(model_dir, tmp_path):
    from polyray.learner.lora import add_reference_adapter, save_adapter
    from polyray.learner.phases import GRPOPhase

    torch.set_num_threads(1)
    model, tok = build_policy(model_dir)  # stands for the adapter SFT handed over
    incoming = save_adapter(model, tmp_path / "sft")
    cfg = _grpo("phase_start")
    assert GRPOPhase.reference_adapter_dir(cfg, str(incoming)) == str(incoming)
    assert GRPOPhase.reference_adapter_dir(_grpo("base"), str(incoming)) is None
    assert GRPOPhase.reference_adapter_dir(cfg, None) is None  # a fresh adapter starts at the base itself

    reference = add_reference_adapter(model, str(incoming))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    metrics = make_phase(cfg, model, tok, 0, 1, FixedPool(tok), reference_adapter=reference).step(0, 1)  # + backward
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy *is* the phase-start policy
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # still the same trainables
    assert all(p.grad is None for n, p in model.named_parameters() if ".reference." in n)

    base_model, _ = build_policy(model_dir)
    base_metrics = make_phase(_grpo("base"), base_model, tok, 0, 1, FixedPool(tok)).step(0, 1)
    assert base_metrics["kl"] > 1e-4  # against the adapter-disabled base the same policy is far away

    saved = save_adapter(model, tmp_path / "out")
    assert not (saved / reference).exists()  # only the trainable adapter is saved


def test_adapter_save_is_atomic_and_replaces(model_dir, tmp_path):
    from peft import PeftModel

    from polyray.learner.lora import extract_adapter, load_base, save_adapter

    model, _ = build_policy(model_dir)
    out = save_adapter(model, tmp_path / "adapters" / "sft", extra={"polyray_version.json": {"version": 3}})
    assert (out / "adapter_model.safetensors").is_file() and (
        out / "polyray_version.json"
    ).read_text() == '{"version": 3}'
    save_adapter(model, out, extra={"polyray_version.json": {"version": 4}})  # replaces in one rename
    assert (out / "polyray_version.json").read_text() == '{"version": 4}'
    assert sorted(p.name for p in out.parent.iterdir()) == ["sft"]  # no staging or old directory left behind
    base, _ = load_base(str(model_dir))
    # peft loads what was left there: the model's adapter, every tensor of it
    want, got = extract_adapter(model)["tensors"], extract_adapter(PeftModel.from_pretrained(base, str(out)))["tensors"]
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_read_adapter_gives_what_extract_adapter_publishes(model_dir, tmp_path):
    """A saved adapter read back (a branch run's starting point) is the dict the learner publishes."""
    from polyray.learner.lora import extract_adapter, read_adapter, save_adapter

    model, _ = build_policy(model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)  # B = 0 at init: make the adapter non-trivial
    published, saved = extract_adapter(model), read_adapter(save_adapter(model, tmp_path / "sft"))
    assert sorted(saved["tensors"]) == sorted(published["tensors"])
    assert all(torch.equal(saved["tensors"][k], published["tensors"][k]) for k in published["tensors"])
    keys = ("r", "lora_alpha", "target_modules", "peft_type")
    assert {k: saved["config"][k] for k in keys} == {k: published["config"][k] for k in keys}


def test_extract_adapter_follows_every_write_into_the_adapter(model_dir, tmp_path):
    """The extraction finds the adapter's parameters once per model; every later extraction equals peft's own
    state dict: after optimizer steps, after an adapter loaded into the model, and with the KL reference added."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from polyray.learner.lora import add_reference_adapter, extract_adapter, save_adapter

    model, _ = build_policy(model_dir)

    def same() -> bool:
        mine, peft = extract_adapter(model)["tensors"], get_peft_model_state_dict(model)
        return sorted(mine) == sorted(peft) and all(torch.equal(mine[k], peft[k]) for k in peft)

    first = extract_adapter(model)["tensors"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(input_ids=torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[5, 6, 7, 8]])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        assert same()
    assert not all(torch.equal(first[k], v) for k, v in extract_adapter(model)["tensors"].items())  # it moved
    saved = save_adapter(model, tmp_path / "moved")
    with torch.no_grad():
        set_peft_model_state_dict(model, first)  # a checkpoint's adapter loaded back
    assert same() and all(torch.equal(first[k], v) for k, v in extract_adapter(model)["tensors"].items())
    add_reference_adapter(model, str(saved))
    assert same()


class ScoringPool(FixedPool):
    """FixedPool whose samples carry KL-reference log-probs as the rollout workers attach them, here from
    ``scorer(prompt_ids, completion_ids)`` plus ``shift``; ``missing``: sample indices left unscored."""

    def __init__(self, tokenizer, scorer, shift: float = 0.0, missing=()):
        super().__init__(tokenizer)
        self.scorer, self.shift, self.missing = scorer, shift, set(missing)
        self.references, self.named = [], {}

    def add_named_adapter(self, name, path):
        self.named[name] = str(path)

    def submit(self, request):
        from support.phase_harness import _Done

        self.references.append(request.reference)
        groups = self.generate(replace(request, reference=None))
        for i, sample in enumerate(s for g in groups for s in g):
            if i not in self.missing:
                sample.ref_logprobs = [x + self.shift for x in self.scorer(sample.prompt_token_ids, sample.token_ids)]
        return _Done(groups)


def _moved_policy(model_dir, tmp_path):
    """(policy, tokenizer, reference adapter name, incoming adapter dir, a frozen copy of the reference
    policy): the policy has moved away from the incoming adapter it holds as its reference."""
    import copy

    from polyray.learner.lora import add_reference_adapter, save_adapter

    model, tok = build_policy(model_dir)
    incoming = save_adapter(model, tmp_path / "sft")
    frozen = copy.deepcopy(model).eval()
    reference = add_reference_adapter(model, str(incoming))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".default." in name and "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model, tok, reference, incoming, frozen


@pytest.mark.parametrize("share_prompts", [False, True])
def test_reference_log_probs_from_the_rollouts_give_the_learners_step(model_dir, tmp_path, share_prompts):
    """kl_reference_logprobs 'rollouts': the step takes the samples' reference log-probs instead of its own
    reference forward. Scored by a frozen copy of the reference, the step's KL and gradients are the
    learner's own; shifted, they move the KL (so they are what the step used); with one sample
    unscored the step falls back to its own forward."""
    from support.phase_harness import learner_logprobs, lora_grads

    torch.set_num_threads(1)
    cfg = _grpo("phase_start")

    def step(mode: str, **pool_options):
        model, tok, reference, incoming, frozen = _moved_policy(model_dir, tmp_path / mode / str(len(pool_options)))
        pool = ScoringPool(tok, lambda p, c: learner_logprobs(frozen, p, c, tok.pad_token_id).tolist(), **pool_options)
        phase = make_phase(
            cfg.model_copy(update={"kl_reference_logprobs": mode}),
            model,
            tok,
            0,
            1,
            pool,
            reference_adapter=reference,
            share_prompts=share_prompts,
        )
        phase.ctx.reference_source = str(incoming)
        if mode == "rollouts":  # as the phase's constructor does on rank 0 with a real pool
            phase.rollout_reference = phase.reference_on_rollouts(pool)
        metrics = phase.step(0, 1)
        return metrics, lora_grads(model), pool, incoming

    learner, learner_grads, pool, _ = step("learner")
    assert pool.references == [None] and learner["kl"] > 1e-4  # the policy moved: a KL to measure
    rollouts, grads, pool, incoming = step("rollouts")
    assert pool.references == ["grpo/kl-reference"] and pool.named == {"grpo/kl-reference": str(incoming)}
    assert rollouts["kl"] == pytest.approx(learner["kl"], rel=1e-5, abs=1e-7)
    for name, grad in learner_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-6), name
    shifted, *_ = step("rollouts", shift=0.3)
    assert abs(shifted["kl"] - learner["kl"]) > 1e-3
    fallback, *_ = step("rollouts", shift=0.3, missing=[0])
    # its own forward again: float32 rounding apart (packed rows' attention sums may round otherwise in
    # another run), not the shifted values (> 1e-3 away)
    assert fallback["kl"] == pytest.approx(learner["kl"], rel=1e-5, abs=1e-7)


def test_a_base_reference_on_the_rollouts_is_the_base_model(model_dir):
    from polyray.rollout.worker import BASE_MODEL

    model, tok = build_policy(model_dir)
    cfg = _grpo("base").model_copy(update={"kl_reference_logprobs": "rollouts"})
    pool = ScoringPool(tok, lambda p, c: [0.0] * len(c))
    phase = make_phase(cfg, model, tok, 0, 1, pool)
    assert phase.reference_on_rollouts(pool) == BASE_MODEL and pool.named == {}


def test_rollouts_reference_needs_temperature_one():
    from pydantic import ValidationError

    from polyray.config import GRPOPhaseConfig

    with pytest.raises(ValidationError, match="kl_reference_logprobs 'rollouts' needs sampling.temperature 1"):
        GRPOPhaseConfig(kl_reference_logprobs="rollouts", sampling={"temperature": 0.7})
    GRPOPhaseConfig(kl_reference_logprobs="rollouts", sampling={"temperature": 1.0})
