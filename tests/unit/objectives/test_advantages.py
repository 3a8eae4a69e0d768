"""Advantage estimators (docs/algorithms.md §3) against float64 loops and subset enumeration."""

import itertools
import math
import statistics

import pytest
import torch

from polyray.config.advantages import GroupAdvantageConfig
from polyray.objectives.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInputs,
    compute_advantages,
    compute_group_advantages,
    compute_passk_advantages,
    compute_polychromic_advantages,
    compute_rloo_advantages,
    dynamic_sampling_mask,
)
from polyray.objectives.grpo import aggregate_token_loss, compute_grpo_loss


def test_registry_names_and_config_types():
    assert set(ADVANTAGE_ESTIMATORS) == {
        "group",
        "rloo",
        "passk",
        "polychromic",
        "unlikeliness",
        "repeat_penalty",
        "mix",
        "polychromic_correct",
        "w_reinforce",
        "risk_seeking",
        "anneal",
    }
    for name, (config_model, _) in ADVANTAGE_ESTIMATORS.items():
        fields = {"early": {"type": "group"}, "late": {"type": "group"}} if name == "mix" else {}
        assert config_model(**fields).type == name  # each estimator's config model carries its registry key


def test_group_hand_values():
    r = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)  # mean 1, sample std 1
    adv = compute_advantages(GroupAdvantageConfig(), AdvantageInputs(r, [["a", "b", "c"]]))
    torch.testing.assert_close(adv, torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64) / (1 + 1e-6))
    dr = compute_advantages(GroupAdvantageConfig(scale_by_std=False), AdvantageInputs(r, [["a", "b", "c"]]))  # Dr. GRPO
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
    from polyray.config.advantages import PolychromicAdvantageConfig

    adv = compute_advantages(
        PolychromicAdvantageConfig(k=2, diversity="countdown_expr"), AdvantageInputs(rewards, texts)
    )
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


# ---- estimators from the diversity-collapse literature ------------------------------------


def _group_loop(shaped: list[float]) -> list[float]:
    mean, std = statistics.fmean(shaped), statistics.stdev(shaped)
    return [(x - mean) / (std + 1e-6) for x in shaped]


def test_unlikeliness_hand_values_and_direction():
    """arXiv 2506.02355: r̃_i = r_i (1 − β rank_i/G), rank ascending in likelihood; then group advantages."""
    from polyray.objectives.advantages import compute_unlikeliness_advantages

    rewards = torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    logp = torch.tensor([[-0.1, -2.0, -0.5, -1.0]], dtype=torch.float64)  # ranks 3, 0, 2, 1
    adv = compute_unlikeliness_advantages(rewards, logp, beta=0.5)
    expected = _group_loop([1 - 0.5 * 3 / 4, 1.0, 0.0, 1 - 0.5 * 1 / 4])  # 0.625, 1, 0, 0.875
    torch.testing.assert_close(adv, torch.tensor([expected], dtype=torch.float64))
    # the rarest correct sample gets the most, the most likely correct one the least of the correct ones
    assert adv[0, 1] > adv[0, 3] > adv[0, 0] > adv[0, 2]  # adv[0, 0] is 0 here: 0.625 is the mean
    # β = 0 is plain group advantages; a group of zero rewards stays zero
    torch.testing.assert_close(compute_unlikeliness_advantages(rewards, logp, 0.0), compute_group_advantages(rewards))
    assert torch.all(compute_unlikeliness_advantages(torch.zeros(1, 4, dtype=torch.float64), logp, 0.5) == 0)


def test_unlikeliness_registry_ranks_by_mean_token_logprob():
    """The registry ranks by the per-token mean (length-normalised), not the sum: a long likely sample
    with a low sum is still the likely one."""
    from polyray.config.advantages import UnlikelinessAdvantageConfig

    rewards = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    logprobs = [[[-0.1] * 6, [-0.3], [-3.0]]]  # means -0.1, -0.3, -3.0 (sums -0.6, -0.3, -3.0)
    inputs = AdvantageInputs(rewards, [["a", "b", "c"]], logprobs)
    torch.testing.assert_close(inputs.mean_logprobs(), torch.tensor([[-0.1, -0.3, -3.0]], dtype=torch.float64))
    adv = compute_advantages(UnlikelinessAdvantageConfig(beta=0.5), inputs)
    expected = _group_loop([1 - 0.5 * 2 / 3, 1 - 0.5 * 1 / 3, 0.0])
    torch.testing.assert_close(adv, torch.tensor([expected], dtype=torch.float64))
    assert adv[0, 1] > adv[0, 0]
    with pytest.raises(ValueError, match="log-probs"):
        compute_advantages(UnlikelinessAdvantageConfig(), AdvantageInputs(rewards, [["a", "b", "c"]]))


def test_repeat_penalty_hand_values_and_direction():
    """arXiv 2509.06941 (batch exploration): r̃_i = r_i − β m_i/(G − 1), m_i = others with i's answer."""
    from polyray.objectives.advantages import compute_repeat_penalty_advantages

    rewards = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    adv = compute_repeat_penalty_advantages(rewards, [["a", "a", "b", "a"]], beta=0.6)  # m = 2, 2, 0, 2
    expected = _group_loop([1 - 0.4, 1 - 0.4, 1.0, -0.4])
    torch.testing.assert_close(adv, torch.tensor([expected], dtype=torch.float64))
    assert adv[0, 2] > adv[0, 0] == adv[0, 1] > adv[0, 3]  # the lone correct answer gets the most
    # all answers distinct: plain group advantages; an all-correct group with repeats now carries signal
    distinct = compute_repeat_penalty_advantages(rewards, [["a", "b", "c", "d"]], beta=0.6)
    torch.testing.assert_close(distinct, compute_group_advantages(rewards))
    same = compute_repeat_penalty_advantages(torch.ones(1, 3, dtype=torch.float64), [["x", "x", "y"]], beta=0.5)
    assert same[0, 2] > 0 > same[0, 0]


def test_repeat_penalty_registry_compares_canonical_expressions():
    from polyray.config.advantages import RepeatPenaltyAdvantageConfig

    rewards = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    texts = [["1+2", "(1 + 2)", "2+1"]]  # the first two are the same expression
    by_expr = compute_advantages(RepeatPenaltyAdvantageConfig(answer="countdown_expr"), AdvantageInputs(rewards, texts))
    assert by_expr[0, 2] > 0 > by_expr[0, 0] and by_expr[0, 0] == by_expr[0, 1]
    by_text = compute_advantages(RepeatPenaltyAdvantageConfig(answer="text"), AdvantageInputs(rewards, texts))
    assert torch.all(by_text == 0)  # three different texts: nothing repeats


def test_mix_moves_from_early_to_late():
    from polyray.config.advantages import MixAdvantageConfig
    from polyray.objectives.advantages import mix_weight

    assert [mix_weight(p, 0.25, 0.75) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert [mix_weight(p, 0.5, 0.5) for p in (0.49, 0.5)] == [0.0, 1.0]  # start = end: a switch
    cfg = MixAdvantageConfig(early={"type": "passk", "k": 2}, late={"type": "group"}, start=0.25, end=0.75)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    texts = [["a"] * 4] * 2
    early, late = compute_passk_advantages(rewards, 2), compute_group_advantages(rewards)
    at = lambda p: compute_advantages(cfg, AdvantageInputs(rewards, texts, progress=p))  # noqa: E731
    torch.testing.assert_close(at(0.1), early)
    torch.testing.assert_close(at(0.5), 0.5 * early + 0.5 * late)
    torch.testing.assert_close(at(0.9), late)
    with pytest.raises(ValueError, match="start"):
        MixAdvantageConfig(early={"type": "group"}, late={"type": "group"}, start=0.8, end=0.2)


def test_polychromic_monte_carlo_subsets_approach_the_exact_marginals():
    """Past max_subsets, drawn subsets stand in for all: many draws agree with the enumeration,
    the same seed draws the same subsets, and without sample_subsets it is an error."""
    g = torch.Generator().manual_seed(3)
    rewards = (torch.rand(2, 6, generator=g) > 0.4).to(torch.float64)
    dist = torch.rand(2, 6, 6, generator=g, dtype=torch.float64)
    dist = (dist + dist.transpose(1, 2)) / 2
    exact = compute_polychromic_advantages(rewards, 3, distances=dist)  # C(6, 3) = 20 subsets
    mc = compute_polychromic_advantages(rewards, 3, distances=dist, max_subsets=10, sample_subsets=20_000, seed=1)
    torch.testing.assert_close(mc, exact, atol=0.01, rtol=0)
    few = dict(distances=dist, max_subsets=10, sample_subsets=50)
    torch.testing.assert_close(
        compute_polychromic_advantages(rewards, 3, seed=7, **few),
        compute_polychromic_advantages(rewards, 3, seed=7, **few),
    )
    with pytest.raises(ValueError, match="exceeds"):
        compute_polychromic_advantages(rewards, 3, distances=dist, max_subsets=10)


def test_grpo_config_checks_every_estimator_k():
    from polyray.config import GRPOPhaseConfig

    with pytest.raises(ValueError, match="sample_subsets"):
        GRPOPhaseConfig(group_size=16, advantage={"type": "polychromic", "k": 8})
    GRPOPhaseConfig(group_size=16, advantage={"type": "polychromic", "k": 8, "sample_subsets": 500})
    with pytest.raises(ValueError, match="group_size"):
        GRPOPhaseConfig(
            group_size=4, advantage={"type": "mix", "early": {"type": "passk", "k": 8}, "late": {"type": "group"}}
        )


# ----------------------------------------------------------------------------- step size: uniform groups, scale matching


def _shaped_loop(rewards: list[float], shaped: list[float]) -> list[float]:
    """float64 loop reference of compute_shaped_group_advantages (scale_by_std): a uniform-reward group
    is centred, not divided; any other is group-normalised."""
    if statistics.stdev(rewards) < 1e-6:
        mean = statistics.fmean(shaped)
        return [x - mean for x in shaped]
    return _group_loop(shaped)


@pytest.mark.parametrize("beta", [0.25, 0.5, 1.0])
def test_unlikeliness_beta_acts_in_an_all_correct_group(beta):
    """An all-correct group's shaped rewards spread only by β · rank/G: dividing by their std gave the
    same advantages for every β > 0. Now they are β times one pattern (exact loop reference)."""
    from polyray.objectives.advantages import compute_unlikeliness_advantages

    G = 6
    rewards = torch.ones(1, G, dtype=torch.float64)
    logp = torch.tensor([[-0.3, -2.0, -0.1, -1.0, -0.7, -1.5]], dtype=torch.float64)
    ranks = [4, 0, 5, 2, 3, 1]
    adv = compute_unlikeliness_advantages(rewards, logp, beta)
    expected = _shaped_loop([1.0] * G, [1.0 - beta * r / G for r in ranks])
    torch.testing.assert_close(adv, torch.tensor([expected], dtype=torch.float64))
    unit = compute_unlikeliness_advantages(rewards, logp, 1.0)
    torch.testing.assert_close(adv, beta * unit)  # proportional to β
    assert adv[0, 1] > 0 > adv[0, 2]  # the least likely correct sample gets the most
    # a mixed group is unchanged: group advantages of the shaped rewards
    mixed = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
    shaped = [m * (1.0 - beta * r / G) for m, r in zip(mixed[0].tolist(), ranks)]
    torch.testing.assert_close(
        compute_unlikeliness_advantages(mixed, logp, beta), torch.tensor([_group_loop(shaped)], dtype=torch.float64)
    )


def test_repeat_penalty_beta_acts_in_a_uniform_group():
    """In a group of equal rewards the penalty is the only spread: β = 0.25 and β = 1 differed in
    nothing before; now the advantages scale with β, in reward units (A_i = −β(m_i − mean m)/(G − 1))."""
    from polyray.objectives.advantages import compute_repeat_penalty_advantages

    answers = [["a", "a", "b", "a", "c"]]  # m = 2, 2, 0, 2, 0
    for value in (0.0, 1.0):  # all wrong, all right
        rewards = torch.full((1, 5), value, dtype=torch.float64)
        small = compute_repeat_penalty_advantages(rewards, answers, beta=0.25)
        large = compute_repeat_penalty_advantages(rewards, answers, beta=1.0)
        assert not torch.allclose(small, large)
        torch.testing.assert_close(large, 4.0 * small)
        m = [2, 2, 0, 2, 0]
        expected = _shaped_loop([value] * 5, [value - 1.0 * x / 4 for x in m])
        torch.testing.assert_close(large, torch.tensor([expected], dtype=torch.float64))
        assert abs(float(large[0, 2]) - 1.0 * 1.2 / 4) < 1e-12  # −β (0 − 1.2)/(G − 1)


def test_uniform_group_over_all_binary_groups_matches_loop():
    """Exact enumeration: every 0/1 reward vector of G = 5 and two answer patterns, against the loop."""
    from polyray.objectives.advantages import compute_repeat_penalty_advantages

    answers = ["a", "b", "a", "c", "a"]
    m = [sum(x == y for y in answers) - 1 for x in answers]
    rows = [list(map(float, bits)) for bits in itertools.product((0, 1), repeat=5)]
    rewards = torch.tensor(rows, dtype=torch.float64)
    adv = compute_repeat_penalty_advantages(rewards, [answers] * len(rows), beta=0.5)
    expected = [_shaped_loop(r, [x - 0.5 * mi / 4 for x, mi in zip(r, m)]) for r in rows]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float64))


def _mean_abs(rows: list[list[float]]) -> float:
    return math.fsum(abs(x) for row in rows for x in row) / sum(len(row) for row in rows)


def test_scale_matching_equals_group_mean_abs_by_loop():
    """match_group_scale: A · mean|A_group| / mean|A| over the step, by a float64 loop, for every estimator."""
    from polyray.config.advantages import (
        MixAdvantageConfig,
        PassKAdvantageConfig,
        RepeatPenaltyAdvantageConfig,
        UnlikelinessAdvantageConfig,
    )

    rewards = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0, 1.0, 1.0], [0.0] * 6],
        dtype=torch.float64,
    )
    texts = [["1+2", "3", "1+2", "4", "5", "1+2"]] * 4
    logprobs = [[[-0.1 * (i + 1 + b)] for i in range(6)] for b in range(4)]
    inputs = AdvantageInputs(rewards, texts, logprobs, progress=0.4)
    group_rows = [_group_loop(r) if statistics.stdev(r) > 0 else [0.0] * 6 for r in rewards.tolist()]
    target = _mean_abs(group_rows)
    for cfg in (
        PassKAdvantageConfig(k=4),
        UnlikelinessAdvantageConfig(beta=0.5),
        RepeatPenaltyAdvantageConfig(beta=0.5, answer="countdown_expr"),
        MixAdvantageConfig(early={"type": "passk", "k": 4}, late={"type": "group"}),
    ):
        raw = compute_advantages(cfg, inputs)
        matched = compute_advantages(cfg.model_copy(update={"match_group_scale": True}), inputs)
        scale = target / _mean_abs(raw.tolist())
        torch.testing.assert_close(matched, raw * scale)
        assert abs(_mean_abs(matched.tolist()) - target) < 1e-12
    # group itself is left as it is; all-zero advantages stay zero (no division by zero)
    group = compute_advantages(GroupAdvantageConfig(match_group_scale=True), inputs)
    torch.testing.assert_close(group, compute_group_advantages(rewards))
    zero = AdvantageInputs(torch.zeros(2, 6, dtype=torch.float64), texts[:2])
    assert torch.all(compute_advantages(PassKAdvantageConfig(k=4, match_group_scale=True), zero) == 0)


def test_passk_k4_carries_less_mass_than_group():
    """Why scale matching matters: on one group of 8 with 2 correct, passk (k = 4) moves less mass than group."""
    rewards = torch.tensor([[1.0, 1.0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    ratio = compute_passk_advantages(rewards, 4).abs().mean() / compute_group_advantages(rewards).abs().mean()
    assert 0.1 < float(ratio) < 0.9


def test_mix_magnitude_shares_by_loop():
    """(1 − w) mean|A_early| and w mean|A_late| over their sum; with matched scales, the nominal weights."""
    from polyray.config.advantages import MixAdvantageConfig
    from polyray.objectives.advantages import compute_mix_magnitude_shares, mix_magnitude_shares

    rewards = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64
    )
    inputs = AdvantageInputs(rewards, [["a"] * 8] * 2, progress=0.4)
    early, late = compute_passk_advantages(rewards, 4), compute_group_advantages(rewards)
    e, l_ = 0.6 * _mean_abs(early.tolist()), 0.4 * _mean_abs(late.tolist())
    cfg = MixAdvantageConfig(early={"type": "passk", "k": 4}, late={"type": "group"})
    shares = mix_magnitude_shares(cfg, inputs)
    assert shares == pytest.approx((e / (e + l_), l_ / (e + l_)), abs=1e-12)
    assert shares[1] > 0.4  # group carries more than its nominal 40%
    matched = cfg.model_copy(update={"early": cfg.early.model_copy(update={"match_group_scale": True})})
    assert mix_magnitude_shares(matched, inputs) == pytest.approx((0.6, 0.4), abs=1e-12)
    assert all(math.isnan(x) for x in compute_mix_magnitude_shares(torch.zeros(1, 2), torch.zeros(1, 2), 0.5))


def test_unlikeliness_ties_share_their_mean_rank():
    """Identical samples (equal log-probs) are shaped alike: ranks are scipy's average ranks − 1, so an
    all-correct group of tied samples gets zero advantages instead of an order set by sample index."""
    from scipy.stats import rankdata

    from polyray.objectives.advantages import compute_unlikeliness_advantages

    beta, G = 0.5, 6
    logp = torch.tensor([[-0.4, -1.0, -0.4, -0.2, -1.0, -0.4]], dtype=torch.float64)
    ranks = rankdata(logp[0].numpy(), method="average") - 1  # 3, 0.5, 3, 5, 0.5, 3
    mixed = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    shaped = [m * (1.0 - beta * r / G) for m, r in zip(mixed[0].tolist(), ranks)]
    torch.testing.assert_close(
        compute_unlikeliness_advantages(mixed, logp, beta), torch.tensor([_group_loop(shaped)], dtype=torch.float64)
    )
    adv = compute_unlikeliness_advantages(mixed, logp, beta)
    assert adv[0, 1] == adv[0, 4]  # the two identical correct samples are treated alike
    tied = compute_unlikeliness_advantages(
        torch.ones(1, G, dtype=torch.float64), torch.full((1, G), -0.5, dtype=torch.float64), beta
    )
    assert torch.all(tied == 0)


# ----------------------------------------------------------------------------- frontier estimators


def _passk_loop(row: list[float], k: int) -> list[float]:
    marginal, _, sd = enumerate_passk(row, k)
    return [m / (sd + 1e-6) for m in marginal]


def _scaled(rows: list[list[float]], target: float) -> list[list[float]]:
    size = _mean_abs(rows)
    return rows if size == 0 else [[x * target / size for x in row] for row in rows]


@pytest.mark.parametrize("progress", [0.0, 0.25, 0.5, 0.75, 0.95])
def test_anneal_matches_float64_loop(progress):
    """anneal (arXiv 2505.15201, 2508.10751): (1 − w)·passk·s_p + w·group, passk scaled to group's mean |A|
    (s_p = mean|A_group| / mean|A_passk| over the step), the blend scaled again; w from 0 at 0.25 to 1 at 0.75."""
    from polyray.config.advantages import AnnealAdvantageConfig
    from polyray.objectives.advantages import mix_weight

    rewards = [
        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        [1.0] * 6,
        [0.0, 1.0, 1.0, 1.0, 0.0, 0.0],
    ]
    group = [_group_loop(r) if statistics.stdev(r) > 0 else [0.0] * 6 for r in rewards]
    passk = _scaled([_passk_loop(r, 3) for r in rewards], _mean_abs(group))
    w = {0.0: 0.0, 0.25: 0.0, 0.5: 0.5, 0.75: 1.0, 0.95: 1.0}[progress]
    assert mix_weight(progress, 0.25, 0.75) == w
    blend = _scaled([[(1 - w) * p + w * g for p, g in zip(pr, gr)] for pr, gr in zip(passk, group)], _mean_abs(group))
    cfg = AnnealAdvantageConfig(k=3, start=0.25, end=0.75)
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = compute_advantages(cfg, AdvantageInputs(r, [["x"] * 6] * 4, progress=progress))
    torch.testing.assert_close(adv, torch.tensor(blend, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert abs(_mean_abs(adv.tolist()) - _mean_abs(group)) < 1e-12  # the switch keeps group's step size
    if w == 0.0:  # before the switch: pass@k's direction at group's size, not passk's raw (smaller) size
        assert _mean_abs(compute_passk_advantages(r, 3).tolist()) < 0.9 * _mean_abs(adv.tolist())


def test_anneal_config_checks():
    from polyray.config import GRPOPhaseConfig
    from polyray.config.advantages import AnnealAdvantageConfig

    cfg = AnnealAdvantageConfig()
    assert (cfg.k, cfg.start, cfg.end, cfg.match_group_scale, cfg.needs_binary_rewards()) == (4, 0.5, 0.5, True, True)
    assert cfg.as_mix().early.match_group_scale and cfg.as_mix().late.match_group_scale
    with pytest.raises(ValueError, match="start"):
        AnnealAdvantageConfig(start=0.8, end=0.2)
    with pytest.raises(ValueError, match="advantage.k"):
        GRPOPhaseConfig(group_size=4, advantage={"type": "anneal", "k": 8})


def _distinct_correct_loop(texts, rewards, S):
    correct = [texts[i] for i in S if rewards[i] == 1.0]
    if not correct:
        return 0.0
    d = 1.0 if len(correct) == 1 else len(set(correct)) / len(correct)  # countdown_expr on the correct ones
    return statistics.fmean(rewards[i] for i in S) * d


@pytest.mark.parametrize("k", [2, 3, 4])
def test_polychromic_correct_matches_subset_enumeration(k):
    """polychromic_correct (arXiv 2509.25424, diversity over correct samples only): A_i = mean_{S∋i} f(S) − mean_S f(S),
    f(S) = mean r(S) · d(correct of S), by enumerating every k-subset in float64."""
    from polyray.config.advantages import PolychromicCorrectAdvantageConfig

    texts = [["1+2", "1+2", "3*4", "5-1", "6/2", "7+7"], ["2*2", "2*2", "2*2", "8-1", "9-1", "4+4"], ["1"] * 6]
    rewards = [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0, 0.0, 0.0], [0.0] * 6]
    cfg = PolychromicCorrectAdvantageConfig(k=k, diversity="countdown_expr")
    adv = compute_advantages(cfg, AdvantageInputs(torch.tensor(rewards, dtype=torch.float64), texts))
    for b in range(3):
        subsets = list(itertools.combinations(range(6), k))
        f = {S: _distinct_correct_loop(texts[b], rewards[b], S) for S in subsets}
        mean_all = math.fsum(f.values()) / len(subsets)
        for i in range(6):
            expected = math.fsum(f[S] for S in subsets if i in S) / math.comb(5, k - 1) - mean_all
            assert adv[b, i].item() == pytest.approx(expected, abs=1e-12)


def test_polychromic_correct_ignores_the_wrong_answers_diversity():
    """With binary rewards and countdown_expr, f(S) = distinct correct answers / k: making the wrong answers all
    different changes polychromic's advantages but not polychromic_correct's; a repeated correct answer earns less."""
    from polyray.config.advantages import PolychromicAdvantageConfig, PolychromicCorrectAdvantageConfig

    r = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    same_wrong, diverse_wrong = [["1+2", "1+2", "3*4", "9", "9", "9"]], [["1+2", "1+2", "3*4", "5-1", "6/2", "7+7"]]
    correct_cfg, plain_cfg = PolychromicCorrectAdvantageConfig(k=3), PolychromicAdvantageConfig(k=3)
    a = compute_advantages(correct_cfg, AdvantageInputs(r, same_wrong))
    torch.testing.assert_close(a, compute_advantages(correct_cfg, AdvantageInputs(r, diverse_wrong)), rtol=0, atol=0)
    assert not torch.allclose(
        compute_advantages(plain_cfg, AdvantageInputs(r, same_wrong)),
        compute_advantages(plain_cfg, AdvantageInputs(r, diverse_wrong)),
    )
    assert a[0, 2] > a[0, 0] > 0 > a[0, 3]  # the lone correct answer > a repeated one > any wrong one
    assert torch.all(a[0, 3:] == a[0, 3])


def test_w_reinforce_matches_float64_loop():
    """W-REINFORCE (arXiv 2506.01347): λ on correct samples, −1 on wrong ones, no baseline (uniform groups act)."""
    from polyray.config.advantages import WReinforceAdvantageConfig
    from polyray.objectives.advantages import compute_w_reinforce_advantages

    gen = torch.Generator().manual_seed(3)
    r = (torch.rand(6, 5, generator=gen, dtype=torch.float64) < 0.4).to(torch.float64)
    r[0], r[1] = 1.0, 0.0
    for lam in (0.0, 0.1, 0.5, 1.0):
        adv = compute_advantages(WReinforceAdvantageConfig(lam=lam), AdvantageInputs(r, [["a"] * 5] * 6))
        for b, row in enumerate(r.tolist()):
            for i, x in enumerate(row):
                assert adv[b, i].item() == (lam if x == 1.0 else -1.0)
    assert WReinforceAdvantageConfig().lam == 0.1 and WReinforceAdvantageConfig().needs_binary_rewards()
    with pytest.raises(ValueError, match="binary"):
        compute_w_reinforce_advantages(torch.tensor([[0.5, 1.0]]))


NAN = math.nan


def _scored_group_loop(rewards: list[list[float]], scale_by_std: bool = True, eps: float = 1e-6) -> list[list[float]]:
    """float64 reference: per group, mean and sample std over the scored (non-NaN) rewards only; an
    unscored sample, and every sample of a group with fewer than 2 scored, gets 0."""
    out = []
    for row in rewards:
        kept = [r for r in row if not math.isnan(r)]
        if len(kept) < 2:
            out.append([0.0] * len(row))
            continue
        mean = math.fsum(kept) / len(kept)
        scale = statistics.stdev(kept) + eps if scale_by_std else 1.0
        out.append([0.0 if math.isnan(r) else (r - mean) / scale for r in row])
    return out


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_unscored_samples_are_left_out_of_their_group(scale_by_std):
    """A reward with no score (NaN: the judge never answered parseably) is not a 0: the group's mean
    and std are over its scored samples, the unscored sample's advantage is 0."""
    gen = torch.Generator().manual_seed(0)
    rewards = torch.rand(6, 5, generator=gen, dtype=torch.float64)
    rewards[0, 1] = rewards[2, 0] = rewards[2, 4] = NAN  # one, two unscored
    rewards[3, :4] = NAN  # one scored sample left: no baseline
    rewards[4, :] = NAN
    texts = [[f"{b}{g}" for g in range(5)] for b in range(6)]
    cfg = GroupAdvantageConfig(scale_by_std=scale_by_std)
    adv = compute_advantages(cfg, AdvantageInputs(rewards, texts))
    expected = torch.tensor(_scored_group_loop(rewards.tolist(), scale_by_std), dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=1e-12, atol=1e-12)
    assert not adv.isnan().any()
    full = [1, 5]  # fully scored groups: exactly what they get with no NaN anywhere
    torch.testing.assert_close(adv[full], compute_group_advantages(rewards[full], scale_by_std))
    zeroed = rewards.nan_to_num(0.0)  # what scoring "no score" as 0 would have taught
    assert not torch.allclose(adv[0], compute_group_advantages(zeroed, scale_by_std)[0])


def test_unscored_samples_with_other_estimators_and_scale_matching():
    rewards = torch.tensor([[1.0, 0.0, NAN, 1.0], [0.0, 1.0, 1.0, 0.0], [NAN, NAN, 1.0, 0.0]], dtype=torch.float64)
    texts = [["a", "b", "c", "d"]] * 3
    rloo = compute_advantages(ADVANTAGE_ESTIMATORS["rloo"][0](), AdvantageInputs(rewards, texts))
    for b, row in enumerate(rewards.tolist()):  # r_i - mean of the *other scored* samples
        kept = [g for g, r in enumerate(row) if not math.isnan(r)]
        for g in range(4):
            want = 0.0 if g not in kept else row[g] - math.fsum(row[j] for j in kept if j != g) / (len(kept) - 1)
            assert rloo[b, g].item() == pytest.approx(want, abs=1e-12)
    passk = compute_advantages(ADVANTAGE_ESTIMATORS["passk"][0](k=3), AdvantageInputs(rewards, texts))
    assert passk[2].abs().sum() == 0  # 2 scored samples < k = 3: the group carries no advantage
    torch.testing.assert_close(passk[0, [0, 1, 3]], compute_passk_advantages(rewards[0:1, [0, 1, 3]], 3)[0])
    rloo_matched = ADVANTAGE_ESTIMATORS["rloo"][0](match_group_scale=True)
    matched = compute_advantages(rloo_matched, AdvantageInputs(rewards, texts))
    group = torch.tensor(_scored_group_loop(rewards.tolist()), dtype=torch.float64)
    assert matched.abs().mean().item() == pytest.approx(group.abs().mean().item(), rel=1e-12)
    assert matched[0, 2] == 0 and matched[2, :2].abs().sum() == 0


def _risk_seeking_loop(rewards: list[list[float]], beta: float) -> list[list[float]]:
    """float64 reference, straight from the formula: per group of the scored (non-NaN) rewards,
    S = (1/β)·log((1/G)·Σ_j exp(β r_j)) and A_i = (exp(β(r_i − S)) − 1)/β; an unscored sample,
    and every sample of a group with fewer than 2 scored, gets 0."""
    out = []
    for row in rewards:
        kept = [r for r in row if not math.isnan(r)]
        if len(kept) < 2:
            out.append([0.0] * len(row))
            continue
        total = 0.0
        for r in kept:
            total += math.exp(beta * r)
        s = math.log(total / len(kept)) / beta
        out.append([0.0 if math.isnan(r) else (math.exp(beta * (r - s)) - 1.0) / beta for r in row])
    return out


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 4.0, 8.0])
def test_risk_seeking_matches_float64_loop(beta):
    """RS-GRPO (arXiv 2509.24261): A_i = (exp(β(r_i − S)) − 1)/β, S = (1/β)·log mean_j exp(β r_j), on rewards in
    [0, 1] and binary ones; Σ_i exp(β(r_i − S)) = G, so each group's advantages sum to zero."""
    from polyray.config.advantages import RiskSeekingAdvantageConfig
    from polyray.objectives.advantages import compute_risk_seeking_advantages

    gen = torch.Generator().manual_seed(7)
    uniform = torch.rand(6, 8, generator=gen, dtype=torch.float64)
    binary = (torch.rand(6, 8, generator=gen, dtype=torch.float64) < 0.3).to(torch.float64)
    binary[0], binary[1, 0] = 0.0, 1.0  # an all-wrong group and a lone success
    for r in (uniform, binary):
        adv = compute_advantages(RiskSeekingAdvantageConfig(beta=beta), AdvantageInputs(r, [["a"] * 8] * 6))
        expected = _risk_seeking_loop(r.tolist(), beta)
        for b in range(6):
            for i in range(8):
                assert adv[b, i].item() == pytest.approx(expected[b][i], abs=1e-12)
            assert math.fsum(adv[b].tolist()) == pytest.approx(0.0, abs=1e-12)
        torch.testing.assert_close(compute_risk_seeking_advantages(r, beta), adv, rtol=0, atol=0)
        assert compute_risk_seeking_advantages(r.to(torch.float32), beta).dtype == torch.float32
    with pytest.raises(ValueError, match="beta > 0"):
        compute_risk_seeking_advantages(uniform, 0.0)


@pytest.mark.parametrize("beta", [1e-3, 1e-6, 1e-9])
def test_risk_seeking_small_beta_is_the_group_baseline(beta):
    """As β → 0, A_i → r_i − mean r (Dr. GRPO's un-normalised baseline), with an O(β) difference."""
    from polyray.objectives.advantages import compute_risk_seeking_advantages

    r = torch.rand(5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    adv = compute_risk_seeking_advantages(r, beta)
    for b, row in enumerate(r.tolist()):
        mean = math.fsum(row) / len(row)
        for i, ri in enumerate(row):
            assert adv[b, i].item() == pytest.approx(ri - mean, abs=max(beta, 1e-9))


def test_risk_seeking_equal_rewards_give_zero():
    """A group whose rewards are all equal carries no advantage, exactly, at any β."""
    from polyray.objectives.advantages import compute_risk_seeking_advantages

    r = torch.tensor([[0.0] * 5, [1.0] * 5, [0.3] * 5, [0.7123] * 5, [-2.5] * 5], dtype=torch.float64)
    for beta in (1e-9, 0.5, 2.0, 4.0, 50.0, 1e3):
        assert torch.equal(compute_risk_seeking_advantages(r, beta), torch.zeros_like(r))


@pytest.mark.parametrize("beta", [2.0, 4.0])
def test_risk_seeking_weights_rare_successes(beta):
    """Binary rewards, G = 8, c correct: a correct sample's advantage grows as c shrinks, and from c = 4 to
    c = 1 by more than group's (r − mean)/(std + eps) does; a wrong one's is never below −1/β."""
    from polyray.objectives.advantages import compute_risk_seeking_advantages

    G = 8
    r = torch.tensor([[1.0] * c + [0.0] * (G - c) for c in range(1, G)], dtype=torch.float64)  # row c − 1: c correct
    adv, group = compute_risk_seeking_advantages(r, beta), compute_group_advantages(r)
    correct = adv[:, 0].tolist()
    assert all(a > b > 0 for a, b in zip(correct, correct[1:]))
    assert correct[0] / correct[3] > group[0, 0].item() / group[3, 0].item()
    assert bool((adv[:, -1] < 0).all()) and bool((adv >= -1.0 / beta).all())


def test_risk_seeking_unscored_samples_are_left_out_of_their_group():
    """NaN rewards (no score): S and the advantages over the group's scored samples only, 0 for the unscored;
    a group with one scored sample carries none; ``match_group_scale`` matches group's mean |A| on the same."""
    from polyray.config.advantages import RiskSeekingAdvantageConfig

    rewards = torch.rand(6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rewards[0, 1] = rewards[2, 0] = rewards[2, 4] = NAN
    rewards[3, :4] = NAN
    rewards[4, :] = NAN
    texts = [["a"] * 5] * 6
    adv = compute_advantages(RiskSeekingAdvantageConfig(beta=4.0), AdvantageInputs(rewards, texts))
    expected = torch.tensor(_risk_seeking_loop(rewards.tolist(), 4.0), dtype=torch.float64)
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)
    assert not adv.isnan().any() and adv[0, 1] == 0 and adv[3:5].abs().sum() == 0
    matched = compute_advantages(
        RiskSeekingAdvantageConfig(beta=4.0, match_group_scale=True), AdvantageInputs(rewards, texts)
    )
    group = torch.tensor(_scored_group_loop(rewards.tolist()), dtype=torch.float64)
    assert matched.abs().mean().item() == pytest.approx(group.abs().mean().item(), rel=1e-12)
    torch.testing.assert_close(matched, adv * (group.abs().mean() / adv.abs().mean()), rtol=1e-12, atol=0)


def test_risk_seeking_config_parses_and_checks_beta():
    """``{type: risk_seeking, beta: 4}`` is the risk-seeking estimator; β must be a finite number > 0."""
    from pydantic import TypeAdapter, ValidationError

    from polyray.config.advantages import AdvantageConfig, RiskSeekingAdvantageConfig

    adapter = TypeAdapter(AdvantageConfig)
    cfg = adapter.validate_python({"type": "risk_seeking", "beta": 4})
    assert isinstance(cfg, RiskSeekingAdvantageConfig) and cfg.beta == 4.0 and not cfg.match_group_scale
    assert RiskSeekingAdvantageConfig().beta == 2.0 and not cfg.needs_binary_rewards()
    for beta in (0, -1.0, math.inf):
        with pytest.raises(ValidationError, match=r"risk_seeking\.beta"):
            adapter.validate_python({"type": "risk_seeking", "beta": beta})
