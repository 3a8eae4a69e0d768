"""What a learner step trains on: token sequences, and for sampled ones their sampling log-probs and advantages.

Rank 0 builds a step's :class:`TrainBatch` from its rollout groups (:meth:`TrainBatch.from_groups`)
and broadcasts it; each rank takes its :meth:`~TrainBatch.shard` and normalises the shard's loss by
the *whole* batch's counts (docs/algorithms.md §2 "Learner ranks"), so named fields replace the
positional tuples the phases used to pass around. Shards are strided (``rank::world``), by
sequence or by whole group, as the docs describe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from polyray.models.batching import PackedBatch, PromptGroups, pack_prompt_groups, pack_sequences

if TYPE_CHECKING:
    from polyray.rollout.worker import Sample


@dataclass
class Sequences:
    """N (prompt, completion) token sequences, e.g. the SFT references of a step.

    - ``prompt_ids``: list of N token-id lists, the prompt of each sequence;
    - ``completion_ids``: list of N token-id lists, the completion (the tokens that carry loss).
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def num_tokens(self) -> int:
        """Completion tokens over all sequences (the token count a token mean divides by)."""
        return sum(len(c) for c in self.completion_ids)

    def pack(self, pad_id: int, device: torch.device | str | None = None) -> PackedBatch:
        return pack_sequences(self.prompt_ids, self.completion_ids, pad_id, device)

    def lengths(self) -> list[int]:
        """Each sequence's prompt + completion tokens (its row in :meth:`pack`)."""
        return [len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids)]

    def select(self, index: list[int]) -> Sequences:
        """The sequences at ``index``, in that order."""
        return Sequences([self.prompt_ids[i] for i in index], [self.completion_ids[i] for i in index])


def micro_batches(lengths: list[int], budget: int | None) -> list[list[int]]:
    """Sequence indices split into micro-batches whose padded size (sequences x longest) fits ``budget`` tokens.

    Longest first, filled greedily: sequences of similar length share a micro-batch, so little
    of the budget goes to padding. A sequence longer than the budget gets a micro-batch of its own.
    ``budget`` None: one micro-batch with every sequence in its order (the whole-batch pass).
    """
    if budget is None:
        return [list(range(len(lengths)))] if lengths else []
    parts: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if parts and (len(parts[-1]) + 1) * lengths[parts[-1][0]] <= budget:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


@dataclass
class TrainBatch(Sequences):
    """N sampled sequences, group by group, with what the loss needs of each.

    - ``prompt_ids``, ``completion_ids``: as :class:`Sequences`; sequence i's completion has L_i tokens;
    - ``sample_logprobs``: list of N float lists, sequence i's of length L_i: each completion token's
      log-prob under the distribution it was sampled from (log pi_old; vLLM's processed log-probs);
    - ``advantages``: float64 tensor (N,), sequence i's advantage (GRPO) or diversity marginal
      (polychromic SFT);
    - ``group_size``: G, samples per prompt: sequences [b*G, (b+1)*G) are group b, so N = B*G.
      None on a shard taken by sequence, which need not hold whole groups.
    - ``reference_logprobs``: None, or N entries: sequence i's completion log-probs under the KL
      reference as the rollout workers scored them (``Sample.ref_logprobs``), None where they could not;
    - ``versions``: None, or N ints: the adapter version each sequence was sampled under;
    - ``loss_masks``: None (every completion token carries loss), or N int lists, sequence i's of length
      L_i: 1 on the tokens that carry loss (a multi-turn episode's model turns, not the observations
      between them).
    """

    sample_logprobs: list[list[float]]
    advantages: torch.Tensor
    group_size: int | None
    reference_logprobs: list[list[float] | None] | None = None
    versions: list[int] | None = None
    loss_masks: list[list[int]] | None = None

    @classmethod
    def from_groups(
        cls, groups: list[list[Sample]], advantages: torch.Tensor, keep: torch.Tensor | None = None
    ) -> TrainBatch:
        """The batch of B groups of G samples with advantages (B, G); ``keep`` (B,) bool: only those groups."""
        rows = [b for b in range(len(groups)) if keep is None or keep[b]]
        samples = [s for b in rows for s in groups[b]]
        return cls(
            prompt_ids=[s.prompt_token_ids for s in samples],
            completion_ids=[s.token_ids for s in samples],
            sample_logprobs=[s.logprobs for s in samples],
            advantages=advantages[rows].reshape(-1).to(torch.float64),
            group_size=len(groups[0]) if groups else 0,
            reference_logprobs=[s.ref_logprobs for s in samples]
            if any(s.ref_logprobs is not None for s in samples)
            else None,
            versions=[s.version for s in samples],
            loss_masks=[s.loss_mask or [1] * len(s.token_ids) for s in samples]
            if any(s.loss_mask is not None for s in samples)
            else None,
        )

    @property
    def num_groups(self) -> int:
        if not self.group_size:
            raise ValueError("this batch does not hold whole groups")
        return len(self) // self.group_size

    def shard(self, rank: int, world: int, whole_groups: bool = False) -> TrainBatch:
        """Rank ``rank``'s share of ``world``: every ``world``-th sequence from the ``rank``-th, or with
        ``whole_groups`` every ``world``-th group. Shards may be unequal or empty (more ranks than units)."""
        if whole_groups:
            size = self.group_size
            return self.select([b * size + g for b in range(self.num_groups)[rank::world] for g in range(size)], size)
        return self.select(list(range(len(self))[rank::world]))

    def select(self, index: list[int], group_size: int | None = None) -> TrainBatch:
        """The sequences at ``index``, in that order; ``group_size``: when they are whole groups."""
        return TrainBatch(
            prompt_ids=[self.prompt_ids[i] for i in index],
            completion_ids=[self.completion_ids[i] for i in index],
            sample_logprobs=[self.sample_logprobs[i] for i in index],
            advantages=self.advantages[torch.tensor(index, dtype=torch.long)],
            group_size=group_size,
            reference_logprobs=None if self.reference_logprobs is None else [self.reference_logprobs[i] for i in index],
            versions=None if self.versions is None else [self.versions[i] for i in index],
            loss_masks=None if self.loss_masks is None else [self.loss_masks[i] for i in index],
        )

    def num_tokens(self) -> int:
        """Completion tokens that carry loss, over all sequences (the token count a token mean divides by)."""
        if self.loss_masks is None:
            return super().num_tokens()
        return sum(sum(m) for m in self.loss_masks)

    def masked(self, mask: torch.Tensor, targets: bool) -> torch.Tensor:
        """``mask`` (N, width), as :meth:`target_logprobs` (``targets``) or :meth:`completion_logprobs` lay
        out completion tokens, with the tokens that carry no loss (``loss_masks``) set to 0."""
        if self.loss_masks is None:
            return mask
        starts = [len(p) - 1 for p in self.prompt_ids] if targets else [0] * len(self)
        return mask * self._columns(self.loss_masks, mask.shape[1], mask.dtype, starts).to(mask.device)

    def groups(self) -> list[range]:
        """The sequence indices of each group (the batch holds whole groups of ``group_size``)."""
        size = self.group_size
        return [range(b * size, (b + 1) * size) for b in range(self.num_groups)]

    def groups_share_prompts(self) -> bool:
        """Whether every group's samples have one prompt (:meth:`pack_groups` needs it)."""
        return all(len({tuple(self.prompt_ids[i]) for i in g}) == 1 for g in self.groups())

    def group_micro_batches(self, budget: int | None) -> list[list[int]]:
        """Sequence indices of whole groups, split into micro-batches whose padded size with each prompt
        stored once (:meth:`pack_groups`: groups x longest prompt + sequences x longest completion) fits
        ``budget`` tokens. Groups with the longest completions first, filled greedily; a group over the
        budget gets a micro-batch of its own. ``budget`` None: every group in one micro-batch, in order."""
        groups = self.groups()
        if budget is None:
            return [list(range(len(self)))] if len(self) else []
        longest = [max(len(self.completion_ids[i]) for i in g) for g in groups]
        # group indices
        parts: list[list[int]] = []
        for b in sorted(range(len(groups)), key=lambda b: -longest[b]):
            if parts:
                with_b = parts[-1] + [b]
                prompt = max(len(self.prompt_ids[groups[g][0]]) for g in with_b)
                if len(with_b) * prompt + sum(len(groups[g]) for g in with_b) * longest[parts[-1][0]] <= budget:
                    parts[-1].append(b)
                    continue
            parts.append([b])
        return [[i for b in part for i in groups[b]] for part in parts]

    def pack_groups(self, pad_id: int, device: torch.device | str | None = None) -> PromptGroups:
        """The batch with each group's prompt stored once (:func:`~polyray.models.batching.pack_prompt_groups`);
        every sample of a group must have its group's prompt."""
        prompts, groups = [], self.groups()
        for b, group in enumerate(groups):
            prompt = self.prompt_ids[group[0]]
            if any(self.prompt_ids[i] != prompt for i in group):
                raise ValueError(f"group {b}: its samples have different prompt tokens, so they cannot share one")
            prompts.append(prompt)
        group_of = [b for b, group in enumerate(groups) for _ in group]
        return pack_prompt_groups(prompts, self.completion_ids, group_of, pad_id, device=device)

    def completion_logprobs(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(N, width) CPU tensor of ``sample_logprobs`` with column j = completion token j (the layout of
        :meth:`pack_groups`' log-probs), 0 past each completion."""
        return self._columns(self.sample_logprobs, width, dtype, [0] * len(self))

    def reference_columns(self, width: int, dtype: torch.dtype, targets: bool) -> torch.Tensor | None:
        """``reference_logprobs`` laid out as :meth:`target_logprobs` (``targets``) or :meth:`completion_logprobs`
        lay out the sampling log-probs; None unless every sequence has them (the learner then computes them)."""
        if self.reference_logprobs is None or any(r is None for r in self.reference_logprobs):
            return None
        starts = [len(p) - 1 for p in self.prompt_ids] if targets else [0] * len(self)
        return self._columns(self.reference_logprobs, width, dtype, starts)

    def _columns(self, values: list[list[float]], width: int, dtype: torch.dtype, starts: list[int]) -> torch.Tensor:
        """(N, width) CPU tensor: row i holds ``values[i]`` (one per completion token) from column ``starts[i]``, 0 elsewhere."""
        out = torch.zeros((len(self), width), dtype=dtype)
        for i, (start, row) in enumerate(zip(starts, values)):
            # sized by the completion: a log-prob list of another length fails here, not silently
            out[i, start : start + len(self.completion_ids[i])] = torch.tensor(row, dtype=dtype)
        return out

    def sequence_logprobs(self) -> list[float]:
        """(N,) each sequence's sampling log-prob: the sum of its tokens' ``sample_logprobs`` (those that
        carry loss: a multi-turn episode's model tokens)."""
        if self.loss_masks is None:
            return [sum(lp) for lp in self.sample_logprobs]
        return [sum(x for x, m in zip(lp, mask) if m) for lp, mask in zip(self.sample_logprobs, self.loss_masks)]

    def target_logprobs(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(N, width) CPU tensor of ``sample_logprobs`` aligned with :meth:`pack`'s targets, 0 elsewhere.

        Target t predicts token t + 1 of the right-padded sequence, so completion token j of
        sequence i is target ``len(prompt_ids[i]) - 1 + j``."""
        return self._columns(self.sample_logprobs, width, dtype, [len(p) - 1 for p in self.prompt_ids])
