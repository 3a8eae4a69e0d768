"""Shared prompts (``learner.share_prompts``) and packed samples (``learner.pack_samples``) change the
work, never the step.

- :func:`shared_prompt_logprobs` (each prompt through the model once, its samples on its keys and
  values; packed: a prompt's samples sharing rows) gives the log-probs of :func:`token_logprobs` on the
  whole sequences, and their gradients, with prompts of different lengths, groups of different sizes,
  one temperature or one per sequence.
- Packed, a prompt's samples sit back to back in its row, each at its own positions, seeing its prompt
  and its own earlier tokens; :func:`pack_rows` splits them into rows within a row's capacity.
- One GRPO step with shared prompts, in micro-batches of whole groups and on 2 gloo ranks under DDP,
  leaves the gradient and metrics of the whole-sequence step in one pass.

The model's RMSNorm runs in float32 even in a float64 model, and the two paths add a group's
gradients before or after it, so gradients agree to float32 rounding relative to their size; a
misplaced position, mask or key moves them by O(1) of it.
"""

from __future__ import annotations

import pytest
import torch

from support.phase_harness import build_policy, multi_rank_grads, step_grads, tiny_model_dir
from polyray.learner.batch import TrainBatch
from polyray.models.batching import (
    _completion_rows,
    pack_prompt_groups,
    pack_rows,
    pack_sequences,
    shared_prompt_logprobs,
    token_logprobs,
)

GRPO_CASES = ["grpo_seq_mean_token_mean", "grpo_token_mean", "grpo_seq_mean_token_sum_norm", "grpo_dynamic_sampling"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("shared"))


def _groups(tokenizer, sizes=(3, 1, 4), seed: int = 0):
    """Prompts of 2-9 tokens and, per group, completions of 1-11 tokens."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)

    def draw(lo, hi):
        return torch.randint(2, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()

    prompts = [draw(2, 10) for _ in sizes]
    group = [b for b, size in enumerate(sizes) for _ in range(size)]
    return prompts, [draw(1, 12) for _ in group], group


def _close(value, reference, label: str, rel: float = 1e-6) -> None:
    scale = max(1.0, reference.abs().max().item())
    torch.testing.assert_close(value, reference, rtol=0, atol=rel * scale, msg=label)


@pytest.mark.parametrize("pack", ["one row a prompt", "rows of 12 tokens", "one a row"])
@pytest.mark.parametrize("temperature", [1.0, 0.7, "per-sequence"])
def test_shared_prompt_logprobs_equal_the_whole_sequences(model_dir, temperature, pack, monkeypatch):
    if pack == "rows of 12 tokens":  # the longest completion is 11 tokens: a prompt's samples in several rows
        monkeypatch.setattr("polyray.models.batching.ROW_TOKENS", 12)
    model, tokenizer = build_policy(model_dir)
    model = model.to(torch.float64)
    assert model.config._attn_implementation == "sdpa"  # packing runs under sdpa only
    prompts, completions, group = _groups(tokenizer)
    if temperature == "per-sequence":
        temperature = torch.tensor([1.0, 0.5, 1.3, 1.0, 0.9, 2.0, 0.7, 1.1])
    params = [p for p in model.parameters() if p.requires_grad]
    whole, mask = token_logprobs(
        model,
        pack_sequences([prompts[b] for b in group], completions, tokenizer.pad_token_id),
        temperature,
        chunk_mib=0,
    )
    groups = pack_prompt_groups(prompts, completions, group, tokenizer.pad_token_id)
    rows = len(_completion_rows(groups, pack != "one a row").ids)
    assert rows == {"one row a prompt": len(prompts), "one a row": len(completions)}.get(pack, rows)
    assert len(prompts) < rows < len(completions) or pack != "rows of 12 tokens"
    shared, shared_mask = shared_prompt_logprobs(model, groups, temperature, pack=pack != "one a row")
    # the whole-sequence targets of completion token j of sequence i sit at len(prompt) - 1 + j
    reference = torch.zeros(shared.shape, dtype=whole.dtype)
    for i, b in enumerate(group):
        start = len(prompts[b]) - 1
        assert mask[i, start : start + len(completions[i])].all()
        reference[i, : len(completions[i])] = whole[i, start : start + len(completions[i])]
    assert shared_mask.sum() == mask.sum() == sum(map(len, completions))
    _close(shared, reference, "log-probs", rel=1e-12)
    weights = torch.randn(shared.shape, generator=torch.Generator().manual_seed(1), dtype=shared.dtype)
    expected = torch.autograd.grad((reference * weights).sum(), params)
    for g, ref in zip(torch.autograd.grad((shared * weights * shared_mask).sum(), params), expected):
        _close(g, ref, "gradient")
    assert any(g.abs().max() > 0 for g in expected)


def test_packed_rows_hold_each_prompts_samples_back_to_back():
    groups = pack_prompt_groups([[5, 6, 7], [8]], [[1, 2], [3], [4, 4, 4], [9, 9]], [0, 1, 0, 1], pad_id=0)
    rows = _completion_rows(groups, pack=True)
    assert rows.prompt is None and rows.ids.tolist() == [[4, 4, 4, 1, 2], [9, 9, 3, 0, 0]]  # longest first
    assert rows.positions.tolist() == [[3, 4, 5, 3, 4], [1, 2, 1, 1, 1]]  # after its prompt, from its own start
    assert rows.ids[rows.row, rows.column][groups.completion_mask > 0].tolist() == [1, 2, 3, 4, 4, 4, 9, 9]
    sees = rows.mask[1, 0].int().tolist()  # prompt 1's row: its 1-token prompt (of 3 columns), then its own tokens
    assert sees[:3] == [[1, 0, 0, 1, 0, 0, 0, 0], [1, 0, 0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1, 0, 0]]
    assert sees[3:] == [[1, 0, 0, 0, 0, 0, 0, 0]] * 2  # padding sees the prompt alone (finite, never read)
    unpacked = _completion_rows(groups, pack=False)
    assert unpacked.prompt.tolist() == [0, 1, 0, 1] and unpacked.mask.shape == (4, 3 + 3) and unpacked.row is None
    # rows are padded to the longest: 8 samples of 17 tokens fill a row of 7 (119 tokens) and one of 1, so
    # 2 x 119 packed tokens against 8 x 17 one a row: one a row it is
    alike = pack_prompt_groups([[5, 6]], [[1] * 17] * 8, [0] * 8, pad_id=0)
    assert _completion_rows(alike, pack=True).row is None


def test_pack_rows_keep_each_sample_whole_in_a_row_of_its_own_prompt():
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, 13, (40,), generator=g).tolist()
    group = sorted(torch.randint(0, 6, (40,), generator=g).tolist())
    row_of, start, row_prompt = pack_rows(lengths, group, capacity=12)
    cells = set()
    for i, (r, s) in enumerate(zip(row_of, start)):
        assert row_prompt[r] == group[i] and 0 <= s and s + lengths[i] <= 12
        span = {(r, c) for c in range(s, s + lengths[i])}
        assert not span & cells, f"sample {i} overlaps another"
        cells |= span
    assert len(row_prompt) < len(lengths)
    fill = [sum(n for n, r in zip(lengths, row_of) if r == k) for k in range(len(row_prompt))]
    assert all(fill[a] + fill[b] > 12 for a in range(len(fill)) for b in range(a) if row_prompt[a] == row_prompt[b])
    assert pack_rows([5, 20, 3], [0, 0, 0], capacity=8) == ([1, 0, 1], [0, 0, 5], [0, 0])  # 20 alone, then 5 + 3
    assert pack_rows([2, 3, 1], [1, 0, 1], capacity=256) == ([1, 0, 1], [0, 0, 2], [0, 1])  # one row a prompt
    with pytest.raises(ValueError, match="2 lengths but 1 group"):
        pack_rows([1, 2], [0], capacity=4)


def test_shared_prompts_refuse_a_model_without_its_cache(model_dir):
    model, tokenizer = build_policy(model_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    prompts, completions, group = _groups(tokenizer)
    with pytest.raises(ValueError, match="key-value cache"):
        shared_prompt_logprobs(model, pack_prompt_groups(prompts, completions, group, tokenizer.pad_token_id))


def _train_batch(prompts, completions, group_size: int) -> TrainBatch:
    n = len(completions)
    return TrainBatch(
        [prompts[i // group_size] for i in range(n)],
        completions,
        [[0.0] * len(c) for c in completions],
        torch.zeros(n, dtype=torch.float64),
        group_size,
    )


def test_group_micro_batches_hold_whole_groups_within_the_budget():
    prompts = [[1] * 4, [1] * 9, [1] * 2, [1] * 6]
    lengths = [3, 1, 7, 2, 12, 5, 1, 1, 2, 8, 3, 3]
    batch = _train_batch(prompts, [[2] * n for n in lengths], 3)
    parts = batch.group_micro_batches(30)
    assert sorted(i for part in parts for i in part) == list(range(12))
    for part in parts:
        groups = {i // 3 for i in part}
        assert sorted(part) == [i for g in sorted(groups) for i in range(3 * g, 3 * g + 3)]  # whole groups
        padded = len(groups) * max(len(prompts[g]) for g in groups) + len(part) * max(lengths[i] for i in part)
        assert len(groups) == 1 or padded <= 30
    assert parts[0] == [3, 4, 5]  # the longest completion (12) first, alone: 6 + 3 x 12 > 30
    assert batch.group_micro_batches(None) == [list(range(12))]


def test_pack_groups_refuses_a_group_with_two_prompts():
    batch = _train_batch([[5, 6], [7]], [[2], [3], [4], [5]], 2)
    batch.prompt_ids[3] = [8, 9]
    with pytest.raises(ValueError, match="group 1"):
        batch.pack_groups(pad_id=0)
    packed = _train_batch([[5, 6], [7]], [[2], [3, 4], [4], [5]], 2).pack_groups(pad_id=0)
    assert packed.prompt_ids.tolist() == [[5, 6], [7, 0]] and packed.prompt_lengths.tolist() == [2, 1]
    assert packed.group.tolist() == [0, 0, 1, 1] and packed.completion_mask.sum() == 5


@pytest.fixture(scope="module")
def whole_step(model_dir):
    """Every GRPO case in float64: whole sequences in one pass, full logits tensor."""
    torch.set_num_threads(1)
    return {name: step_grads(model_dir, name, dtype=torch.float64, logits_chunk_mib=0) for name in GRPO_CASES}


def _assert_same_step(reference, other, label: str) -> None:
    grads_ref, metrics_ref = reference
    grads, metrics = other
    assert set(grads) == set(grads_ref)
    assert any(g.abs().max() > 0 for g in grads_ref.values()), f"{label}: the test needs non-zero gradients"
    for name, g in grads_ref.items():
        _close(grads[name], g, f"{label} {name}")
    for key in ("loss", "kl", "clip_frac", "ratio_mean"):
        assert metrics[key] == pytest.approx(metrics_ref[key], rel=1e-6, abs=1e-9), f"{label} {key}"


@pytest.mark.parametrize("name", GRPO_CASES)
@pytest.mark.parametrize("budget", [None, 12])
@pytest.mark.parametrize("pack", [True, False])
def test_a_grpo_step_with_shared_prompts_equals_the_whole_sequence_step(model_dir, whole_step, name, budget, pack):
    shared = step_grads(
        model_dir, name, dtype=torch.float64, share_prompts=True, micro_batch_tokens=budget, pack_samples=pack
    )
    _assert_same_step(whole_step[name], shared, f"{name} budget={budget} pack={pack}")


@pytest.mark.slow
def test_shared_prompts_on_two_gloo_ranks_equal_the_one_rank_whole_step(model_dir, whole_step, tmp_path):
    options = {"dtype": torch.float64, "share_prompts": True, "micro_batch_tokens": 12}
    multi = multi_rank_grads(model_dir, 2, GRPO_CASES, tmp_path / "grads.pt", options)
    for name in GRPO_CASES:
        _assert_same_step(whole_step[name], multi[name], f"{name} world=2")


def test_models_whose_cache_or_positions_differ_are_named():
    from transformers import Gemma3TextConfig, MistralConfig, Qwen3Config

    from polyray.models.batching import prompt_sharing_blocker

    assert prompt_sharing_blocker(Qwen3Config()) is None  # its sliding_window is off (use_sliding_window false)
    assert "sliding_attention" in prompt_sharing_blocker(Qwen3Config(use_sliding_window=True, max_window_layers=0))
    assert "sliding-window" in prompt_sharing_blocker(MistralConfig(sliding_window=4096))
    assert "sliding_attention" in prompt_sharing_blocker(Gemma3TextConfig())
    assert "dynamic" in prompt_sharing_blocker(Qwen3Config(rope_scaling={"rope_type": "dynamic", "factor": 2.0}))


def test_a_windowed_cache_is_refused_not_used(model_dir):
    """A model the blocker would let through by mistake still fails loudly: its cache is not a plain one."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=0,
        pad_token_id=0,
    )
    model = Qwen3ForCausalLM(config)
    with pytest.raises(ValueError, match="plain key-value cache"):
        shared_prompt_logprobs(model, pack_prompt_groups([[1, 2, 3, 4, 5]], [[6, 7], [8]], [0, 0], pad_id=0))
