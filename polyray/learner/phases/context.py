"""What every phase's step works with: the :class:`StepContext` (model, ranks, micro-batches, the
gradient accumulation that makes a shard's micro-batches add up to the whole batch's step), the
broadcast of rank 0's step data, and the rollout log."""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from polyray.learner.batch import micro_batches
from polyray.models.batching import DEFAULT_CHUNK_MIB, PromptGroups, shared_prompt_logprobs, token_logprobs
from polyray.tasks.base import Prompt, Task

if TYPE_CHECKING:
    from polyray.rollout.worker import Sample


@dataclass(kw_only=True)
class StepContext:
    """What a phase's step works with on its rank, built by keyword (neighbours share types)."""

    # DDP-wrapped peft model
    model: Any
    tokenizer: Any
    rank: int
    world: int
    seed: int
    # (prompts, (B, G) texts) -> (B, G) rewards; rank 0 only (it scores rollouts)
    reward_fn: Any = None
    # peft adapter name of the frozen KL reference (None: adapter disabled)
    reference_adapter: str | None = None
    # RolloutLog: rank 0 writes every scored rollout (learner.log_rollouts)
    rollout_log: Any = None
    # padded tokens per forward/backward (None: the shard in one pass)
    micro_batch_tokens: int | None = None
    # logits computed at once for token log-probs (0: all)
    logits_chunk_mib: float = DEFAULT_CHUNK_MIB
    # GRPO: each group's prompt through the model once (learner.share_prompts)
    share_prompts: bool = False
    # with share_prompts: a prompt's samples share rows (learner.pack_samples)
    pack_samples: bool = True
    # the KL reference adapter as a rollout worker loads it (a path, or a cluster.storage reference; None: the base)
    reference_source: str | None = None
    # the phase's incoming adapter as a rollout worker loads it (None: the phase starts from the base model)
    init_source: str | None = None
    # the run's multi-turn environment config (None: one completion per sample)
    env: Any = None

    @property
    def peft_model(self):
        return getattr(self.model, "module", self.model)

    @property
    def device(self) -> torch.device:
        return next(self.peft_model.parameters()).device

    def global_sum(self, *values: float) -> list[float]:
        """Sum of each value over the learner ranks (the whole batch's counts)."""
        if self.world == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        return t.tolist()

    def global_max(self, value: float) -> float:
        """The largest of ``value`` over the learner ranks."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def logprobs(self, model, batch, temperature=1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`~polyray.models.batching.token_logprobs` (a :class:`PromptGroups` batch:
        :func:`~polyray.models.batching.shared_prompt_logprobs`) with this learner's logits chunk."""
        if isinstance(batch, PromptGroups):
            return shared_prompt_logprobs(
                model, batch, temperature, chunk_mib=self.logits_chunk_mib, pack=self.pack_samples
            )
        return token_logprobs(model, batch, temperature, self.logits_chunk_mib)

    def reference_logprobs(self, batch, temperature=1.0) -> torch.Tensor:
        """log pi_ref of the batch's tokens (laid out as :meth:`logprobs`), no grad: the frozen reference
        adapter, or the adapter-disabled base when there is none."""
        peft = self.peft_model
        with torch.no_grad():
            if self.reference_adapter is None:
                with peft.disable_adapter():
                    return self.logprobs(peft, batch, temperature)[0]
            peft.set_adapter(self.reference_adapter, inference_mode=True)
            try:
                return self.logprobs(peft, batch, temperature)[0]
            finally:
                # also makes the policy adapter trainable again
                peft.set_adapter("default")

    def micro_batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices of this rank's sequences (of these lengths), one list per micro-batch."""
        return micro_batches(lengths, self.micro_batch_tokens)

    def accumulate(self, parts: list, loss_of) -> dict[str, float]:
        """Forward and backward each micro-batch in ``parts``; returns the sums over them of their
        ``loss`` and of the metric sums ``loss_of(part) -> (loss, {name: sum})`` gives.

        Each part's loss is its share of the whole batch's loss (whole-batch counts), times the
        world size because DDP averages gradients over ranks: the gradients add up to the batch's.
        DDP all-reduces on the last part's backward only (``no_sync`` before it). No parts: a zero
        loss, so the rank still joins the all-reduce."""
        sums: dict[str, float] = defaultdict(float)
        if not parts:
            (self.zero_loss() * self.world).backward()
            sums["loss"] = 0.0
            return sums
        no_sync = getattr(self.model, "no_sync", None)
        for i, part in enumerate(parts):
            with no_sync() if no_sync is not None and i < len(parts) - 1 else nullcontext():
                loss, metrics = loss_of(part)
                (loss * self.world).backward()
            sums["loss"] += float(loss.detach())
            for name, value in metrics.items():
                sums[name] += float(value)
        return sums

    def zero_loss(self) -> torch.Tensor:
        """A loss of 0 through the DDP forward (a rank with nothing to train on still joins the all-reduce)."""
        token = torch.full((1, 1), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        return self.model(input_ids=token).logits.float().sum() * 0.0


@dataclass
class RolloutLog:
    """Appends each scored rollout to ``rollouts.jsonl`` (through ``logs``, a
    :class:`~polyray.learner.logs.StepLogs`): the reward's item as sent, and the reward the learner
    used, so anyone can score the same items again and compare."""

    logs: Any
    phase: str
    task: Task

    def __call__(self, step: int, prompts: list[Prompt], groups: list[list[Sample]], rewards) -> None:
        """Rank 0, step ``step`` (0-based): each sample with the adapter version it was drawn under
        (with rollouts ahead, one older than the version the learner holds at the step)."""
        rows = [
            {
                "phase": self.phase,
                "step": step + 1,
                "version": sample.version,
                "item": self.task.reward_item(prompt, sample.text),
                "reward": _reward(rewards[b, g]),
            }
            for b, (prompt, group) in enumerate(zip(prompts, groups))
            for g, sample in enumerate(group)
        ]
        self.logs.append("rollouts.jsonl", *rows)


def _reward(value) -> float | None:
    """A reward as rollouts.jsonl records it: None where the reward had no score (NaN is no JSON)."""
    value = float(value)
    return None if math.isnan(value) else value


def broadcast_from_rank0(obj: Any, ctx: StepContext) -> Any:
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
