"""Micro-batches and chunked log-probs change memory, never the step.

- In float64, one step of every phase case (SFT, polychromic SFT, GRPO in each aggregation,
  GRPO with dynamic sampling) split into micro-batches of a few tokens, with the logits
  computed a few positions at a time, leaves the same gradient as the whole batch in one
  pass with the full logits tensor, at 1e-10; also on 2 gloo ranks under DDP, where ranks run
  different numbers of micro-batches.
- Chunked token log-probs (and their gradients) equal the full-logits computation at 1e-6 in
  float32, with one temperature or one per sequence; a batch whose positions fit one chunk
  gives bit-identical values.
"""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import (
    MISMATCH_METRICS,
    PHASE_CASES,
    build_policy,
    multi_rank_grads,
    step_grads,
    tiny_model_dir,
)
from polyray.learner.batch import micro_batches
from polyray.models.batching import chunk_positions, pack_sequences, token_logprobs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("micro"))


def _chunk_mib(model_dir, positions: int) -> float:
    """A logits chunk of ``positions`` positions for the model's vocabulary."""
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(str(model_dir)).vocab_size
    mib = positions * 4 * vocab / 2**20
    assert chunk_positions(vocab, mib) == positions
    return mib


SMALL = {"micro_batch_tokens": 24}  # 1-3 sequences per micro-batch for these cases


def _assert_same_step(reference, other, label: str, atol: float = 1e-10) -> None:
    grads_ref, metrics_ref = reference
    grads, metrics = other
    assert set(grads) == set(grads_ref)
    assert any(g.abs().max() > 0 for g in grads_ref.values()), f"{label}: the test needs non-zero gradients"
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name], g, rtol=0, atol=atol, msg=f"{label} {name}")
    if "kl" in metrics_ref:  # a GRPO step: its mismatch measures are compared, not skipped
        assert set(MISMATCH_METRICS) <= set(metrics_ref), label
    for key in ("loss", "nll", "kl", "clip_frac", "ratio_mean", "diversity_surrogate", "adv_mean", "weight_mean",
                *MISMATCH_METRICS):  # fmt: skip
        if key in metrics_ref:
            assert metrics[key] == pytest.approx(metrics_ref[key], rel=1e-9, abs=1e-12), f"{label} {key}"


def test_micro_batches_cover_every_sequence_once_within_the_budget():
    lengths = [7, 3, 12, 5, 5, 9, 1, 30]
    parts = micro_batches(lengths, 20)
    assert sorted(i for part in parts for i in part) == list(range(len(lengths)))
    for part in parts:
        assert len(part) == 1 or len(part) * max(lengths[i] for i in part) <= 20
    assert [7] in parts  # longer than the budget: alone
    assert micro_batches(lengths, None) == [list(range(len(lengths)))]
    assert micro_batches([], 20) == micro_batches([], None) == []


@pytest.fixture(scope="module")
def whole_batch(model_dir):
    """Every case in float64: whole shard in one pass, full logits tensor."""
    torch.set_num_threads(1)
    return {name: step_grads(model_dir, name, dtype=torch.float64, logits_chunk_mib=0) for name in PHASE_CASES}


@pytest.mark.parametrize("name", list(PHASE_CASES))
def test_micro_batched_chunked_step_equals_the_whole_batch_step(model_dir, whole_batch, name):
    micro = step_grads(model_dir, name, dtype=torch.float64, logits_chunk_mib=_chunk_mib(model_dir, 3), **SMALL)
    _assert_same_step(whole_batch[name], micro, name)


@pytest.mark.slow
def test_micro_batches_on_two_gloo_ranks_equal_the_one_rank_whole_batch(model_dir, whole_batch, tmp_path):
    options = {"dtype": torch.float64, "logits_chunk_mib": _chunk_mib(model_dir, 3), **SMALL}
    multi = multi_rank_grads(model_dir, 2, list(PHASE_CASES), tmp_path / "grads.pt", options)
    for name in PHASE_CASES:
        _assert_same_step(whole_batch[name], multi[name], f"{name} world=2")


def _batch(tokenizer, n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)

    def draw(lo, hi):
        return torch.randint(2, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    return pack_sequences([draw(2, 9) for _ in range(n)], [draw(1, 12) for _ in range(n)], tokenizer.pad_token_id)


@pytest.mark.parametrize("temperature", [1.0, 0.7, "per-sequence"])
def test_chunked_logprobs_equal_the_full_logits(model_dir, temperature):
    model, tokenizer = build_policy(model_dir)
    batch = _batch(tokenizer)
    if temperature == "per-sequence":
        temperature = torch.tensor([1.0, 0.5, 1.3, 1.0, 0.9, 2.0, 0.7])
    params = [p for p in model.parameters() if p.requires_grad]
    full, mask = token_logprobs(model, batch, temperature, chunk_mib=0)
    full = torch.where(mask > 0, full, torch.zeros_like(full))
    full_grads = torch.autograd.grad(full.sum(), params)
    for positions in (1, 4, 10_000):
        chunked, mask_c = token_logprobs(model, batch, temperature, chunk_mib=_chunk_mib(model_dir, positions))
        assert torch.equal(mask_c, mask) and chunked.dtype == torch.float32
        torch.testing.assert_close(chunked, full, rtol=0, atol=1e-6)
        for g, ref in zip(torch.autograd.grad(chunked.sum(), params), full_grads):
            # float32 summation order: the absolute error scales with the gradient (|grad| reaches ~3 here)
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6 * max(1.0, ref.abs().max().item()))
        if positions == 10_000:  # one chunk holds every position: the same numbers exactly
            assert torch.equal(chunked, full)


def test_chunked_logprobs_check_the_temperature(model_dir):
    model, tokenizer = build_policy(model_dir)
    with pytest.raises(ValueError, match="temperature > 0"):
        token_logprobs(model, _batch(tokenizer), torch.tensor([1.0, 0.0, 1, 1, 1, 1, 1]))


def test_a_right_padded_batch_runs_without_its_padding_mask_and_keeps_every_real_tokens_output(model_dir):
    """causal_forward leaves a right-padded batch's mask out (the causal mask already hides the pads) and
    passes any other padding's: real tokens' hidden states equal the masked forward's (float64, 1e-10),
    and the model saw no mask, then the left-padded batch's own."""
    from polyray.models.batching import PackedBatch, causal_forward

    model, _ = build_policy(model_dir)
    model = model.double().eval()
    right = pack_sequences([[5, 6, 7], [8], [9, 10]], [[11, 12], [13, 14, 15, 16], [17]], pad_id=0)
    seen = []
    hook = model.get_base_model().model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw.get("attention_mask")), with_kwargs=True
    )
    with torch.no_grad():
        masked = model(input_ids=right.input_ids, attention_mask=right.attention_mask).logits
        unmasked = causal_forward(model, right).logits
        pads = (right.attention_mask == 0).sum(1).tolist()
        flip = lambda t: torch.stack([torch.roll(r, n) for r, n in zip(t, pads)])  # noqa: E731 (each row's pads to the front)
        ids, mask = flip(right.input_ids * right.attention_mask), flip(right.attention_mask)
        left = PackedBatch(ids, mask, flip(right.completion_mask))
        left_out = causal_forward(model, left).logits
        left_masked = model(input_ids=ids, attention_mask=mask).logits
    hook.remove()
    real = right.attention_mask.bool()
    torch.testing.assert_close(unmasked[real], masked[real], rtol=0, atol=1e-10)
    assert seen[1] is None and seen[2] is mask  # the right-padded batch's mask left out, the left-padded one's passed
    torch.testing.assert_close(left_out[mask.bool()], left_masked[mask.bool()], rtol=0, atol=1e-10)
    assert not torch.allclose(unmasked[~real], masked[~real])  # pads' outputs differ: the masks really differ
