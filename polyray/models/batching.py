"""Prompt + completion token lists -> padded tensors, and per-token log-probs under a model.

Sequences are right-padded; ``completion_mask`` marks the completion tokens (the ones
that carry loss). Shapes: B sequences, T = longest prompt+completion, V vocabulary, H hidden size.

Token log-probs never hold the ``(B, T, V)`` logits tensor (docs/algorithms.md §2, "Token log-probs"): the model
runs with its output head switched off and returns the final hidden states; the head is then
applied only at the completion positions, a chunk of positions at a time, each chunk
checkpointed (its logits are recomputed in the backward pass instead of kept), so at most one
chunk's logits are alive. A chunk holds as many positions as fit ``chunk_mib`` of float32 logits
(``learner.logits_chunk_mib``): 256 MiB is 441 positions of a 151,936-token vocabulary, whatever
the batch. A batch whose completion positions all fit one chunk (the embedded model's, with its
384-token vocabulary) gets log-probs and gradients bit-identical to the full-logits path.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig

from polyray.config.learner import DEFAULT_CHUNK_MIB, chunk_positions


@dataclass
class PackedBatch:
    # (B, T) long
    input_ids: torch.Tensor
    # (B, T) long, 1 on real tokens
    attention_mask: torch.Tensor
    # (B, T) float, 1 on completion tokens
    completion_mask: torch.Tensor

    def rows(self, start: int, end: int) -> PackedBatch:
        """Sequences [start, end) of the batch (views of the same tensors)."""
        return PackedBatch(self.input_ids[start:end], self.attention_mask[start:end], self.completion_mask[start:end])

    @property
    def target_mask(self) -> torch.Tensor:
        """(B, T-1) 1 where the target (the next token) is a completion token."""
        return self.completion_mask[:, 1:]


def pack_sequences(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: torch.device | str | None = None
) -> PackedBatch:
    """Right-padded (B, T) tensors, built on the CPU and moved to ``device`` (the model's) in one copy each."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if not prompts:
        raise ValueError("no sequences to pack")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    T = max(lengths)
    B = len(prompts)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    completion_mask = torch.zeros((B, T), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        n = len(p) + len(c)
        input_ids[i, :n] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask[i, :n] = 1
        completion_mask[i, len(p) : n] = 1.0
    if device is not None:
        input_ids, attention_mask, completion_mask = (
            t.to(device) for t in (input_ids, attention_mask, completion_mask)
        )
    return PackedBatch(input_ids, attention_mask, completion_mask)


def _logprob_dtype(dtype: torch.dtype) -> torch.dtype:
    """Log-softmax runs in at least float32 (bf16 logits lose the small probabilities), float64 stays."""
    return torch.promote_types(dtype, torch.float32)


def causal_forward(model, batch: PackedBatch):
    """The model's forward over ``batch``, for training and scoring (no key-value cache kept).

    In a right-padded row every pad comes after every real token, so the causal mask alone keeps the
    pads from the real tokens: such a batch runs without its padding mask (sdpa's causal kernel, no
    (B, 1, T, T) mask built), and each real token's output is the masked forward's up to float rounding
    (positions are 0..T-1 either way). Pad positions' outputs differ and are never read. A batch padded
    otherwise keeps its mask."""
    mask = batch.attention_mask
    right_padded = bool((mask[:, 1:] <= mask[:, :-1]).all())
    return model(input_ids=batch.input_ids, use_cache=False, **({} if right_padded else {"attention_mask": mask}))


def next_token_logits(model, batch: PackedBatch) -> torch.Tensor:
    """(B, T-1, V) logits predicting tokens 1..T-1, in at least float32: the whole tensor (the reference path)."""
    logits = causal_forward(model, batch).logits[:, :-1]
    return logits.to(_logprob_dtype(logits.dtype))


# one for the batch, or (B,): each sequence's own
Temperature = float | torch.Tensor


def gather_logprobs(logits: torch.Tensor, batch: PackedBatch, temperature: Temperature = 1.0) -> torch.Tensor:
    """(B, T-1) log-prob of each target token under softmax(logits / temperature)."""
    _check_temperature(temperature)
    if torch.is_tensor(temperature):
        temperature = temperature.to(logits.device, logits.dtype)[:, None, None]
    scaled = logits if _is_one(temperature) else logits / temperature
    targets = batch.input_ids[:, 1:]
    return torch.log_softmax(scaled, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _check_temperature(temperature: Temperature) -> None:
    low = float(temperature.min()) if torch.is_tensor(temperature) else temperature
    if low <= 0:
        raise ValueError(f"log-probs need a temperature > 0, got {low}")


def _is_one(temperature: Temperature) -> bool:
    """Whether no division is needed (a float 1; a tensor always divides, exactly where it holds 1)."""
    return not torch.is_tensor(temperature) and temperature == 1.0


def _causal_lm(model):
    """The transformers model under DDP (``.module``) and peft (``get_base_model``)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def _hidden_states_out(model):
    """Within the block the model's forward returns the final (normed) hidden states as ``.logits``;
    yields the output head. The forward still goes through ``model`` itself (DDP's forward prepares
    its gradient all-reduce), only the head is lifted out for the duration."""
    lm = _causal_lm(model)
    head = lm.get_output_embeddings()
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        lm.set_output_embeddings(head)


def _chunk_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: Temperature) -> torch.Tensor:
    """(n,) log-probs of ``targets`` from (n, H) hidden states through the output head (``temperature``:
    a float, or (n,) per position)."""
    logits = head(hidden)
    logits = logits.to(_logprob_dtype(logits.dtype))
    if torch.is_tensor(temperature):
        logits = logits / temperature.to(logits.dtype)[:, None]
    elif temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_logprobs(
    model, batch: PackedBatch, temperature: Temperature = 1.0, chunk_mib: float = DEFAULT_CHUNK_MIB
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each completion token: returns (logp (B, T-1), mask (B, T-1)) aligned to targets.

    ``temperature``: the log-probs of the sampling distribution softmax(logits / T), as the
    sampler (vLLM in ``processed_logprobs`` mode) reports them for the tokens it drew; a (B,) tensor
    gives each sequence its own (e.g. references at 1 beside samples at T in one forward).
    ``chunk_mib``: the size of a chunk of logits (module docstring); 0 computes the full
    ``(B, T-1, V)`` logits tensor instead (the reference path, for tests and benchmarks).
    ``logp`` is 0 outside ``mask``, in float32 (float64 for a float64 model).
    """
    mask = batch.target_mask
    if not chunk_mib:
        return gather_logprobs(next_token_logits(model, batch), batch, temperature), mask
    _check_temperature(temperature)
    with _hidden_states_out(model) as head:
        hidden = causal_forward(model, batch).logits[:, :-1]
    return _completion_logprobs(head, hidden, batch.input_ids[:, 1:], mask, temperature, _causal_lm(model), chunk_mib)


def _completion_logprobs(head, hidden, targets, mask, temperature: Temperature, lm, chunk_mib: float):
    """(logp, mask): the log-prob of each ``targets`` token where ``mask`` is set, from the hidden state that
    predicts it (``hidden`` (N, T, H), ``targets`` and ``mask`` (N, T)), through the output head a chunk of
    positions at a time (module docstring); 0 elsewhere."""
    selected = mask > 0
    # (n, H), (n,)
    hidden, targets = hidden[selected], targets[selected]
    # per sequence -> per selected position
    if torch.is_tensor(temperature):
        temperature = temperature.to(hidden.device)[:, None].expand(mask.shape)[selected]
    grad = torch.is_grad_enabled() and hidden.requires_grad
    size = chunk_positions(lm.config.vocab_size, chunk_mib) if chunk_mib else max(len(targets), 1)
    chunks = []
    for start in range(0, len(targets), size):
        t = temperature[start : start + size] if torch.is_tensor(temperature) else temperature
        args = (head, hidden[start : start + size], targets[start : start + size], t)
        chunks.append(checkpoint(_chunk_logprobs, *args, use_reentrant=False) if grad else _chunk_logprobs(*args))
    dtype = _logprob_dtype(hidden.dtype)
    logp = torch.zeros(mask.shape, dtype=dtype, device=hidden.device)
    if chunks:
        logp = logp.masked_scatter(selected, torch.cat(chunks))
    return logp, mask


@dataclass
class PromptGroups:
    """Sequences in groups that share one prompt (GRPO's G samples of a prompt), each prompt stored once.

    - ``prompt_ids`` (B, P) long, right-padded; ``prompt_mask`` (B, P) long, 1 on real tokens;
      ``prompt_lengths`` (B,) long;
    - ``completion_ids`` (N, C) long, right-padded; ``completion_mask`` (N, C) float, 1 on real tokens;
    - ``group`` (N,) long: the prompt row of each sequence.

    Column j of a completion tensor is completion token j, so :func:`shared_prompt_logprobs` returns
    log-probs in that layout (not :class:`PackedBatch`'s prompt + completion targets).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    prompt_lengths: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    group: torch.Tensor


def pack_prompt_groups(
    prompts: list[list[int]],
    completions: list[list[int]],
    group: list[int],
    pad_id: int,
    device: torch.device | str | None = None,
) -> PromptGroups:
    """B distinct prompts and N completions, completion i following prompt ``group[i]``, as right-padded tensors."""
    if len(completions) != len(group):
        raise ValueError(f"{len(completions)} completions but {len(group)} group indices")
    if not prompts or not completions:
        raise ValueError("no sequences to pack")
    if min(map(len, prompts)) < 1 or min(map(len, completions)) < 1:
        raise ValueError("every prompt and completion needs at least one token")

    def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
        mask = torch.zeros(ids.shape, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    prompt_ids, prompt_mask = padded(prompts)
    completion_ids, completion_mask = padded(completions)
    tensors = (
        prompt_ids,
        prompt_mask,
        prompt_mask.sum(-1),
        completion_ids,
        completion_mask.float(),
        torch.tensor(group, dtype=torch.long),
    )
    return PromptGroups(*(t.to(device) if device is not None else t for t in tensors))


def prompt_sharing_blocker(model) -> str | None:
    """Why :func:`shared_prompt_logprobs` would not equal whole sequences on ``model`` (a causal LM, under
    peft and DDP or not, or its config), or None.

    It needs every layer to attend to the whole cache by position (a sliding or chunked window counts
    the prompt's padding as distance, and a windowed cache drops it), and rotary frequencies that do
    not depend on the forward's length (dynamic and longrope scaling pick them from the longest
    position, which differs between the prompt and the completion pass)."""
    config = model if isinstance(model, PretrainedConfig) else _causal_lm(model).config
    text = config.get_text_config()
    other = sorted({t for t in getattr(text, "layer_types", None) or [] if t != "full_attention"})
    if other:
        return f"layers of type {', '.join(other)}"
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return f"sliding-window attention ({text.sliding_window} tokens)"
    if getattr(text, "attention_chunk_size", None):
        return f"chunked attention ({text.attention_chunk_size} tokens)"
    rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
    kinds = (
        {rope.get("rope_type", rope.get("type"))}
        if "rope_type" in rope or "type" in rope
        else {r.get("rope_type") for r in rope.values() if isinstance(r, dict)}
    )
    if kinds & {"dynamic", "longrope"}:
        return f"rotary scaling {', '.join(sorted(k for k in kinds if k in ('dynamic', 'longrope')))}"
    return None


# a packed row's length when every sample is shorter (shared_prompt_logprobs)
ROW_TOKENS = 128


def pack_rows(lengths: list[int], group: list[int], capacity: int) -> tuple[list[int], list[int], list[int]]:
    """Samples in rows of at most ``capacity`` tokens, each row holding samples of one prompt: (the row of
    each sample, its first column there, the prompt of each row). First fit, longest first, within each
    prompt's samples (a sample longer than ``capacity`` gets a row of its own)."""
    if len(lengths) != len(group):
        raise ValueError(f"{len(lengths)} lengths but {len(group)} group indices")
    row_of, start = [0] * len(lengths), [0] * len(lengths)
    fill: list[int] = []
    row_prompt: list[int] = []
    rows_of_prompt: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (group[i], -lengths[i], i)):
        rows = rows_of_prompt.setdefault(group[i], [])
        r = next((r for r in rows if fill[r] + lengths[i] <= capacity), None)
        if r is None:
            r = len(fill)
            fill.append(0)
            row_prompt.append(group[i])
            rows.append(r)
        row_of[i], start[i] = r, fill[r]
        fill[r] += lengths[i]
    return row_of, start, row_prompt


@dataclass
class _CompletionRows:
    """Where :func:`shared_prompt_logprobs`' completion pass puts each completion token: ``ids``,
    ``positions`` (R, W); ``prompt`` (R,) the prompt of each row (None: row b is prompt b's); ``row``,
    ``column`` (N, C) the row and column of completion token j of sequence i (past its end: a column of
    its row, unused; both None: row i is completion i); ``mask``: the attention mask over the prompt's
    keys then the row's (2-D when each row holds one completion, else (R, 1, W, P + W) boolean: a token
    sees its prompt and its own completion's earlier tokens)."""

    ids: torch.Tensor
    positions: torch.Tensor
    prompt: torch.Tensor | None
    row: torch.Tensor | None
    column: torch.Tensor | None
    mask: torch.Tensor


def _completion_rows(batch: PromptGroups, pack: bool) -> _CompletionRows:
    """The completion pass's rows: packed (:func:`pack_rows`) when ``pack`` and that holds fewer padded
    tokens than one completion a row (it may not: rows are padded to the longest row), else one a row."""
    n, width = batch.completion_ids.shape
    device = batch.completion_ids.device
    columns = torch.arange(width, device=device)
    if pack:
        lengths = batch.completion_mask.sum(-1).long()
        row_of, start, row_prompt = pack_rows(sizes := lengths.tolist(), batch.group.tolist(), max(width, ROW_TOKENS))
        r, w = len(row_prompt), max(s + k for s, k in zip(start, sizes))
    # one completion a row
    if not pack or r * w >= n * width:
        mask = torch.cat([batch.prompt_mask[batch.group], batch.completion_mask.long()], dim=1)
        return _CompletionRows(
            batch.completion_ids, batch.prompt_lengths[batch.group, None] + columns, batch.group, None, None, mask
        )
    row_of, start = torch.tensor(row_of, device=device), torch.tensor(start, device=device)
    prompt = torch.tensor(row_prompt, device=device)
    # (N, C)
    real = columns[None] < lengths[:, None]
    rows, cols = row_of[:, None].expand(n, width), (start[:, None] + columns).clamp(max=w - 1)
    ids = torch.zeros((r, w), dtype=torch.long, device=device)
    ids[rows[real], cols[real]] = batch.completion_ids[real]
    # -1: padding
    sequence = torch.full((r, w), -1, dtype=torch.long, device=device)
    sequence[rows[real], cols[real]] = torch.arange(n, device=device)[:, None].expand(n, width)[real]
    positions = batch.prompt_lengths[prompt, None].expand(r, w).clone()
    positions[rows[real], cols[real]] = (batch.prompt_lengths[batch.group, None] + columns)[real]
    q = torch.arange(w, device=device)
    sees_own = (sequence[:, :, None] == sequence[:, None, :]) & (sequence[:, None, :] >= 0) & (q[:, None] >= q[None, :])
    # padding too: its rows stay finite
    sees_prompt = (batch.prompt_mask[prompt] > 0)[:, None, :].expand(r, w, -1)
    mask = torch.cat([sees_prompt, sees_own], dim=-1)[:, None]
    # row b is prompt b's: no copy of its keys
    same = r == len(batch.prompt_ids) and row_prompt == list(range(r))
    return _CompletionRows(ids, positions, None if same else prompt, rows, cols, mask)


def shared_prompt_logprobs(
    model,
    batch: PromptGroups,
    temperature: Temperature = 1.0,
    chunk_mib: float = DEFAULT_CHUNK_MIB,
    pack: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each completion token, each shared prompt run through the model once: (logp (N, C),
    mask (N, C)) where column j is completion token j.

    The prompts go through the model once (B rows) and keep their keys and values; the completions then
    run on copies of them, at positions after their prompt (padding between masked out), so a group of
    G samples of a prompt costs P + G * C tokens of forward and backward instead of G * (P + C).
    ``pack`` (``learner.pack_samples``; under sdpa attention only): a prompt's completions share rows,
    back to back (:func:`pack_rows`), a token attending to its prompt and its own completion's earlier
    tokens alone; a row holds up to ``ROW_TOKENS`` (128) tokens, or the longest completion where that is
    longer, so a token attends to at most that many completion keys (short completions: one row a
    prompt; long ones fill each other's padding, so a row is never longer than an unpacked one). Rows
    are padded to the longest row, so packing is used only where its rows hold fewer tokens than one
    completion a row; when every prompt has one row, the rows run on the prompts' own keys (no copy).
    Otherwise one completion a row, on its own copy of its prompt's keys. The first completion token's log-prob comes from the prompt's
    last hidden state, the others from the completion pass. Gradients reach the prompt pass through its
    keys and values (summed over the group). Equal to :func:`token_logprobs` of the same sequences up to
    float rounding (the attention sums run in another order). The prompt pass runs on the module under DDP, the
    completion pass through ``model`` itself, so DDP prepares its all-reduce once. Needs the model's
    key-value cache in training, which gradient checkpointing switches off (transformers' layers drop
    it), and a model :func:`prompt_sharing_blocker` finds nothing against.
    """
    _check_temperature(temperature)
    inner = getattr(model, "module", model)
    rows = _completion_rows(batch, pack and _causal_lm(model).config._attn_implementation == "sdpa")
    with _hidden_states_out(model) as head:
        out = inner(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, use_cache=True)
        cache = out.past_key_values
        if cache is None or cache.get_seq_length() != batch.prompt_ids.shape[1]:
            raise ValueError(
                "shared-prompt log-probs need the model's key-value cache (off under gradient checkpointing)"
            )
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in getattr(cache, "layers", [None])):
            raise ValueError(
                "shared-prompt log-probs need a plain key-value cache in every layer (full attention);"
                " set learner.share_prompts false for this model"
            )
        last = out.logits[torch.arange(len(batch.prompt_ids), device=rows.ids.device), batch.prompt_lengths - 1]
        # each row's own (differentiable) copy of its prompt's keys and values
        if rows.prompt is not None:
            cache.batch_select_indices(rows.prompt)
        # (R, W, H): a completion's column j predicts its token j + 1
        hidden = model(
            input_ids=rows.ids,
            attention_mask=rows.mask,
            position_ids=rows.positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
    if rows.row is not None:
        # (N, C, H)
        hidden = hidden[rows.row, rows.column]
    # the state predicting each completion token
    hidden = torch.cat([last[batch.group, None], hidden[:, :-1]], dim=1)
    return _completion_logprobs(
        head, hidden, batch.completion_ids, batch.completion_mask, temperature, _causal_lm(model), chunk_mib
    )
