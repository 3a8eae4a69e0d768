"""Token-exact multi-turn episodes: the model's turns as sampled, the environment's answers tokenised once.

An episode's history is kept as token ids from its first observation to its last model turn. What the
model generated goes in exactly as the engine sampled it, each token with its sampling log-prob and
adapter version; it is decoded once, for the environment to read, and never encoded again (a
decode→encode round trip need not give the sampled ids back: BPE re-merges, a tokenizer normalises). An
observation is rendered for the model (:func:`plain_observations`, :func:`chat_observations`) and
tokenised once, then appended with mask 0: the learner trains on model tokens only.

:func:`run_episodes` runs a batch turn by turn: every live episode's history goes to the engine in one
call per turn (the engine's prefix cache keeps earlier turns from being prefilled again), then every
environment steps, each on its own thread, so one slow or failing environment is its episode's problem
alone. The limits of the environment's config hold whatever an environment does:

- ``max_turns`` model turns; ``max_tokens`` per turn;
- ``max_total_tokens`` of history: a turn that could pass it is not started;
- ``max_seconds`` of wall clock, checked between turns and bounding each environment step;
- an observation over ``max_observation_chars``, or not text, fails its episode, as does an
  environment that raises or returns a reward that is not a finite number.

An episode ended by a limit keeps the reward it had; a failed one has ``error`` set and reward 0.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from polyray.envs.base import Environment, Step
from polyray.rollout.worker import Sample
from polyray.tasks.base import Prompt

# how an episode ended
DONE, MAX_TURNS, TOKEN_BUDGET, TIME_BUDGET, ERROR = "done", "max_turns", "token_budget", "time_budget", "error"
# an environment's error message kept in the episode
_ERROR_CHARS = 500
# what an environment call gets even when generation used up the budget: a quick one is not failed for it
STEP_GRACE_S = 1.0


@dataclass(frozen=True)
class TurnSample:
    """One model turn as the engine sampled it."""

    token_ids: list[int]
    # log pi_old of each sampled token
    logprobs: list[float]
    # adapter version that sampled it (0 = the base model)
    version: int
    # ended on EOS or a stop string rather than the token limit
    finished: bool
    # the tokens decoded once: what the environment reads
    text: str


TurnGenerator = Callable[[list[list[int]], list[int], int], list[TurnSample]]
"""(histories as token ids, one sampling seed each, most new tokens) -> one sample per history, in order."""


@dataclass
class Turn:
    # where the turn's tokens begin in its episode's ``token_ids``
    start: int
    sample: TurnSample
    # the environment's reward after this turn
    reward: float


@dataclass
class Episode:
    """One episode's whole history as token ids, with per-token training masks."""

    prompt_index: int
    # which of its prompt's k episodes
    index: int
    # the first observation (the prompt), every model turn and every observation between them
    token_ids: list[int] = field(default_factory=list)
    prompt_len: int = 0
    # 1 on model tokens, 0 on the prompt's and the observations'
    mask: list[int] = field(default_factory=list)
    # each model token's sampling log-prob; 0.0 elsewhere
    logprobs: list[float] = field(default_factory=list)
    # each model token's adapter version; -1 elsewhere
    versions: list[int] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    reward: float = 0.0
    # DONE, MAX_TURNS, TOKEN_BUDGET, TIME_BUDGET or ERROR; "" while running
    end: str = ""
    error: str | None = None

    @property
    def final_text(self) -> str:
        """The last model turn's text (the episode's answer); "" when it has none."""
        return self.turns[-1].sample.text if self.turns else ""

    def rewards_by_turn(self, turns: int) -> list[float]:
        """The reward after each of the first ``turns`` turns, the last one held past the episode's end
        (pass@k by turn: an episode right at turn 1 is right at turn 3); a failed episode's are all 0."""
        rewards = [0.0] * turns if self.error else [t.reward for t in self.turns][:turns]
        held = rewards[-1] if rewards else 0.0
        return rewards + [held] * (turns - len(rewards))

    def completion(self) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, everything after them, its mask): what the learner trains on, model tokens only."""
        return self.token_ids[: self.prompt_len], self.token_ids[self.prompt_len :], self.mask[self.prompt_len :]

    def _append(self, ids: Sequence[int], *, sample: TurnSample | None = None) -> None:
        self.token_ids.extend(ids)
        if sample is None:
            self.mask.extend([0] * len(ids))
            self.logprobs.extend([0.0] * len(ids))
            self.versions.extend([-1] * len(ids))
        else:
            self.mask.extend([1] * len(ids))
            self.logprobs.extend(sample.logprobs)
            self.versions.extend([sample.version] * len(ids))

    def _fail(self, reason: str) -> None:
        self.end, self.error, self.reward = ERROR, reason[:_ERROR_CHARS], 0.0


def turn_seed(seed: int, episode: int, turn: int) -> int:
    """The sampling seed of one turn of one of a prompt's episodes: a fixed function of the prompt's seed."""
    digest = hashlib.blake2b(f"{seed}:{episode}:{turn}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") >> 1


def plain_observations(tokenizer) -> Callable[[str], list[int]]:
    """Observations appended as their own text (a model that reads the task's plain format)."""
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_observations(tokenizer, role: str = "user") -> Callable[[str], list[int]]:
    """Observations appended as a ``role`` turn of the tokenizer's chat template, then the assistant's
    generation prompt: the template's text after an assistant turn, so its own markers open the turn.
    What the template writes between an assistant's reply and its end of turn (a newline after ChatML's
    ``<|im_end|>``) comes first: the model's turn ended at its end-of-turn token and never sampled it."""
    head = [{"role": "user", "content": "."}, {"role": "assistant", "content": "X"}]
    before = tokenizer.apply_chat_template(head, tokenize=False)
    end = tokenizer.eos_token or ""
    rest = before[before.rfind("X") + 1 :]
    between = rest[len(end) :] if end and rest.startswith(end) else rest

    def encode(text: str) -> list[int]:
        after = tokenizer.apply_chat_template(
            [*head, {"role": role, "content": text}], tokenize=False, add_generation_prompt=True
        )
        if not after.startswith(before):
            raise ValueError(f"the chat template does not render a {role} turn after an earlier turn unchanged")
        return tokenizer(between + after[len(before) :], add_special_tokens=False)["input_ids"]

    return encode


def observation_error(observation: Any, limit: int) -> str | None:
    """Why ``observation`` cannot be shown to the model, or None when it can."""
    if isinstance(observation, (bytes, bytearray, memoryview)):
        return f"the observation is binary ({len(observation)} bytes), not text"
    if not isinstance(observation, str):
        return f"the observation is a {type(observation).__name__}, not text"
    if len(observation) > limit:
        return f"an observation of {len(observation)} characters, over env.max_observation_chars {limit}"
    if "\x00" in observation:
        return "the observation holds a NUL character: binary, not text"
    try:
        observation.encode("utf-8")
    except UnicodeEncodeError:
        return "the observation is not valid Unicode text"
    return None


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """``fn()`` started on a daemon thread, its result or error to land in the returned box. A hung call is
    left behind: a daemon thread holds neither the batch nor the process's exit."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - any failure is the episode's
            box["error"] = exc

    thread = threading.Thread(target=run, name="polyray-env", daemon=True)
    thread.start()
    return thread, box


def _describe(exc: BaseException) -> str:
    return f"the environment raised {type(exc).__name__}: {exc}"


def run_episodes(
    prompts: Sequence[Prompt],
    k: int,
    *,
    make_env: Callable[[], Environment],
    limits: Any,
    generate: TurnGenerator,
    encode_prompt: Callable[[str], list[int]],
    encode_observation: Callable[[str], list[int]],
    seeds: Sequence[int],
    clock: Callable[[], float] = time.monotonic,
) -> list[list[Episode]]:
    """``k`` episodes of each of ``prompts``, each in its own environment (``make_env``), under ``limits``
    (an environment config: :class:`polyray.config.envs.EnvConfigBase`); one list of episodes per prompt.

    ``generate`` samples one turn for each live history in one call (:func:`pool_turn_generator`);
    ``encode_prompt`` tokenises a first observation as the engine would a text prompt; ``encode_observation``
    renders and tokenises a later one (:func:`plain_observations`, :func:`chat_observations`). ``seeds``:
    one per prompt; turn t of episode j samples with :func:`turn_seed` of it."""
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    started = clock()
    groups = [[Episode(prompt_index=i, index=j) for j in range(k)] for i in range(len(prompts))]
    episodes = [e for group in groups for e in group]
    envs: dict[int, Environment] = {}

    def remaining() -> float:
        return limits.max_seconds - (clock() - started)

    for slot, (episode, (env, first)) in enumerate(zip(episodes, _start_all(make_env, prompts, episodes, remaining()))):
        error = observation_error(first, limits.max_observation_chars) if env is not None else first
        # a failed episode keeps its prompt as the task wrote it: its group still shares one prompt
        episode._append(encode_prompt(first if error is None else prompts[episode.prompt_index].text))
        episode.prompt_len = len(episode.token_ids)
        if error is None:
            envs[slot] = env
        else:
            episode._fail(f"reset: {error}")

    for turn in range(limits.max_turns):
        live = [slot for slot in envs if _admit(episodes[slot], limits, remaining())]
        for slot in [s for s in envs if s not in live]:
            del envs[slot]
        if not live:
            break
        samples = generate(
            [episodes[s].token_ids for s in live],
            [turn_seed(seeds[episodes[s].prompt_index], episodes[s].index, turn) for s in live],
            limits.max_tokens,
        )
        if len(samples) != len(live):
            raise RuntimeError(f"the generator returned {len(samples)} samples for {len(live)} histories")
        steps = _step_all([envs[s] for s in live], [sample.text for sample in samples], remaining())
        for slot, sample, outcome in zip(live, samples, steps):
            episode = episodes[slot]
            episode.turns.append(Turn(start=len(episode.token_ids), sample=sample, reward=0.0))
            episode._append(sample.token_ids, sample=sample)
            last = turn + 1 == limits.max_turns
            error = outcome if isinstance(outcome, str) else _step_error(outcome, limits.max_observation_chars, last)
            if error is not None:
                episode._fail(error)
                del envs[slot]
                continue
            episode.reward = episode.turns[-1].reward = float(outcome.reward)
            if outcome.done:
                episode.end = DONE
            elif last:
                episode.end = MAX_TURNS
            elif outcome.observation is None:
                episode.end = DONE
            else:
                ids = encode_observation(outcome.observation)
                if len(episode.token_ids) + len(ids) + limits.max_tokens > limits.max_total_tokens:
                    episode.end = TOKEN_BUDGET  # no room for the answer to it: the observation is not kept
                else:
                    episode._append(ids)
                    continue
            del envs[slot]
    return groups


def _start_all(
    make_env: Callable[[], Environment], prompts: Sequence[Prompt], episodes: list[Episode], timeout: float
) -> list[tuple[Environment | None, Any]]:
    """Each episode's fresh environment and first observation, or (None, why not); the resets run at once,
    all waited for within ``timeout`` s."""
    started: list[tuple[Environment | None, Any]] = []
    for episode in episodes:
        try:
            env = make_env()
        except Exception as exc:  # noqa: BLE001 - the episode's failure
            started.append((None, _describe(exc)))
            continue
        prompt = prompts[episode.prompt_index]
        started.append((env, _in_thread(lambda env=env, prompt=prompt: env.reset(prompt))))
    deadline = time.monotonic() + max(timeout, STEP_GRACE_S)
    out: list[tuple[Environment | None, Any]] = []
    for env, running in started:
        if env is None:
            out.append((None, running))
            continue
        thread, box = running
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            out.append((None, "the environment's reset outlasted the episode's env.max_seconds"))
        elif "error" in box:
            out.append((None, _describe(box["error"])))
        else:
            out.append((env, box.get("result")))
    return out


def _admit(episode: Episode, limits: Any, remaining: float) -> bool:
    """Whether ``episode`` gets another turn; if not, its end is set."""
    if episode.end:
        return False
    if len(episode.token_ids) + limits.max_tokens > limits.max_total_tokens:
        episode.end = TOKEN_BUDGET
        return False
    if remaining <= 0:
        episode.end = TIME_BUDGET
        return False
    return True


def _step_all(envs: list[Environment], texts: list[str], timeout: float) -> list[Step | str]:
    """Every environment's step on its own thread, all waited for within ``timeout`` s: each one's
    :class:`Step`, or why it has none."""
    outcomes: list[Step | str] = ["the environment's step outlasted the episode's env.max_seconds"] * len(envs)
    started = [_in_thread(lambda env=env, text=text: env.step(text)) for env, text in zip(envs, texts)]
    deadline = time.monotonic() + max(timeout, STEP_GRACE_S)
    for i, (thread, box) in enumerate(started):
        thread.join(max(deadline - time.monotonic(), 0.0))
        if not thread.is_alive():
            outcomes[i] = _describe(box["error"]) if "error" in box else box.get("result")
    return outcomes


def _step_error(step: Any, limit: int, last: bool) -> str | None:
    """Why an environment's answer cannot be used, or None; after the ``last`` turn its observation is not."""
    if not isinstance(step, Step):
        return f"the environment's step returned a {type(step).__name__}, not a Step"
    try:
        reward = float(step.reward)
    except (TypeError, ValueError):
        return f"the environment's reward {step.reward!r} is not a number"
    if not math.isfinite(reward):
        return f"the environment's reward {reward} is not finite"
    if not (step.done or last or step.observation is None):
        return observation_error(step.observation, limit)
    return None


def pool_turn_generator(pool, sampling, version: int | None = None) -> TurnGenerator:
    """A :data:`TurnGenerator` on a rollout pool (:class:`polyray.rollout.pool.RolloutPool`): each history
    a token-id prompt, sampled once under ``sampling`` (its ``max_tokens`` replaced by the turn's) by
    adapter ``version`` (None: the base model)."""
    from polyray.rollout.request import GenerationRequest

    def generate(histories: list[list[int]], seeds: list[int], max_tokens: int) -> list[TurnSample]:
        request = GenerationRequest(
            prompts=[{"prompt_token_ids": list(ids)} for ids in histories],
            n=1,
            sampling=sampling.model_copy(update={"max_tokens": max_tokens}),
            version=version,
            seeds=list(seeds),
        )
        return [
            TurnSample(
                token_ids=list(s.token_ids), logprobs=list(s.logprobs), version=s.version, finished=s.finished,
                text=s.text,
            )
            for group in pool.generate(request)
            for s in group[:1]
        ]  # fmt: skip

    return generate


@dataclass
class EpisodeSample(Sample):
    """An episode as a rollout sample, for the phases that train on samples: the prompt, then everything
    after it as the "completion" with its ``loss_mask`` on the model turns; ``text`` is the final answer.
    ``reward`` is the environment's (None when the episode failed: its ``error``)."""

    reward: float | None = None
    error: str | None = None
    end: str = ""
    turns: int = 0
    # the reward after each turn up to the environment's max_turns, held past the episode's end
    rewards_by_turn: list[float] = field(default_factory=list)


def as_samples(groups: list[list[Episode]], max_turns: int, pad_id: int, version: int) -> list[list[EpisodeSample]]:
    """Each episode as an :class:`EpisodeSample` of adapter ``version`` (what its turns were sampled with). One
    with no model turn (its environment failed at reset, or no turn fitted its budget) keeps one masked
    ``pad_id`` token, so a batch of whole groups still packs; it trains on nothing and is unscored."""
    out = []
    for group in groups:
        row = []
        for e in group:
            prompt_ids, completion, mask = e.completion()
            logprobs = e.logprobs[e.prompt_len :]
            if not completion:
                completion, mask, logprobs = [pad_id], [0], [0.0]
            row.append(
                EpisodeSample(
                    prompt_index=e.prompt_index,
                    text=e.final_text,
                    prompt_token_ids=prompt_ids,
                    token_ids=completion,
                    logprobs=logprobs,
                    version=e.turns[0].sample.version if e.turns else version,
                    finished=e.end == DONE,
                    loss_mask=mask,
                    reward=None if e.error or not e.turns else e.reward,
                    error=e.error,
                    end=e.end,
                    turns=len(e.turns),
                    rewards_by_turn=e.rewards_by_turn(max_turns),
                )
            )
        out.append(row)
    return out


class PendingEpisodes:
    """A batch of episodes running on a daemon thread (each turn a call to the pool); :meth:`result` waits
    for them as :class:`EpisodeSample` groups, or raises what stopped the batch."""

    def __init__(self, run: Callable[[], list[list[EpisodeSample]]]):
        self._done = threading.Event()
        self._box: dict[str, Any] = {}

        def target() -> None:
            try:
                self._box["result"] = run()
            except BaseException as exc:  # noqa: BLE001 - raised where the result is asked for
                self._box["error"] = exc
            finally:
                self._done.set()

        threading.Thread(target=target, name="polyray-episodes", daemon=True).start()

    def result(self, retries: int = 1) -> list[list[EpisodeSample]]:
        self._done.wait()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]


def submit_episodes(
    pool, task, prompts: Sequence[Prompt], k: int, *, env, sampling, version: int | None, seeds, tokenizer
) -> PendingEpisodes:
    """Start ``k`` episodes of ``env`` (an environment config) on each of ``task``'s ``prompts`` on ``pool``,
    sampled under ``sampling`` by adapter ``version``; observations go through the chat template when the
    task's prompts do (``task.chat_format``)."""
    from polyray.envs import env_factory

    encode = chat_observations(tokenizer) if task.chat_format else plain_observations(tokenizer)

    def run() -> list[list[EpisodeSample]]:
        groups = run_episodes(
            prompts,
            k,
            make_env=env_factory(env, task),
            limits=env,
            generate=pool_turn_generator(pool, sampling, version),
            encode_prompt=lambda text: tokenizer(text)["input_ids"],
            encode_observation=encode,
            seeds=list(seeds),
        )
        return as_samples(groups, env.max_turns, tokenizer.pad_token_id, version or 0)

    return PendingEpisodes(run)
