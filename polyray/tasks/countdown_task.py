"""The countdown task bound to its config: prompt splits and the verifier."""

from __future__ import annotations

from polyray.tasks import countdown
from polyray.tasks.base import Judgement, Prompt


class CountdownTask:
    name = "countdown"

    def __init__(self, config):
        self.config = config
        self.spec = countdown.CountdownSpec(
            num_numbers=config.num_numbers,
            max_number=config.max_number,
            min_operands=config.min_operands,
            max_target=config.max_target,
        )

    def prompts(self, split: str, count: int) -> list[Prompt]:
        return countdown.generate_prompts(split, count, self.config.seed, self.spec)

    def judge(self, prompt: Prompt, completion: str) -> Judgement:
        return countdown.judge(completion, prompt.meta["numbers"], prompt.meta["target"])
