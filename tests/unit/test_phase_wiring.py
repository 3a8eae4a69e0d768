"""The learner's glue between rollouts and the pure math: diversity marginals and estimator params."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polyray.config import GRPOPhaseConfig, load_config
from polyray.diversity import compute_diversity
from polyray.learner.phases import advantage_params, compute_diversity_advantages
from polyray.objectives.advantages import compute_advantages

GROUPS = [["1+2", "(1 + 2)", "3*1"], ["4-1", "4-1", "4-1"], ["2*3", "3+3", "9-3"]]


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


@pytest.mark.parametrize("name", ["group", "rloo", "passk", "polychromic"])
def test_every_estimator_runs_from_config(name):
    cfg = GRPOPhaseConfig(advantage=name, advantage_k=2, group_size=3)
    rewards = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    adv = compute_advantages(cfg.advantage, rewards, **advantage_params(cfg, GROUPS))
    assert adv.shape == rewards.shape and torch.isfinite(adv).all()
    assert torch.all(adv[2] == 0)  # a group with no signal gets no advantage


def test_polychromic_phase_needs_a_group_per_rank():
    from polyray.config import ConfigError

    with pytest.raises(ConfigError, match="prompts_per_step"):
        load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml", ["phases.0.type=polychromic_sft", "phases.0.prompts_per_step=1"])


class _Pending:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def test_rollout_prefetch_overlaps_one_step_ahead():
    from polyray.learner.phases import RolloutPrefetch

    state = {"version": 0}
    submitted = []

    def submit(step):
        submitted.append((step, state["version"]))
        return [f"p{step}"], _Pending(f"samples{step}@v{state['version']}")

    sync = RolloutPrefetch(submit, ahead=False, steps=3)
    assert sync.get(0) == (["p0"], "samples0@v0") and submitted == [(0, 0)]

    submitted.clear()
    ahead = RolloutPrefetch(submit, ahead=True, steps=3)
    for step in range(3):
        prompts, samples = ahead.get(step)
        assert prompts == [f"p{step}"]
        # step 0 waits for its own samples; later steps use samples started one update earlier
        assert samples == f"samples{step}@v{max(step - 1, 0)}"
        state["version"] += 1  # the update publishes a new version
    assert submitted == [(0, 0), (1, 0), (2, 1)]  # nothing submitted past the last step


def test_async_rollouts_need_a_lag_budget():
    from polyray.config import ConfigError

    cfg = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    with pytest.raises(ConfigError, match="max_lag >= 1"):
        load_config(cfg, ["phases.1.async_rollouts=true"])
    assert load_config(cfg, ["phases.1.async_rollouts=true", "phases.1.max_lag=1"]).phases[1].async_rollouts
