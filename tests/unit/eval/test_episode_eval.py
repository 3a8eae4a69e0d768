"""A multi-turn run's evaluation (polyray.eval.policy_eval with ``env``) on a stand-in engine that answers
from a script: pass@k over episodes is the final answers', pass@k after each turn counts an episode right
from the turn it got right, and the record round-trips through JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyray.config import EvalConfig
from polyray.config.envs import CountdownRetryEnvConfig
from polyray.config.tasks import CountdownTaskConfig
from polyray.eval.policy_eval import evaluate_policy
from polyray.eval.record import EvalRecord
from polyray.rollout.worker import Sample
from polyray.tasks import build_task

EMBEDDED = next((Path(__file__).resolve().parents[3] / "polyray" / "models" / "embedded").iterdir())


class ScriptPool:
    """Answers turn t of an episode with ``answers[t]`` of its prompt's script, whatever was asked."""

    def __init__(self, tokenizer, answers: dict[int, list[str]], prompts):
        self.tokenizer, self.answers, self.prompts = tokenizer, answers, prompts

    def generate(self, request):
        out = []
        for i, prompt in enumerate(request.prompts):
            history = prompt["prompt_token_ids"]
            index = next(j for j, p in enumerate(self.prompts) if history[: len(p)] == p)
            turn = self.tokenizer.decode(history).count("expr:") - 1
            ids = self.tokenizer(self.answers[index][turn], add_special_tokens=False)["input_ids"]
            ids.append(self.tokenizer.eos_token_id)
            out.append([Sample(i, self.answers[index][turn], history, ids, [-0.5] * len(ids), 0, True)])
        return out


def test_pass_at_k_by_turn_counts_each_episode_from_its_first_right_turn():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED)
    task = build_task(CountdownTaskConfig())
    prompts = task.prompts("test", 3)
    answers = {
        0: [prompts[0].reference] * 3,  # right at once
        1: [" 99+99", prompts[1].reference, prompts[1].reference],  # right at turn 2
        2: [" 99+99", " 98+98", " 97+97"],  # never
    }
    pool = ScriptPool(tokenizer, answers, [tokenizer(p.text)["input_ids"] for p in prompts])
    env = CountdownRetryEnvConfig(max_turns=3, max_tokens=16, max_total_tokens=200)
    cfg = EvalConfig(n_samples=2, ks=[1, 2], diversity=[])
    record = evaluate_policy(pool, task, prompts, cfg, env=env, tokenizer=tokenizer)

    extra = record.extra
    assert [extra[f"turn{t}/pass@1"] for t in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert record.pass_at_k[1].mean == pytest.approx(2 / 3) and record.pass_at_k[2].mean == pytest.approx(2 / 3)
    assert extra["turns_mean"] == pytest.approx((1 + 2 + 3) / 3) and extra["episode_errors"] == 0
    assert [row.c for row in record.per_prompt] == [2, 2, 0]
    back = EvalRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert back.extra == extra and back.pass_at_k[1].mean == record.pass_at_k[1].mean
