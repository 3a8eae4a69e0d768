"""``polyray bench multiturn``: what the engine's prefix cache saves a multi-turn rollout (figures printed,
never asserted).

The same episodes two ways on one bare engine with the rollout worker's arguments, alternating repeat by
repeat: ``turns``-turn episodes (:func:`polyray.rollout.episodes.run_episodes`, each turn one engine call
over every episode's token-id history, an environment that always asks for another try) against one turn
of ``turns`` x ``turn_tokens`` tokens per episode. Every turn runs to its token limit (EOS ignored), so
both sample the same number of model tokens; a multi-turn episode also reads its observations. The whole
comparison runs on an engine with prefix caching and on one without: with the cache, turn t reads turns
< t from it; without, it prefills the whole history again.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from polyray.envs.base import Environment, Step

# what the environment answers every turn
AGAIN = "\nwrong\nexpr:"


class Again(Environment):
    """An environment that never accepts an answer: every episode runs its turn limit."""

    name = "again"

    def reset(self, prompt) -> str:
        return prompt.text

    def step(self, model_text: str) -> Step:
        return Step(AGAIN, 0.0, done=False)


def bench_multiturn(
    config: str, *, prompts: int, episodes: int, turns: int, turn_tokens: int, repeats: int
) -> dict[str, Any]:
    """The comparison of the module docstring on the model and rollout settings of ``config``, each engine
    in a fresh process (:func:`polyray.drivers.bench.rollout._in_rollout_process`)."""
    from polyray.config import load_config
    from polyray.drivers.bench.rollout import _in_rollout_process
    from polyray.models.source import prepare_model_dir

    run = load_config(config)
    model_dir = str(prepare_model_dir(run.model, run.task))
    args = (model_dir, run, prompts, episodes, turns, turn_tokens, repeats)
    out: dict[str, Any] = {"prompts": prompts, "episodes": episodes, "turns": turns, "turn_tokens": turn_tokens}
    for caching in (True, False):
        key = "prefix_caching" if caching else "no_prefix_caching"
        out[key] = _in_rollout_process(run.rollout, {}, _measure, *args, caching)
    out["multi_turn_cache_vs_none"] = out["prefix_caching"]["multi_turn_tokens_per_s"] / max(
        out["no_prefix_caching"]["multi_turn_tokens_per_s"], 1e-9
    )
    return out


def _measure(model_dir: str, run, prompts: int, episodes: int, turns: int, turn_tokens: int, repeats: int, caching):
    """In the engine's own process: model tokens per second of the two workloads, alternating."""
    from polyray.config import SamplingConfig
    from polyray.config.envs import CountdownRetryEnvConfig
    from polyray.rollout.episodes import TurnSample, plain_observations, run_episodes
    from polyray.rollout.worker import sampling_params, start_engine
    from polyray.tasks import build_task

    llm = start_engine(model_dir, run.rollout, run.engine_dtype, enable_prefix_caching=caching)
    # after start_engine, which imports vLLM as a rollout worker does (without scikit-learn)
    from vllm.inputs import TokensPrompt

    tokenizer = llm.get_tokenizer()
    task = build_task(run.task)
    batch = task.prompts("train", prompts)
    seeds = list(range(len(batch)))
    limits = CountdownRetryEnvConfig(
        max_turns=turns, max_tokens=turn_tokens, max_total_tokens=run.rollout.max_model_len - 1, max_seconds=3600
    )

    def params(seed: int, max_tokens: int):
        p = sampling_params(1, SamplingConfig(max_tokens=max_tokens), seed)
        p.ignore_eos = True
        return p

    def generate(histories, turn_seeds, max_tokens):
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=h) for h in histories],
            [params(s, max_tokens) for s in turn_seeds],
            use_tqdm=False,
        )
        return [
            TurnSample(
                token_ids=list(c.token_ids),
                logprobs=[c.logprobs[t][tok].logprob for t, tok in enumerate(c.token_ids)],
                version=0,
                finished=True,
                text=tokenizer.decode(c.token_ids),
            )
            for c in (o.outputs[0] for o in outs)
        ]  # fmt: skip

    def multi_turn() -> int:
        groups = run_episodes(
            batch,
            episodes,
            make_env=lambda: Again(limits, task),
            limits=limits,
            generate=generate,
            encode_prompt=lambda text: tokenizer(text)["input_ids"],
            encode_observation=plain_observations(tokenizer),
            seeds=seeds,
        )
        if any(e.end != "max_turns" for g in groups for e in g):
            raise RuntimeError("an episode ended before its turn limit: raise rollout.max_model_len")
        return sum(sum(e.mask) for g in groups for e in g)

    def single_turn() -> int:
        histories = [tokenizer(p.text)["input_ids"] for p in batch for _ in range(episodes)]
        samples = generate(histories, [1000 + i for i in range(len(histories))], turns * turn_tokens)
        return sum(len(s.token_ids) for s in samples)

    ways = {"multi_turn": multi_turn, "single_turn": single_turn}
    for way in ways.values():  # warm-up: kernels for new shapes
        way()
    tokens = {key: 0 for key in ways}
    seconds: dict[str, list[float]] = {key: [] for key in ways}
    for _ in range(repeats):
        for key, way in ways.items():
            started = time.perf_counter()
            tokens[key] += way()
            seconds[key].append(time.perf_counter() - started)
    out: dict[str, Any] = {}
    for key in ways:
        out[f"{key}_tokens"] = tokens[key]
        out[f"{key}_tokens_per_s"] = tokens[key] / sum(seconds[key])
        out[f"{key}_seconds_median"] = statistics.median(seconds[key])
    out["multi_vs_single"] = out["multi_turn_tokens_per_s"] / out["single_turn_tokens_per_s"]
    return out


def print_multiturn(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    r = results
    table = Table(
        title=f"multi-turn rollouts: {r['prompts']} prompts x {r['episodes']} episodes, {r['turns']} turns x"
        f" {r['turn_tokens']} tokens against 1 turn x {r['turns'] * r['turn_tokens']} tokens"
    )
    for column in ("engine", "multi-turn tok/s", "single-turn tok/s", "multi / single"):
        table.add_column(column, justify="right")
    for key, label in (("prefix_caching", "prefix caching"), ("no_prefix_caching", "no prefix caching")):
        x = r[key]
        table.add_row(
            label,
            f"{x['multi_turn_tokens_per_s']:.0f}",
            f"{x['single_turn_tokens_per_s']:.0f}",
            f"{x['multi_vs_single']:.2f}",
        )
    Console().print(table)
    Console().print(f"multi-turn, prefix caching / none: {r['multi_turn_cache_vs_none']:.2f}")
