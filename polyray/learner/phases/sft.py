"""Supervised fine-tuning: the NLL of the task's reference completions (``compute_sft_loss``)."""

from __future__ import annotations

import random

from polyray.config import SFTPhaseConfig
from polyray.learner.batch import Sequences
from polyray.learner.phases.base import Phase
from polyray.learner.phases.context import StepContext
from polyray.objectives.sft import compute_sft_loss
from polyray.tasks.base import Prompt, Task


def encode_references(prompts: list[Prompt], tokenizer) -> list[tuple[list[int], list[int]]]:
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [(enc(p.text), enc(p.reference) + [tokenizer.eos_token_id]) for p in prompts]


class SFTPhase(Phase):
    """NLL of the canonical references; publishes its adapter only at the end (nothing samples mid-phase)."""

    config_type = SFTPhaseConfig

    def __init__(self, cfg: SFTPhaseConfig, *, task: Task, n_train: int, ctx: StepContext, pool=None):
        self.cfg, self.ctx = cfg, ctx
        self.data = encode_references(task.prompts("train", n_train), ctx.tokenizer)

    def reference_batch(self, step: int) -> Sequences:
        """This rank's shard of the step's references; the same draw on every rank. The draw is keyed
        by the phase's name, so two phases of one run never replay each other's batches."""
        rng = random.Random(f"{self.cfg.name}:{self.ctx.seed}:{step}")
        batch_idx = [rng.randrange(len(self.data)) for _ in range(self.cfg.batch_size)]
        pairs = [self.data[i] for i in batch_idx[self.ctx.rank :: self.ctx.world]]
        return Sequences([prompt for prompt, _ in pairs], [completion for _, completion in pairs])

    def reference_tokens(self, refs: Sequences) -> float:
        """Completion tokens of the whole step's references (every rank's shard)."""
        return self.ctx.global_sum(refs.num_tokens())[0]

    def step(self, step: int, version: int) -> dict[str, float]:
        ctx, refs = self.ctx, self.reference_batch(step)
        num_tokens = self.reference_tokens(refs)

        def loss_of(part: Sequences):
            logp, mask = ctx.logprobs(ctx.model, part.pack(ctx.tokenizer.pad_token_id, ctx.device))
            return compute_sft_loss(logp, mask, num_tokens=num_tokens)[0], {}

        sums = ctx.accumulate([refs.select(i) for i in ctx.micro_batches(refs.lengths())], loss_of)
        loss = ctx.global_sum(sums["loss"])[0]
        return {"loss": loss, "nll": loss}
