"""Advantage estimators (docs/algorithms.md §3) against float64 loops and subset enumeration."""

import itertools
import math
import statistics

import pytest
import torch

from polyray.objectives.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    compute_group_advantages,
    compute_passk_advantages,
    compute_polychromic_advantages,
    compute_rloo_advantages,
    dynamic_sampling_mask,
    GroupAdvantageConfig,
)
from polyray.objectives.grpo import aggregate_token_loss, compute_grpo_loss


def test_registry_names_and_config_types():
    assert set(ADVANTAGE_ESTIMATORS) == {"group", "rloo", "passk", "polychromic"}
    for name, (config_model, _) in ADVANTAGE_ESTIMATORS.items():
        assert config_model().type == name  # each estimator's config model carries its registry key


def test_group_hand_values():
    r = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)  # mean 1, sample std 1
    adv = compute_advantages(GroupAdvantageConfig(), r, [["a", "b", "c"]])
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64) / (1 + 1e-6))
    dr = compute_advantages(GroupAdvantageConfig(scale_by_std=False), r, [["a", "b", "c"]])  # Dr. GRPO
    torch.testing.assert_close(dr, torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError):
        compute_group_advantages(torch.ones(2, 1))


def test_rloo_matches_float64_loop():
    r = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    adv = compute_rloo_advantages(r)
    for b, row in enumerate(r.tolist()):
        for i, ri in enumerate(row):
            others = row[:i] + row[i + 1 :]
            assert adv[b, i].item() == pytest.approx(ri - sum(others) / len(others), abs=1e-14)
    with pytest.raises(ValueError):
        compute_rloo_advantages(torch.ones(3, 1))


def enumerate_passk(row: list[float], k: int) -> tuple[list[float], float, float]:
    """By brute force over k-subsets: (mean_{S∋i} max − mean_S max for each i, mean_S max, pstdev_S max)."""
    subsets = list(itertools.combinations(range(len(row)), k))
    score = {s: max(row[j] for j in s) for s in subsets}
    mean_all = sum(score.values()) / len(subsets)
    marginal = [statistics.fmean(score[s] for s in subsets if i in s) - mean_all for i in range(len(row))]
    return marginal, mean_all, statistics.pstdev(score.values())


CASES = [(n, c, k) for n in range(1, 9) for c in range(n + 1) for k in range(1, n + 1)]


@pytest.mark.parametrize("n", range(1, 9))
def test_passk_closed_form_equals_subset_enumeration(n):
    """passk A_i = (mean_{S∋i} max r − mean_S max r) / (pstdev_S(max r) + 1e-6), for every (c, k).

    The closed form's ρ is mean_S max r and sqrt(ρ(1−ρ)) is the population std of the
    binary subset scores, so the normalisation is that std plus eps.
    """
    gen = torch.Generator().manual_seed(n)
    for c in range(n + 1):
        row = [1.0] * c + [0.0] * (n - c)
        row = [row[j] for j in torch.randperm(n, generator=gen).tolist()]
        for k in range(1, n + 1):
            adv = compute_passk_advantages(torch.tensor([row], dtype=torch.float64), k)[0].tolist()
            marginal, rho, sd = enumerate_passk(row, k)
            assert rho == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
            assert sd == pytest.approx(math.sqrt(rho * (1 - rho)), abs=1e-12)
            for i in range(n):
                assert adv[i] == pytest.approx(marginal[i] / (sd + 1e-6), rel=1e-9, abs=1e-9), (n, c, k, i)


def test_passk_formula_values_and_edge_cases():
    # n=4, c=1, k=2: ρ = 1 − C(3,2)/C(4,2) = 1/2, σ = 1/2; A_pos = 1, A_neg = (1/2 − C(2,1)/C(3,1))/σ = −1/3
    adv = compute_passk_advantages(torch.tensor([[0.0, 1.0, 0.0, 0.0]]), 2)
    sigma = 0.5 + 1e-6
    torch.testing.assert_close(adv, torch.tensor([[-1 / 6, 0.5, -1 / 6, -1 / 6]]) / sigma)
    # all wrong, all right, and fewer than k wrong (every k-subset passes): no signal
    r = torch.tensor([[0.0] * 5, [1.0] * 5, [1.0, 1.0, 1.0, 0.0, 1.0]])
    assert torch.all(compute_passk_advantages(r, 2) == 0)
    # k = 1 is the group advantage with the population std
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    centered = r - r.mean()
    torch.testing.assert_close(compute_passk_advantages(r, 1), centered / (r.std(unbiased=False) + 1e-6))
    with pytest.raises(ValueError, match="binary"):
        compute_passk_advantages(torch.tensor([[0.5, 1.0]]), 1)
    with pytest.raises(ValueError):
        compute_passk_advantages(torch.tensor([[0.0, 1.0]]), 3)
    with pytest.raises(ValueError):
        compute_passk_advantages(torch.tensor([0.0, 1.0]), 1)


@pytest.mark.parametrize("n,c,k", CASES)
def test_polychromic_with_max_is_sigma_times_passk(n, c, k):
    """polychromic(f = max) = σ · passk, σ = sqrt(ρ(1−ρ)) + 1e-6, ρ = 1 − C(n−c,k)/C(n,k)."""
    r = torch.tensor([[1.0] * c + [0.0] * (n - c)], dtype=torch.float64)
    rho = 1 - math.comb(n - c, k) / math.comb(n, k)
    sigma = math.sqrt(rho * (1 - rho)) + 1e-6
    poly = compute_polychromic_advantages(r, k, set_fn="max")
    passk = compute_passk_advantages(r, k)
    torch.testing.assert_close(poly, sigma * passk, rtol=0, atol=1e-12)


def _brute_polychromic(rewards, dist, k):
    out = []
    for b, row in enumerate(rewards.tolist()):
        subsets = list(itertools.combinations(range(len(row)), k))

        def f(s):
            pairs = list(itertools.combinations(s, 2))
            d = sum(dist[b][p][q] for p, q in pairs) / len(pairs)
            return statistics.fmean(row[j] for j in s) * d

        mean_all = statistics.fmean(f(s) for s in subsets)
        out.append([statistics.fmean(f(s) for s in subsets if i in s) - mean_all for i in range(len(row))])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_polychromic_mean_times_diversity_matches_loop(k):
    gen = torch.Generator().manual_seed(k)
    B, G = 3, 5
    rewards = torch.rand(B, G, dtype=torch.float64, generator=gen)
    x = torch.rand(B, G, 2, dtype=torch.float64, generator=gen)
    dist = torch.cdist(x, x)  # (B, G, G) symmetric, zero diagonal
    expected = _brute_polychromic(rewards, dist.tolist(), k)
    via_tensor = compute_polychromic_advantages(rewards, k, distances=dist)
    torch.testing.assert_close(via_tensor, expected, rtol=0, atol=1e-12)

    def diversity(b, s):
        pairs = list(itertools.combinations(s, 2))
        return sum(dist[b, p, q].item() for p, q in pairs) / len(pairs)

    via_callable = compute_polychromic_advantages(rewards, k, diversity=diversity)
    torch.testing.assert_close(via_callable, expected, rtol=0, atol=1e-12)
    if k == G:
        assert torch.all(via_tensor.abs() < 1e-15)  # one subset: nothing to compare against
    else:
        assert via_tensor.abs().max() > 1e-3


def test_polychromic_argument_errors():
    r = torch.rand(2, 4)
    with pytest.raises(ValueError, match="exactly one"):
        compute_polychromic_advantages(r, 2)
    with pytest.raises(ValueError, match="k >= 2"):
        compute_polychromic_advantages(r, 1, distances=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, G, G\)"):
        compute_polychromic_advantages(r, 2, distances=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="unknown set_fn"):
        compute_polychromic_advantages(r, 2, set_fn="min")
    with pytest.raises(ValueError, match="exceeds the limit"):
        compute_polychromic_advantages(torch.rand(1, 30), 15, set_fn="max")


def test_dynamic_sampling_mask_filters_on_advantages():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.3]], dtype=torch.float64)
    adv = compute_group_advantages(r)
    assert dynamic_sampling_mask(adv).tolist() == [False, True, False, True]
    assert dynamic_sampling_mask(adv).dtype == torch.bool


def test_all_correct_group_keeps_its_polychromic_advantages():
    """All four correct, two distinct answers: the diversity marginals are non-zero, so the group stays."""
    rewards = torch.ones(1, 4, dtype=torch.float64)
    texts = [["1+2", "1+2", "2+1", "3*1"]]
    from polyray.objectives.advantages import PolychromicAdvantageConfig

    adv = compute_advantages(PolychromicAdvantageConfig(k=2, diversity="countdown_expr"), rewards, texts)
    assert adv.abs().max() > 0.05
    assert dynamic_sampling_mask(adv).tolist() == [True]
    assert dynamic_sampling_mask(compute_group_advantages(rewards)).tolist() == [False]


# ---- GRPO loss pieces not already covered by test_grpo.py ---------------------------------


def test_aggregate_token_loss_direct_hand_values():
    """Each mode on a hand case with an explicit L_max and a fully masked row."""
    per_token = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    # seq means: 2, 4, and 0 for the empty row (its count is clamped to 1) -> 2
    assert aggregate_token_loss(per_token, mask, "seq_mean_token_mean").item() == pytest.approx(2.0, abs=1e-15)
    # (1 + 2 + 3 + 4) / 4 tokens
    assert aggregate_token_loss(per_token, mask, "token_mean").item() == pytest.approx(2.5, abs=1e-15)
    # 10 / (N = 3 * L_max = 8); default L_max = T = 4 -> 10 / 12
    assert aggregate_token_loss(per_token, mask, "seq_mean_token_sum_norm", 8).item() == pytest.approx(10 / 24)
    assert aggregate_token_loss(per_token, mask, "seq_mean_token_sum_norm").item() == pytest.approx(10 / 12)


def test_clip_higher_is_asymmetric():
    """ρ = 1.25 with A > 0: clipped (no gradient) at ε_high = 0.2, live at DAPO's 0.28."""
    logp = torch.tensor([[math.log(1.25)]], dtype=torch.float64, requires_grad=True)
    old, adv, mask = torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64), torch.ones(1, 1)
    loss, _ = compute_grpo_loss(logp, old, None, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2)
    (g,) = torch.autograd.grad(loss, logp)
    assert g.item() == 0.0 and loss.item() == pytest.approx(-1.2)
    loss, _ = compute_grpo_loss(logp, old, None, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    (g,) = torch.autograd.grad(loss, logp)
    assert g.item() == pytest.approx(-1.25) and loss.item() == pytest.approx(-1.25)
