"""``countdown_retry``: countdown with feedback. A wrong answer is told what it evaluates to, or why it is
not a valid answer, and the model tries again on the next line, up to the config's ``max_turns``.

The transcript stays in countdown's own plain format, so a model pretrained on such dialogues reads it
without a chat template::

    nums 3 5 7 target 22
    expr: 3+5*7<eos>
    evaluates to 38, target 22
    expr: 3*5+7<eos>

The reward is the judge's on the latest answer (1.0 once it is right, which ends the episode). The
embedded model learns the format from such dialogues in its pretraining (``model.tiny.pretrain_retries``).
"""

from __future__ import annotations

from polyray.envs.base import Environment, Step
from polyray.tasks.base import Prompt
from polyray.tasks.countdown import retry_feedback as feedback


class CountdownRetryEnv(Environment):
    name = "countdown_retry"

    def reset(self, prompt: Prompt) -> str:
        self.prompt = prompt
        return prompt.text

    def step(self, model_text: str) -> Step:
        judgement = self.task.judge(self.prompt, model_text)
        if self.task.is_correct(judgement.reward):
            return Step(None, judgement.reward, done=True, info={"reason": judgement.reason})
        return Step(feedback(judgement.reason), judgement.reward, done=False, info={"reason": judgement.reason})
