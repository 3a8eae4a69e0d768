"""The loss a phase trains on is its objective's value on the step's batch.

Each phase's ``step`` (micro-batched: several forwards, each backpropagated) logs the loss it
backpropagated; here the same batch goes through the model once, whole, and into the objective
function its unit tests check (``polyray.objectives``: ``compute_sft_loss``,
``compute_polychromic_sft_loss``, ``compute_grpo_loss``, ``compute_dpo_loss``; rehearsal adds γ × ``compute_sft_loss`` of the
step's buffer batch, expert iteration is that NLL alone). The two must agree, and so must the
gradients. A phase that composed its own loss (a sign, a normaliser, the lambda = 0 rule) fails here.
"""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import PHASE_CASES, REWARDS, FixedPool, build_policy, make_phase, text_reward, tiny_model_dir

pytestmark = [pytest.mark.slow]

# distinct_2 on the stand-in pool's random tokens: marginals away from 0 (countdown_expr finds no expression
# in them, so its marginals, and the surrogate, are all 0)
POLYCHROMIC = PHASE_CASES["polychromic_sft"].model_copy(update={"diversity": "distinct_2"})
CASES = {
    **PHASE_CASES,
    "polychromic_sft_distinct_2": POLYCHROMIC,
    "polychromic_sft_lambda_0": POLYCHROMIC.model_copy(update={"lam": 0.0}),
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("objectives"))


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _whole_batch_objective(
    cfg, phase, batch, *, model, pad_id: int, rehearsal=None, cap_scale: float = 1.0
) -> torch.Tensor:
    """The objective on the step's whole batch in one forward (no micro-batches, no logits chunks);
    ``rehearsal``: the step's buffer batch a rehearsing GRPO step drew; ``cap_scale``: the off-policy
    cap C taken times this (a deliberate error the check must catch)."""
    from polyray.models.batching import token_logprobs
    from polyray.objectives.grpo import compute_grpo_loss
    from polyray.objectives.off_policy import compute_is_weights
    from polyray.objectives.polychromic import compute_polychromic_sft_loss
    from polyray.objectives.sft import compute_sft_loss

    if cfg.type == "expert_iteration":  # the step's draw from the buffer, as the phase keys it
        import random

        drawn = phase.buffer.draw([], cfg.batch_size, random.Random(f"{cfg.name}:{phase.ctx.seed}:0"))
        return compute_sft_loss(*token_logprobs(model, drawn.pack(pad_id), 1.0, chunk_mib=0))[0]
    if cfg.type == "dpo":  # both sides of every pair in one forward, against the adapter-disabled base
        from polyray.objectives.dpo import compute_dpo_loss

        assert batch.num_groups >= 2, "the case needs pairs"
        logp, mask = token_logprobs(model, batch.pack(pad_id), 1.0, chunk_mib=0)
        with torch.no_grad(), model.disable_adapter():
            ref = token_logprobs(model, batch.pack(pad_id), 1.0, chunk_mib=0)[0]
        seq, ref = (torch.where(mask > 0, x, torch.zeros_like(x)).sum(-1) for x in (logp, ref))
        return compute_dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], beta=cfg.beta)[0]
    if cfg.type in ("sft", "polychromic_sft"):
        refs = phase.reference_batch(0)
        logp, mask = token_logprobs(model, refs.pack(pad_id), 1.0, chunk_mib=0)
        nll = compute_sft_loss(logp, mask)[0]
        if cfg.type == "sft":
            return nll
        logp, mask = token_logprobs(model, batch.pack(pad_id), cfg.sampling.temperature, chunk_mib=0)
        sample_logp = torch.where(mask > 0, logp, torch.zeros_like(logp)).sum(-1)
        shape = (batch.num_groups, batch.group_size)
        old = torch.tensor(batch.sequence_logprobs(), dtype=logp.dtype)
        return compute_polychromic_sft_loss(
            nll, sample_logp.view(shape), batch.advantages.view(shape), cfg.lam, old.view(shape), cfg.ratio_clip
        )[0]
    temperature = cfg.sampling.temperature
    packed = batch.pack(pad_id)
    logp, mask = token_logprobs(model, packed, temperature, chunk_mib=0)
    ref_logp = None
    if cfg.kl_beta:  # the case's reference: the adapter-disabled base
        with torch.no_grad(), model.disable_adapter():
            ref_logp = token_logprobs(model, packed, temperature, chunk_mib=0)[0]
    engine = batch.target_logprobs(logp.shape[1], logp.dtype)
    off = cfg.off_policy  # fresh samples: the learner's pi_old is this very forward's, detached
    old = logp.detach() if off.old_logprobs == "learner" else engine
    weights = None
    if off.correction != "none":
        weights = compute_is_weights(logp.detach(), engine, mask, correction=off.correction, cap=off.cap * cap_scale)
    loss = compute_grpo_loss(logp, old, ref_logp, batch.advantages.to(logp.dtype), mask, clip_eps_low=cfg.clip_eps_low,
                             clip_eps_high=cfg.clip_eps_high, kl_beta=cfg.kl_beta, aggregation=cfg.aggregation,
                             max_len=cfg.sampling.max_tokens, is_weights=weights)[0]  # fmt: skip
    if cfg.rehearsal is not None:
        assert len(rehearsal), "the case needs a non-empty rehearsal batch"
        loss = (
            loss
            + cfg.rehearsal.gamma
            * compute_sft_loss(*token_logprobs(model, rehearsal.pack(pad_id), 1.0, chunk_mib=0))[0]
        )
    return loss


@pytest.mark.parametrize("name", list(CASES))
def test_the_loss_a_phase_trains_on_is_its_objective_on_the_batch(model_dir, name):
    cfg = CASES[name]
    model, tokenizer = build_policy(model_dir)
    pool = FixedPool(tokenizer, logprob=-6.0)  # about the policy's own: importance ratios on both sides of 1
    # micro-batches of ~2 sequences: the step's loss is a sum of parts
    phase = make_phase(
        cfg, model, tokenizer, 0, 1, pool, reward_fn=REWARDS.get(name, text_reward), micro_batch_tokens=24
    )
    seen = {}
    if hasattr(phase, "_rollout"):
        rollout = phase._rollout
        phase._rollout = lambda step, version: seen.setdefault("batch", rollout(step, version))
    model.zero_grad(set_to_none=True)
    metrics = phase.step(0, 1)
    trained, stepped = metrics["loss"], _grads(model)
    if name == "polychromic_sft_distinct_2":  # a case whose diversity term counts: else the check is SFT's again
        assert abs(metrics["diversity_surrogate"]) > 1e-3 * abs(metrics["nll"]), metrics

    model.zero_grad(set_to_none=True)
    batch = seen["batch"][0] if "batch" in seen else None
    rehearsal = seen["batch"][2] if "batch" in seen and len(seen["batch"]) > 2 else None
    objective = _whole_batch_objective(
        cfg, phase, batch, model=model, pad_id=tokenizer.pad_token_id, rehearsal=rehearsal
    )
    objective.backward()
    assert trained == pytest.approx(float(objective.detach()), rel=1e-5, abs=1e-7)
    expected = _grads(model)
    assert set(stepped) == set(expected) and any(g.abs().max() > 0 for g in expected.values())
    for param, g in expected.items():
        torch.testing.assert_close(stepped[param], g, rtol=1e-4, atol=1e-7, msg=param)
    if cfg.type == "grpo" and cfg.off_policy.correction != "none":  # the check tells the cap apart
        model.zero_grad(set_to_none=True)
        wrong = _whole_batch_objective(cfg, phase, batch, model=model, pad_id=tokenizer.pad_token_id, cap_scale=1.1)
        assert trained != pytest.approx(float(wrong.detach()), rel=1e-5, abs=1e-7)
