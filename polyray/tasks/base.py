"""What every task provides: prompts with references, and a judge for completions.

The correctness rule lives here, once: a completion counts as correct (for pass@k,
DER and the collapse point) when its reward is >= the task's ``success_threshold``
(1.0 for the verifiable tasks; configurable for graded JSONL tasks).
"""

from __future__ import annotations

import copy
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from polyray.io import DataError


@dataclass(frozen=True)
class Prompt:
    text: str
    # one canonical completion (what SFT imitates)
    reference: str
    # what the judge needs
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Judgement:
    # 1.0 means the completion passes (verifiable tasks); graded tasks: their quality
    reward: float
    reason: str
    # graded tasks: every reference metric
    metrics: dict[str, float] = field(default_factory=dict)


def is_correct(reward: float, threshold: float = 1.0) -> bool:
    """The one correctness rule: reward at or above the task's success threshold."""
    return reward >= threshold


class TaskError(DataError):
    """A task cannot do what the run asks of it; the message says which field to change."""


class Task(ABC):
    """Base of every task: ``prompts(split, count)`` and ``judge(prompt, completion)``.

    ``judge_groups`` judges every completion of every prompt; tasks override it to batch
    (JSONL: one encoder call) or to run in parallel (HumanEval: sandboxes on threads).

    For training, a task also names the registry reward that scores its GRPO rollouts by
    default (``reward_name``) with the parameters it supplies (``reward_defaults``), turns a
    completion into that reward's item (``reward_item``), and, when the embedded model can be
    built for it, hands out a pretraining corpus disjoint from its val and test prompts
    (``pretrain_corpus``, identified by ``corpus_key``).
    """

    name: str = "task"
    success_threshold: float = 1.0
    # reward is a quality score (pass@k counts rewards >= threshold), not pass/fail
    graded: bool = False
    # what the reward measures, for tables
    quality_name: str = "reward"
    # e.g. bad lines of the user's file that were skipped
    data_warning: str | None = None
    # has a train split to draw in-context examples from
    supports_few_shot: bool = True
    # sampling stops where the answer ends (the judge cuts there too)
    stop_sequences: tuple[str, ...] = ()
    # prompts go through a chat template (with_prompt_format): answers are whole replies
    chat_format: bool = False
    # False for tasks whose answer continues the prompt's text (always plain)
    chat_format_ok: bool = True

    @abstractmethod
    def prompts(self, split: str, count: int | None = None) -> list[Prompt]:
        """The first ``count`` prompts of ``split`` (None: the config's ``n_<split>``, else all)."""

    @abstractmethod
    def judge(self, prompt: Prompt, completion: str) -> Judgement: ...

    def judge_groups(
        self,
        prompts: Sequence[Prompt],
        groups: Sequence[Sequence[str]],
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[Judgement]]:
        """``judge`` of each completion; ``groups[i]`` are prompt i's completions."""
        out = []
        for p, g in zip(prompts, groups):
            out.append([self.judge(p, t) for t in g])
            if on_done:
                on_done(len(g))
        return out

    def is_correct(self, reward: float) -> bool:
        return is_correct(reward, self.success_threshold)

    def split_size(self, split: str) -> int | None:
        """The config's ``n_<split>`` (None when the task has none, or leaves it to the data)."""
        return getattr(getattr(self, "config", None), f"n_{split}", None)

    # ---- training ---------------------------------------------------------------------------
    # registry reward (polyray.reward) that scores GRPO rollouts by default
    reward_name: str = "countdown"

    def reward_defaults(self) -> dict[str, dict[str, Any]]:
        """Parameters this task supplies to registry rewards, by reward name (e.g. the engagement model's path)."""
        return {}

    def reward_item(self, prompt: Prompt, completion: str) -> dict[str, Any]:
        """The registry reward's item (``polyray.reward.RewardItem`` fields) for one completion: the
        user's prompt as written (``meta["raw_prompt"]`` when the model saw a template or chat
        format of it), the reference, and the judge's metadata."""
        meta = {k: v for k, v in prompt.meta.items() if k != "raw_prompt"}
        return {
            "prompt": prompt.meta.get("raw_prompt", prompt.text),
            "completion": completion,
            "reference": prompt.reference or None,
            "metadata": meta,
        }

    def pretrain_corpus(self, n_prompts: int, noise: float, seed: int) -> list[tuple[str, str]]:
        """(model input, completion) pairs the embedded model pretrains on, never from val or test prompts.

        ``n_prompts``: distinct prompts wanted (generated tasks); ``noise``: share of wrong completions
        mixed in where the task can make them; ``seed``: the draw."""
        raise TaskError(
            f"model.source: the embedded model cannot be built for task {self.name!r} (it has no pretraining"
            " corpus); set model.source to a model directory or hub id"
        )

    def with_retries(self, pairs: list[tuple[str, str]], share: float, seed: int, eos: str) -> list[tuple[str, str]]:
        """``pairs`` of :meth:`pretrain_corpus` with a ``share`` of their right answers as retry dialogues:
        wrong answers, each ended by ``eos`` and followed by the task's multi-turn feedback, then the answer."""
        raise TaskError(
            f"model.tiny.pretrain_retries: task {self.name!r} has no multi-turn environment to write retry"
            " dialogues for; set it to 0"
        )

    def check_references(self) -> None:
        """Raise :class:`TaskError` naming where when a train prompt has no reference (SFT imitates them)."""

    def corpus_key(self) -> dict[str, Any]:
        """What determines ``pretrain_corpus`` (the embedded model's cache key includes it)."""
        return {"type": self.name}


def with_prompt_format(task: Task, render: Callable[[str], str]) -> Task:
    """``task`` whose prompts the model sees as ``render(text)`` (e.g. through a chat template), or as
    ``render(text, messages=...)`` when ``render`` takes ``messages`` and the prompt has a conversation
    (a system prompt or earlier turns: ``meta["messages"]``).

    Judges and rewards keep seeing the prompt as written (``meta["raw_prompt"]``); a few-shot
    prefix no longer applies, since every prompt is a whole conversation, and nor do the task's
    stop sequences (a chat answer ends at the end of the model's turn)."""
    formatted = copy.copy(task)
    inner = task.prompts
    takes_messages = "messages" in inspect.signature(render).parameters

    def show(p: Prompt) -> str:
        # a prompt with a system prompt or earlier turns carries them as meta["messages"]; a renderer that
        # takes messages puts them in their own turns, any other sees the text (system prompt before it)
        if takes_messages and p.meta.get("messages"):
            return render(p.text, messages=p.meta["messages"])
        return render(p.text)

    def prompts(split: str, count: int | None = None) -> list[Prompt]:
        return [
            Prompt(show(p), p.reference, {**p.meta, "raw_prompt": p.meta.get("raw_prompt", p.text)})
            for p in inner(split, count)
        ]

    formatted.prompts = prompts  # type: ignore[method-assign]
    formatted.supports_few_shot = False
    # a chat answer ends at the model's end of turn
    formatted.chat_format, formatted.stop_sequences = True, ()
    return formatted
