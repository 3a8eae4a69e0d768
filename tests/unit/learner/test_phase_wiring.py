"""The learner's glue between rollouts and the pure math: diversity marginals, the estimator registry, prefetch."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
import torch

from polyray.config import GRPOPhaseConfig, load_config
from polyray.diversity import compute_diversity
from polyray.objectives.polychromic import compute_diversity_advantages
from polyray.objectives.advantages import AdvantageInputs, compute_advantages

GROUPS = [["1+2", "(1 + 2)", "3*1"], ["4-1", "4-1", "4-1"], ["2*3", "3+3", "9-3"]]
LOGPROBS = [[[-0.5, -1.0], [-2.0], [-0.1, -0.3, -0.2]], [[-1.0], [-1.5], [-0.2]], [[-0.4], [-0.9], [-0.6]]]


def test_loo_marginals_match_direct_computation():
    adv = compute_diversity_advantages("countdown_expr", GROUPS, "loo", 0)
    for b, g in enumerate(GROUPS):
        full = compute_diversity("countdown_expr", g)
        for i in range(len(g)):
            expected = full - compute_diversity("countdown_expr", g[:i] + g[i + 1 :])
            assert adv[b, i].item() == pytest.approx(expected, abs=1e-12)


def test_subset_marginals_match_enumeration():
    import itertools

    n, k = 3, 2
    adv = compute_diversity_advantages("distinct_1", GROUPS, "subset", k)
    for b, g in enumerate(GROUPS):
        subsets = list(itertools.combinations(range(n), k))
        score = {s: compute_diversity("distinct_1", [g[i] for i in s]) for s in subsets}
        mean_all = sum(score.values()) / len(subsets)
        for i in range(n):
            with_i = [v for s, v in score.items() if i in s]
            expected = (sum(with_i) / len(with_i) - mean_all) * k / (n - k)
            assert adv[b, i].item() == pytest.approx(expected, abs=1e-12)


ESTIMATOR_CONFIGS = {
    "group": {"type": "group"},
    "rloo": {"type": "rloo"},
    "passk": {"type": "passk", "k": 2},
    "polychromic": {"type": "polychromic", "k": 2, "diversity": "countdown_expr"},
    "unlikeliness": {"type": "unlikeliness", "beta": 0.5},
    "repeat_penalty": {"type": "repeat_penalty", "beta": 0.5, "answer": "countdown_expr"},
    "mix": {"type": "mix", "early": {"type": "passk", "k": 2}, "late": {"type": "group"}, "start": 0.2, "end": 0.8},
    "anneal": {"type": "anneal", "k": 2, "start": 0.2, "end": 0.8},
    "polychromic_correct": {"type": "polychromic_correct", "k": 2, "diversity": "countdown_expr"},
    "w_reinforce": {"type": "w_reinforce", "lam": 0.1},
    "risk_seeking": {"type": "risk_seeking", "beta": 4.0},
}
NO_BASELINE = {"w_reinforce"}  # a group of equal rewards still carries signal: all of its samples pushed down


def test_every_registered_estimator_has_a_config_case():
    from polyray.objectives.advantages import ADVANTAGE_ESTIMATORS

    assert set(ESTIMATOR_CONFIGS) == set(ADVANTAGE_ESTIMATORS)


@pytest.mark.parametrize("name", sorted(ESTIMATOR_CONFIGS))
def test_every_estimator_runs_from_config(name):
    cfg = GRPOPhaseConfig(advantage=ESTIMATOR_CONFIGS[name], group_size=3)
    assert cfg.advantage.type == name
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    adv = compute_advantages(cfg.advantage, AdvantageInputs(rewards, GROUPS, LOGPROBS, progress=0.5, step=3))
    assert adv.shape == rewards.shape and torch.isfinite(adv).all()
    if name in NO_BASELINE:
        assert torch.all(adv[2] == -1.0)  # W-REINFORCE's negative reinforcement of an all-wrong group
    else:
        assert torch.all(adv[2] == 0)  # a group with no signal gets no advantage


def test_polychromic_registry_entry_passes_its_parameters():
    """The registry forwards k and the diversity name: equal to calling the pure function directly."""
    from polyray.objectives.advantages import compute_polychromic_advantages

    cfg = GRPOPhaseConfig(advantage={"type": "polychromic", "k": 2, "diversity": "distinct_1"}, group_size=3)
    rewards = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    direct = compute_polychromic_advantages(
        rewards, 2, diversity=lambda b, S: compute_diversity("distinct_1", [GROUPS[b][i] for i in S])
    )
    assert torch.equal(compute_advantages(cfg.advantage, AdvantageInputs(rewards, GROUPS)), direct)


def test_an_unknown_phase_key_fails_naming_it():
    """Phases forbid unknown keys like every config model (an old flat ``advantage_k`` included)."""
    from polyray.io import ConfigError

    with pytest.raises(ConfigError, match=re.escape("phases.1.advantage_k: Extra inputs are not permitted")):
        load_config(Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml", ["phases.1.advantage_k=4"])


@pytest.mark.parametrize(
    "advantage, message",
    [
        ({"type": "passk", "k": 9}, "advantage.k (9) must be <= group_size (8)"),
        ({"type": "polychromic", "k": 1}, "greater than or equal to 2"),
        ({"type": "polychromic", "k": 8}, None),  # C(8, 8) = 1 is fine
        ({"type": "risk_seeking", "beta": 0}, "advantage.risk_seeking.beta\n  Input should be greater than 0"),
    ],
)
def test_advantage_parameters_checked_at_load(advantage, message):
    from pydantic import ValidationError

    if message is None:
        assert GRPOPhaseConfig(group_size=8, advantage=advantage).advantage.k == 8
        return
    with pytest.raises(ValidationError, match=re.escape(message)):
        GRPOPhaseConfig(group_size=8, advantage=advantage)


def test_polychromic_subset_count_checked_at_load():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="12870 subsets exceeds max_subsets \\(5000\\)"):
        GRPOPhaseConfig(group_size=16, advantage={"type": "polychromic", "k": 8})


def test_polychromic_phase_needs_a_group_per_rank():
    from polyray.io import ConfigError

    with pytest.raises(ConfigError, match="prompts_per_step"):
        load_config(
            Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml",
            ["phases.0.type=polychromic_sft", "phases.0.prompts_per_step=1"],
        )


class _Pending:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def test_rollout_prefetch_overlaps_one_step_ahead():
    from polyray.rollout.prefetch import RolloutPrefetch

    state = {"version": 0}
    submitted, scored = [], []

    def submit(step, version):
        submitted.append((step, version))
        return [f"p{step}"], _Pending(f"samples{step}@v{version}")

    def score(prompts, groups):
        scored.append((groups, threading.current_thread() is threading.main_thread()))
        return f"scores of {groups}"

    sync = RolloutPrefetch(submit, ahead=False, steps=3, score=score)
    got = sync.get(0, 0)
    assert (got.prompts, got.groups, got.scored) == (["p0"], "samples0@v0", "scores of samples0@v0")
    assert submitted == [(0, 0)] and scored == [("samples0@v0", True)]  # scored by the step itself

    submitted.clear(), scored.clear()
    ahead = RolloutPrefetch(submit, ahead=True, steps=3, score=score)
    for step in range(3):
        got = ahead.get(step, state["version"])
        assert got.prompts == [f"p{step}"]
        # step 0 waits for its own samples; later steps use samples started one update earlier
        assert got.groups == f"samples{step}@v{max(step - 1, 0)}" and got.scored == f"scores of {got.groups}"
        state["version"] += 1  # the update publishes a new version
    assert submitted == [(0, 0), (1, 0), (2, 1)]  # nothing submitted past the last step
    assert [g for g, _ in scored] == ["samples0@v0", "samples1@v0", "samples2@v1"]  # each once, in step order
    assert not any(main for _, main in scored)  # all in the scoring thread


@pytest.mark.serial  # waits timed to tens of milliseconds
def test_rollout_prefetch_scores_the_next_step_during_the_update():
    """Ahead, step t+1's samples are scored as soon as they arrive, before step t+1 asks: its wait
    is ~0 for both; the wait is split at the moment the samples arrived."""
    from polyray.rollout.prefetch import RolloutPrefetch

    arrived = {step: threading.Event() for step in range(3)}
    scored = []

    class Pending:
        def __init__(self, step):
            self.step = step

        def result(self):
            arrived[self.step].wait(10)
            return [f"s{self.step}"]

    def score(prompts, groups):
        time.sleep(0.05)
        scored.append(groups[0])
        return len(scored)

    prefetch = RolloutPrefetch(lambda step, version: ([step], Pending(step)), ahead=True, steps=3, score=score)
    threading.Timer(0.5, arrived[0].set).start()
    first = prefetch.get(0, 0)
    assert first.rollout_s >= 0.45 and 0.045 <= first.score_s < 0.45  # it waited for both, split where the samples came
    arrived[1].set()  # step 1's samples arrive during step 0's "update"
    deadline = time.monotonic() + 10
    while "s1" not in scored and time.monotonic() < deadline:
        time.sleep(0.01)
    assert scored == ["s0", "s1"]  # scored before step 1 asked
    second = prefetch.get(1, 1)
    assert (
        second.scored == 2 and second.rollout_s + second.score_s < 0.25
    )  # nothing left to wait for (margin: a busy machine)
    assert prefetch.pending[2] and "s2" not in scored  # step 2's collection waits for its samples in a daemon thread
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("polyray-rollout-score"))
    arrived[2].set()


def test_rollout_prefetch_raises_a_scoring_error_in_the_step():
    from polyray.rollout.prefetch import RolloutPrefetch

    def score(prompts, groups):
        raise RuntimeError("reward service unreachable")

    prefetch = RolloutPrefetch(lambda step, version: ([step], _Pending([step])), ahead=True, steps=2, score=score)
    with pytest.raises(RuntimeError, match="reward service unreachable"):
        prefetch.get(0, 0)


def test_async_rollouts_need_a_lag_budget():
    from polyray.io import ConfigError

    cfg = Path(__file__).resolve().parents[3] / "configs" / "quickstart.yaml"
    with pytest.raises(ConfigError, match="max_lag >= 1"):
        load_config(cfg, ["phases.1.async_rollouts=true", "phases.1.max_lag=0"])
    assert load_config(cfg, ["phases.1.async_rollouts=true", "phases.1.max_lag=1"]).phases[1].async_rollouts
    assert not load_config(cfg, ["phases.1.async_rollouts=false", "phases.1.max_lag=0"]).phases[1].async_rollouts
