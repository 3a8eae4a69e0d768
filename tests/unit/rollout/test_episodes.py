"""Multi-turn episodes (polyray.rollout.episodes) on a scripted model: the history holds the sampled ids
byte for byte, the mask marks model tokens only, every limit holds, and a hostile environment fails its
own episode alone. The same runner on the real vLLM engine: tests/integration/test_episodes_vllm.py."""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import pytest

from polyray.config.envs import CountdownRetryEnvConfig
from polyray.config.tasks import CountdownTaskConfig
from polyray.envs import Environment, Step, env_factory
from polyray.envs.countdown_retry import feedback
from polyray.rollout.episodes import (
    DONE,
    ERROR,
    MAX_TURNS,
    TIME_BUDGET,
    TOKEN_BUDGET,
    TurnSample,
    as_samples,
    chat_observations,
    plain_observations,
    run_episodes,
    turn_seed,
)
from polyray.tasks import build_task
from polyray.tasks.base import Prompt

EMBEDDED = next((Path(__file__).resolve().parents[3] / "polyray" / "models" / "embedded").iterdir())


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(EMBEDDED)


@pytest.fixture(scope="module")
def task():
    return build_task(CountdownTaskConfig())


class ScriptedModel:
    """A turn generator that answers each (prompt, episode, turn) with the token ids scripted for it,
    found by its sampling seed; it records every history it was shown."""

    def __init__(self, tokenizer, scripts: dict[tuple[int, int, int], list[int]], seeds: list[int], k: int):
        self.tokenizer, self.seen = tokenizer, []
        self.by_seed = {turn_seed(seeds[p], e, t): ids for (p, e, t), ids in scripts.items()}
        assert len(self.by_seed) == len(scripts)  # the seeds tell every turn apart
        self.logprob = itertools.count(1)

    def __call__(self, histories, seeds, max_tokens):
        out = []
        for history, seed in zip(histories, seeds):
            self.seen.append(list(history))
            ids = self.by_seed[seed][:max_tokens]
            logprobs = [-float(next(self.logprob)) for _ in ids]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(TurnSample(token_ids=ids, logprobs=logprobs, version=7, finished=True, text=text))
        return out


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def run(task, tokenizer, prompts, scripts, *, k=1, config=None, make_env=None, clock=None):
    config = config or CountdownRetryEnvConfig()
    seeds = [100 + i for i in range(len(prompts))]
    model = ScriptedModel(tokenizer, scripts, seeds, k)
    extra = {"clock": clock} if clock else {}
    groups = run_episodes(
        prompts,
        k,
        make_env=make_env or env_factory(config, task),
        limits=config,
        generate=model,
        encode_prompt=lambda text: tokenizer(text)["input_ids"],
        encode_observation=plain_observations(tokenizer),
        seeds=seeds,
        **extra,
    )
    return groups, model


def test_the_history_holds_the_sampled_ids_even_where_decode_then_encode_would_not(task, tokenizer):
    prompt = task.prompts("train", 1)[0]  # "nums 8 16 5 target 13": " 8+5" is right
    eos = tokenizer.eos_token_id
    # turn 1: " 1" "6" "-" "3" (" 16-3", wrong) in a segmentation BPE never makes, then EOS
    one, six = ids(tokenizer, " 1"), ids(tokenizer, "6")
    first = one + six + ids(tokenizer, "-3") + [eos]
    second = ids(tokenizer, " 8+5") + [eos]
    (episodes,), model = run(task, tokenizer, [prompt], {(0, 0, 0): first, (0, 0, 1): second})
    (episode,) = episodes

    prompt_ids = tokenizer(prompt.text)["input_ids"]
    observation = ids(tokenizer, feedback(task.judge(prompt, " 16-3").reason))
    assert episode.token_ids == prompt_ids + first + observation + second
    assert episode.prompt_len == len(prompt_ids)
    assert episode.mask == [0] * len(prompt_ids) + [1] * len(first) + [0] * len(observation) + [1] * len(second)
    # turn 2 was sampled after exactly turn 1's sampled ids
    assert model.seen == [prompt_ids, prompt_ids + first + observation]
    # log-probs and versions on the model tokens, in order; nothing elsewhere
    model_logprobs = [lp for lp, m in zip(episode.logprobs, episode.mask) if m]
    assert model_logprobs == [-float(i) for i in range(1, len(first) + len(second) + 1)]
    assert {v for v, m in zip(episode.versions, episode.mask) if m} == {7}
    assert {v for v, m in zip(episode.versions, episode.mask) if not m} == {-1}
    assert (episode.end, episode.reward, episode.error) == (DONE, 1.0, None)
    assert [t.reward for t in episode.turns] == [0.0, 1.0] and episode.rewards_by_turn(3) == [0.0, 1.0, 1.0]
    assert episode.final_text.strip() == "8+5"

    # what a re-tokenising implementation would train on instead: the history decoded, then encoded again
    retokenised = tokenizer(tokenizer.decode(episode.token_ids))["input_ids"]
    assert retokenised != episode.token_ids
    # the cause, in turn 1 alone: BPE merges " 1" "6" back into " 16"
    assert ids(tokenizer, tokenizer.decode(one + six)) != one + six


def test_an_episode_always_wrong_stops_at_max_turns_on_a_model_turn(task, tokenizer):
    prompt = task.prompts("train", 1)[0]
    wrong = ids(tokenizer, " 5+5") + [tokenizer.eos_token_id]
    scripts = {(0, e, t): wrong for e in range(2) for t in range(3)}
    (episodes,), model = run(task, tokenizer, [prompt], scripts, k=2)
    for episode in episodes:
        assert (episode.end, len(episode.turns), episode.reward) == (MAX_TURNS, 3, 0.0)
        assert episode.token_ids[-len(wrong) :] == wrong  # the last feedback is not kept: nothing answers it
        assert episode.mask[-len(wrong) :] == [1] * len(wrong)
        assert episode.rewards_by_turn(3) == [0.0, 0.0, 0.0]
    assert len(model.seen) == 6  # both episodes, three turns, one history each


def test_a_turn_that_could_pass_the_token_budget_is_not_started(task, tokenizer):
    prompt = task.prompts("train", 1)[0]
    n_prompt = len(tokenizer(prompt.text)["input_ids"])
    wrong = ids(tokenizer, " 5+5") + [tokenizer.eos_token_id]
    # room for the first turn, not for feedback and a second one
    config = CountdownRetryEnvConfig(max_tokens=8, max_total_tokens=n_prompt + len(wrong) + 8)
    (episodes,), model = run(task, tokenizer, [prompt], {(0, 0, t): wrong for t in range(3)}, config=config)
    (episode,) = episodes
    assert (episode.end, len(episode.turns)) == (TOKEN_BUDGET, 1)
    assert len(episode.token_ids) == n_prompt + len(wrong) <= config.max_total_tokens

    # a prompt that leaves no room for a turn: no turn at all
    tight = CountdownRetryEnvConfig(max_tokens=8, max_total_tokens=n_prompt + 7)
    (episodes,), model = run(task, tokenizer, [prompt], {}, config=tight)
    assert (episodes[0].end, episodes[0].turns, model.seen) == (TOKEN_BUDGET, [], [])


def test_the_wall_clock_budget_ends_episodes_between_turns(task, tokenizer):
    prompt = task.prompts("train", 1)[0]
    wrong = ids(tokenizer, " 5+5") + [tokenizer.eos_token_id]
    now = itertools.count(0.0, 40.0)  # every look at the clock: 40 s later
    config = CountdownRetryEnvConfig(max_seconds=100.0)
    (episodes,), _ = run(
        task, tokenizer, [prompt], {(0, 0, t): wrong for t in range(3)}, config=config, clock=lambda: next(now)
    )
    assert episodes[0].end == TIME_BUDGET and 1 <= len(episodes[0].turns) < 3
    assert episodes[0].error is None  # a budget keeps the reward it had; only failures are errors


class Hostile(Environment):
    """An environment that misbehaves as ``mode`` says at its first step."""

    release = threading.Event()

    def __init__(self, mode: str):
        self.mode = mode

    def reset(self, prompt: Prompt) -> str:
        if self.mode == "reset":
            raise RuntimeError("no such sandbox")
        return prompt.text

    def step(self, model_text: str):
        if self.mode == "huge":
            return Step("x" * 10_000_000, 0.0, done=False)
        if self.mode == "binary":
            return Step(b"\x89PNG\r\n", 0.0, done=False)  # type: ignore[arg-type]
        if self.mode == "nul":
            return Step("ok\x00\x01", 0.0, done=False)
        if self.mode == "raise":
            raise ValueError("tests crashed the harness")
        if self.mode == "nan":
            return Step(None, math.nan, done=True)
        if self.mode == "not_a_step":
            return ("observation", 1.0, False)
        if self.mode == "hang":
            self.release.wait()
        return Step(None, 1.0, done=True)


def test_a_hostile_environment_fails_its_own_episode_and_the_rest_of_the_batch_goes_on(task, tokenizer):
    modes = ["huge", "binary", "nul", "raise", "nan", "not_a_step", "hang", "reset", "fine", "fine"]
    prompts = task.prompts("train", len(modes))
    made = iter(Hostile(mode) for mode in modes)
    answer = ids(tokenizer, " 1+1") + [tokenizer.eos_token_id]
    config = CountdownRetryEnvConfig(max_seconds=3.0)
    try:
        groups, _ = run(
            task,
            tokenizer,
            prompts,
            {(i, 0, 0): answer for i in range(len(modes))},
            config=config,
            make_env=lambda: next(made),
        )
    finally:
        Hostile.release.set()
    by_mode = {mode: group[0] for mode, group in zip(modes, groups)}
    expected = {
        "huge": "over env.max_observation_chars 4096",
        "binary": "binary (6 bytes)",
        "nul": "NUL character",
        "raise": "raised ValueError: tests crashed the harness",
        "nan": "not finite",
        "not_a_step": "returned a tuple, not a Step",
        "hang": "outlasted the episode's env.max_seconds",
        "reset": "reset: the environment raised RuntimeError: no such sandbox",
    }
    for mode, reason in expected.items():
        episode = by_mode[mode]
        assert episode.end == ERROR and reason in episode.error, (mode, episode.error)
        assert episode.reward == 0.0 and episode.rewards_by_turn(2) == [0.0, 0.0]
    for episode in groups[-2:]:
        assert (episode[0].end, episode[0].reward, episode[0].error) == (DONE, 1.0, None)
    # the failed step's turn is kept (what was sampled), the 10 MB observation is not
    assert len(by_mode["huge"].token_ids) == len(tokenizer(prompts[0].text)["input_ids"]) + len(answer)
    # a failed reset keeps the prompt as the task wrote it (its group shares one prompt), and as a sample it
    # is unscored, of the batch's version, one masked token
    reset = by_mode["reset"]
    assert reset.token_ids == tokenizer(prompts[modes.index("reset")].text)["input_ids"] and not reset.turns
    (sample,) = as_samples([[reset]], 2, tokenizer.pad_token_id, version=5)[0]
    assert (sample.reward, sample.version, sample.token_ids, sample.loss_mask) == (
        None,
        5,
        [tokenizer.pad_token_id],
        [0],
    )


def test_an_observation_after_the_last_turn_is_not_read(task, tokenizer):
    """The environment's reply to the last allowed turn is thrown away, so nothing in it fails the episode."""
    prompt = task.prompts("train", 1)[0]
    answer = ids(tokenizer, " 1+1") + [tokenizer.eos_token_id]
    config = CountdownRetryEnvConfig(max_turns=1)
    (episodes,), _ = run(
        task, tokenizer, [prompt], {(0, 0, 0): answer}, config=config, make_env=lambda: Hostile("huge")
    )
    assert (episodes[0].end, episodes[0].error) == (MAX_TURNS, None)


def test_turn_seeds_differ_by_episode_and_turn_and_repeat_for_one_prompt_seed():
    seeds = {turn_seed(s, e, t) for s in range(3) for e in range(4) for t in range(3)}
    assert len(seeds) == 36 and all(0 <= s < 2**31 for s in seeds)
    assert turn_seed(5, 1, 2) == turn_seed(5, 1, 2)


def test_a_chat_model_reads_observations_as_a_user_turn_of_its_template(tokenizer):
    from polyray.models.tiny import EMBEDDED_CHAT_TEMPLATE

    tokenizer = tokenizer.__class__.from_pretrained(EMBEDDED)
    tokenizer.chat_template = EMBEDDED_CHAT_TEMPLATE
    encode = chat_observations(tokenizer)
    # the newline the template ends an assistant's reply with comes first: the model's turn ended at EOS
    assert tokenizer.decode(encode("3 tests failed")) == "\nuser: 3 tests failed\nassistant: "
    assert tokenizer.decode(chat_observations(tokenizer, role="tool")("ok")) == "\ntool: ok\nassistant: "


def test_the_documented_custom_environment_runs_as_written(task, tokenizer, tmp_path, monkeypatch):
    """docs/training.md's example environment, from a file named by ``env.type: custom`` as its command line
    names it, in episodes: its hints reach the model and a right third answer ends the episode."""
    import re
    import shlex

    from polyray.config import load_config

    root = Path(__file__).resolve().parents[3]
    docs = (root / "docs" / "training.md").read_text()
    example = re.search(r"<!-- env-example -->\n```python\n(.*?)```\n<!-- /env-example -->", docs, re.S)
    assert example, "docs/training.md has no <!-- env-example --> python block"
    command = re.search(r"^polyray run configs/multiturn.yaml .*$", docs[example.end() :], re.M)[0]
    filename = re.match(r"# (\S+\.py):", example[1])[1]
    (tmp_path / filename).write_text(example[1])
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command)
    overrides = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    config = load_config(root / "configs" / "multiturn.yaml", overrides)
    assert config.env.type == "custom" and config.env.environment == f"{tmp_path / filename}:HigherLower"

    prompt = task.prompts("train", 1)[0]  # "nums 8 16 5 target 13": " 8+5" is right
    eos = [tokenizer.eos_token_id]
    turns = [ids(tokenizer, " 16+16") + eos, ids(tokenizer, " 5-8") + eos, ids(tokenizer, " 8+5") + eos]
    scripts = {(0, 0, t): turn for t, turn in enumerate(turns)}
    (episodes,), model = run(task, tokenizer, [prompt], scripts, config=config.env)
    (episode,) = episodes
    assert (episode.end, episode.reward, episode.rewards_by_turn(3)) == (DONE, 1.0, [0.0, 0.0, 1.0])
    heard = [tokenizer.decode(h[len(model.seen[0]) :]) for h in model.seen[1:]]
    assert heard[0].endswith("\ntoo high\nexpr:") and heard[1].endswith("\ntoo low\nexpr:")


def test_a_custom_environment_that_is_not_one_is_refused_naming_the_field(tmp_path):
    from polyray.config import load_config
    from polyray.envs import EnvError, load_environment
    from polyray.io import ConfigError

    (tmp_path / "not_env.py").write_text("class Thing:\n    pass\n")
    with pytest.raises(EnvError, match=r"env.environment .*'Thing' in .*not_env.py is not a subclass"):
        load_environment(f"{tmp_path}/not_env.py:Thing")
    root = Path(__file__).resolve().parents[3]
    with pytest.raises(ConfigError, match=r"env.environment: .no_colon. is not .module:name."):
        load_config(root / "configs" / "multiturn.yaml", ["env.type=custom", "env.environment=no_colon"])
    with pytest.raises(ConfigError, match=r"env.max_total_tokens \(300\) must be below rollout.max_model_len"):
        load_config(root / "configs" / "multiturn.yaml", ["env.max_total_tokens=300"])
    with pytest.raises(ConfigError, match=r"env.max_tokens \(200\) must be below env.max_total_tokens \(160\)"):
        load_config(root / "configs" / "multiturn.yaml", ["env.max_tokens=200"])
    with pytest.raises(ConfigError, match=r"a dpo phase does not train on multi-turn episodes"):
        load_config(root / "configs" / "multiturn.yaml", ['phases=[{"type": "dpo", "steps": 1}]'])
