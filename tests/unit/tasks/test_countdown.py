import random
from fractions import Fraction

import pytest

from polyray.tasks import countdown as cd


def test_splits_are_disjoint_and_deterministic():
    keys = {}
    for split in cd.SPLITS:
        prompts = cd.generate_prompts(split, 200, seed=3)
        assert prompts == cd.generate_prompts(split, 200, seed=3)
        keys[split] = {p.text for p in prompts}
        assert len(keys[split]) == 200
    for a in cd.SPLITS:
        for b in cd.SPLITS:
            if a < b:
                assert not keys[a] & keys[b], (a, b)
    # a different seed draws different prompts but from the same split
    other = {p.text for p in cd.generate_prompts("test", 200, seed=4)}
    assert other != keys["test"] and not other & keys["train"]


def test_every_reference_is_correct_and_many_answers_exist():
    prompts = cd.generate_prompts("train", 300, seed=0)
    for p in prompts:
        assert cd.judge(p.reference, p.meta["numbers"], p.meta["target"]).reward == 1.0
    rng = random.Random(0)
    multi = 0
    for p in prompts[:100]:
        found = {cd.sample_solution(rng, tuple(p.meta["numbers"]), p.meta["target"]) for _ in range(20)}
        multi += len(found - {None}) > 1
    assert multi > 50  # most prompts have several distinct valid answers


@pytest.mark.parametrize(
    "completion,reward,reason",
    [
        (" 3+4", 1.0, "correct"),
        (" 4+3\nrest", 1.0, "correct"),
        (" (9-3)+1", 1.0, "correct"),
        (" 3*4", 0.0, "evaluates to 12"),
        (" 3+3+1", 0.0, "uses numbers not given: [3]"),
        (" 5+2", 0.0, "uses numbers not given: [2, 5]"),
        (" __import__('os').system('true')", 0.0, "not an expression"),
        (" 9**2", 0.0, "disallowed syntax"),
        (" 9/0", 0.0, "division by zero"),
        (" 3+", 0.0, "syntax error"),
        ("", 0.0, "empty completion"),
        (" 7.0", 0.0, "disallowed syntax"),
    ],
)
def test_judge(completion, reward, reason):
    j = cd.judge(completion, [3, 4, 9, 1], 7)
    assert j.reward == reward
    assert reason in j.reason


def test_parse_is_exact_rational_arithmetic():
    assert cd.evaluate_expression("7/2*2") == Fraction(7)
    assert cd.evaluate_expression("1-2*3") == -5
    with pytest.raises(cd.UnsafeExpression):
        cd.parse_expression("1+" * 40 + "1")


def test_wrong_expression_misses_target():
    rng = random.Random(1)
    for p in cd.generate_prompts("pretrain", 50, seed=0):
        expr = cd.sample_wrong_expression(rng, tuple(p.meta["numbers"]), p.meta["target"])
        assert cd.judge(expr, p.meta["numbers"], p.meta["target"]).reward == 0.0


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        cd.generate_prompts("dev", 1, seed=0)


def test_too_many_prompts_for_the_number_range_is_one_line_naming_the_field():
    from polyray.io import ConfigError
    from polyray.tasks.countdown import CountdownSpec, generate_prompts

    # numbers 1-2: a few dozen distinct (numbers, target) problems in all, so 64 train prompts cannot be drawn
    with pytest.raises(
        ConfigError, match=r"^task\.n_train: could not generate 64 distinct train prompts .*task\.max_number"
    ):
        generate_prompts("train", 64, 0, CountdownSpec(max_number=2))


def test_every_shipped_countdown_config_draws_its_splits():
    from pathlib import Path

    from polyray.config import load_config
    from polyray.tasks import build_task

    root = Path(__file__).resolve().parents[3] / "configs"
    for path in [*root.glob("*.yaml"), *(root / "gpu").glob("*.yaml")]:
        run = load_config(path)
        if run.task.type == "countdown":
            task = build_task(run.task)
            assert len(task.prompts("train")) == run.task.n_train and task.prompts("test"), path


def test_retry_dialogues_are_wrong_answers_with_the_environments_feedback_then_the_answer():
    """model.tiny.pretrain_retries: what the embedded model reads before a multi-turn run is what
    countdown_retry says (a step of the environment itself), and every dialogue ends right."""
    from polyray.config.envs import CountdownRetryEnvConfig
    from polyray.config.tasks import CountdownTaskConfig
    from polyray.envs import env_factory
    from polyray.models.tiny import EOS
    from polyray.tasks import build_task

    task = build_task(CountdownTaskConfig())
    prompts = {p.text: p for p in cd.generate_prompts("pretrain", 200, 0)}
    pairs = task.pretrain_corpus(200, 0.5, 0)
    dialogues = [(p, c) for p, c in task.with_retries(pairs, 0.5, 0, EOS) if EOS in c]
    right = sum(task.judge(prompts[p], c).reward == 1.0 for p, c in pairs)
    assert 0.3 * right < len(dialogues) < 0.7 * right
    for prompt, completion in dialogues:
        env = env_factory(CountdownRetryEnvConfig(), task)()
        env.reset(prompts[prompt])
        segments = completion.split(EOS)
        assert 2 <= len(segments) <= 3, completion
        for turn, following in zip(segments, segments[1:]):
            step = env.step(turn.rsplit("expr:", 1)[-1])
            assert not step.done and following.startswith(step.observation), (completion, step)
        assert env.step(segments[-1].rsplit("expr:", 1)[-1]).done, completion
