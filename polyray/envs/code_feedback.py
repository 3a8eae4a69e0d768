"""``code_feedback``: the model writes a solution, the environment runs the problem's public tests in the
sandbox and shows what failed, the model revises, up to the config's ``max_turns``.

Two sets of tests, as a code assistant meets them. The *public* tests are what the model may see
(:meth:`polyray.tasks.code.CodeTask.public_test`: the problem's ``public_test``, else its docstring's
``>>>`` examples); a failure of theirs is the next observation, trimmed to ``max_feedback_chars``. The
*hidden* tests are the task's own judge (the problem's ``test``): the reward after every turn is their
verdict on that turn's answer, whatever the public tests said (countdown_code's test is public whole, so
there one run tells both). An answer that passes the public tests ends the episode; so does a problem
with no public tests, after one turn (there is nothing to say). On the last turn the public tests are
not run. A report longer than ``max_observation_chars`` allows beside the prompt is trimmed further.

Both run in polyray's sandbox, at most the task's ``max_workers`` at once across all of a batch's
episodes. A plain-format model reads the feedback as comments, then the prompt again to complete::

    def solve():
        \"\"\"Use each of 3, 4, 9 at most once with + - * to make 12.\"\"\"
        return 3 * 9<eos>
    # The tests failed:
    # assert exact == target, "evaluates to %s, target %s" % (exact, target)
    # AssertionError: evaluates to 27, target 12
    def solve():
        \"\"\"Use each of 3, 4, 9 at most once with + - * to make 12.\"\"\"
        return

A chat model gets it as a user turn asking for the whole function again.
"""

from __future__ import annotations

import re
import threading
import weakref

from polyray.envs.base import Environment, Step
from polyray.sandbox import SandboxResult, require_isolation
from polyray.sandbox.calls import checker_source
from polyray.tasks.base import Prompt, Task
from polyray.tasks.humaneval import run_humaneval_check

# one bound per task: every episode of a batch shares its sandboxes
_SLOTS: weakref.WeakKeyDictionary[Task, threading.BoundedSemaphore] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()
# a traceback's frame in the tests sandbox's program
_FRAME = re.compile(r'File "tests\.py", line (\d+)')


def sandbox_slots(task: Task) -> threading.BoundedSemaphore:
    """The semaphore that keeps ``task``'s sandboxes to its ``max_workers`` at once."""
    with _SLOTS_LOCK:
        slots = _SLOTS.get(task)
        if slots is None:
            slots = _SLOTS[task] = threading.BoundedSemaphore(task.config.max_workers)
        return slots


def failure_report(result: SandboxResult, source: str, limit: int) -> str:
    """What a failed test run tells the model: the line of the tests that failed (``source``: what the
    tests sandbox ran, :func:`polyray.sandbox.calls.checker_source`) and the error, or why the run stopped;
    at most ``limit`` characters (the head and the tail of a longer one)."""
    if result.status != "failed":
        text = f"{result.status}: {result.reason}"
    else:
        lines = [line for line in result.stderr.rsplit("[tests]\n", 1)[-1].splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if not line.startswith(" ")), result.reason)
        frames = [_FRAME.match(line.strip()) for line in lines]
        numbers = [int(m.group(1)) for m in frames if m]
        # the compiler's lines: "\n" ends one (str.splitlines would split at \f and \u2028 too)
        code = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        failing = code[numbers[-1] - 1].strip() if numbers and 0 < numbers[-1] <= len(code) else ""
        text = f"{failing}\n{error}" if failing else error
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


class CodeFeedbackEnv(Environment):
    name = "code_feedback"

    def reset(self, prompt: Prompt) -> str:
        sandbox = self.task.config.sandbox
        require_isolation(sandbox.min_isolation, sandbox.allow_weak_sandbox, "task.sandbox", sandbox.require_memory_cap)
        self.prompt, self.turn = prompt, 0
        with sandbox_slots(self.task):
            self.public = self.task.public_test(prompt)
        # countdown_code's public test is its hidden one: one run tells both
        self.public_is_hidden = self.public == prompt.meta["test"]
        return prompt.text

    def step(self, model_text: str) -> Step:
        self.turn += 1
        if self.public is None:
            return Step(None, self._hidden(model_text), done=True)
        if self.turn >= self.config.max_turns:  # no feedback can follow: the hidden tests only
            reward = self._hidden(model_text)
            return Step(None, reward, done=self.task.is_correct(reward))
        public = self._run(self.public, self.task.answer(model_text))
        reward = float(public.passed) if self.public_is_hidden else self._hidden(model_text)
        if public.passed:
            return Step(None, reward, done=True)
        source = checker_source(self._raw_prompt(), self.public)
        report = failure_report(public, source, self.config.max_feedback_chars)
        observation = self._observation(report)
        # the prompt again leaves less room for the report: trim it to what fits
        while (excess := len(observation) - self.config.max_observation_chars) > 0:
            if len(report) - excess < 40:
                raise ValueError(
                    f"the feedback and the prompt again need more than env.max_observation_chars"
                    f" ({self.config.max_observation_chars}): raise it"
                )
            report = failure_report(public, source, len(report) - excess)
            observation = self._observation(report)
        return Step(observation, reward, done=False)

    def _hidden(self, model_text: str) -> float:
        with sandbox_slots(self.task):
            return self.task.judge(self.prompt, model_text).reward

    def _run(self, test: str, answer: str) -> SandboxResult:
        c = self.task.config
        problem = {"prompt": self._raw_prompt(), "test": test, "entry_point": self.prompt.meta["entry_point"]}
        with sandbox_slots(self.task):
            return run_humaneval_check(problem, answer, c.timeout_s, c.memory_mb)

    def _raw_prompt(self) -> str:
        return self.prompt.meta.get("raw_prompt", self.prompt.text)

    def _observation(self, feedback: str) -> str:
        if self.task.chat_format:
            return f"The tests failed:\n```\n{feedback}\n```\nWrite the whole function again, fixed."
        comments = "".join(f"# {line}\n" for line in feedback.splitlines())
        return f"\n# The tests failed:\n{comments}{self.prompt.text}"
