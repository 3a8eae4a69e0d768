"""reference_similarity: the reward for data with references and nothing else.

A plain prompt/response or chat file trains GRPO with it by default (no engagement labels, no
engagement model to train); its scores are rouge-score's F-measures (or the embedding cosine)
of each completion against the item's reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from polyray.config import load_config
from polyray.reward import build_reward
from polyray.reward.base import RewardError, RewardItem
from polyray.reward.plan import models_to_train, plan
from polyray.reward.service import resolve_reward
from polyray.tasks import build_task

ROOT = Path(__file__).resolve().parents[3]
CHAT = ROOT / "tests" / "fixtures" / "userdata" / "chat.jsonl"
LABELED = ROOT / "tests" / "fixtures" / "engagement.jsonl"


def _run(path: Path, *extra: str):
    # quality engagement is replies.yaml's choice for labeled data; unlabeled data is scored by its reference
    return load_config(
        ROOT / "configs" / "replies.yaml", [f"task.path={path}", "task.quality=rougeL", "reward.name=null", *extra]
    )


def test_a_chat_file_trains_grpo_on_reference_similarity_and_needs_no_engagement_model():
    run = _run(CHAT)
    task = build_task(run.task)
    assert resolve_reward(run.reward, task) == ("reference_similarity", {"metric": "rougeL"})
    p = plan(run, build_task(run.task))
    assert p.engagement_models == [] and models_to_train(p, run) == []


def test_a_file_with_engagement_values_keeps_the_engagement_reward():
    run = _run(LABELED)
    assert resolve_reward(run.reward, build_task(run.task))[0] == "engagement"


def test_the_task_quality_picks_the_similarity_metric():
    run = _run(CHAT, "task.quality=embedding")
    assert resolve_reward(run.reward, build_task(run.task)) == ("reference_similarity", {"metric": "embedding"})


@pytest.mark.parametrize("metric", ["rougeL", "rouge1", "rouge2"])
def test_scores_are_rouge_scores_f_measure(metric):
    from rouge_score import rouge_scorer

    reward = build_reward("reference_similarity", metric=metric)
    pairs = [
        ("the cat sat on the mat", "the cat sat on the mat"),
        ("a dog ran", "the cat sat on the mat"),
        ("the cats sat on a rug", "the cat sat on the mat"),
        ("", "the cat"),
    ]
    results = reward.score_batch([RewardItem(prompt="p", completion=c, reference=r) for c, r in pairs])
    scorer = rouge_scorer.RougeScorer([metric], use_stemmer=True)
    assert [r.score for r in results] == pytest.approx([scorer.score(r, c)[metric].fmeasure for c, r in pairs])
    assert results[0].score == 1.0 and results[1].score < results[2].score < 1.0


def test_an_item_without_a_reference_is_refused():
    reward = build_reward("reference_similarity")
    with pytest.raises(RewardError, match="item 1 has no reference"):
        reward.score_batch(
            [RewardItem(prompt="p", completion="x", reference="y"), RewardItem(prompt="p", completion="x")]
        )
