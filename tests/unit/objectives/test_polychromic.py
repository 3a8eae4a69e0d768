"""Polychromic SFT estimator (docs/algorithms.md §1) on a toy categorical policy.

The policy is softmax(θ) over 4 outcomes; a "set" is n iid draws. Everything is small
enough to enumerate, so the exact gradient of E[D(Y)] comes from autograd on the exact
expectation, and the estimator's expected gradient can be enumerated too (an exact
identity) besides being checked by Monte Carlo within a standard-error tolerance.
"""

import itertools
import math

import pytest
import torch

from polyray.diversity import semantic_from_embeddings
from polyray.objectives.polychromic import (
    compute_loo_advantages,
    compute_polychromic_sft_loss,
    compute_subset_advantage_scale,
    compute_subset_marginals,
    enumerate_subsets,
)
from polyray.objectives.sft import compute_sft_loss

V = 4  # outcomes
THETA0 = [0.4, -0.3, 0.9, 0.0]
# symmetric distances between outcomes, zero diagonal
DIST = [[0.0, 1.0, 0.2, 0.7], [1.0, 0.0, 0.5, 0.9], [0.2, 0.5, 0.0, 0.4], [0.7, 0.9, 0.4, 0.0]]


def n_distinct(ys: tuple[int, ...]) -> float:
    return float(len(set(ys)))


def mean_pairwise(ys: tuple[int, ...]) -> float:
    pairs = list(itertools.combinations(ys, 2))
    return sum(DIST[a][b] for a, b in pairs) / len(pairs) if pairs else 0.0


SET_FUNCTIONS = {"distinct": n_distinct, "pairwise": mean_pairwise}


def theta():
    return torch.tensor(THETA0, dtype=torch.float64, requires_grad=True)


def exact_grad_expected_d(D, m: int) -> torch.Tensor:
    """∇_θ E_{Y ~ π^m}[D(Y)] by autograd through the enumerated expectation. (V,)"""
    th = theta()
    p = torch.softmax(th, 0)
    expectation = sum(torch.prod(p[list(ys)]) * D(ys) for ys in itertools.product(range(V), repeat=m))
    (g,) = torch.autograd.grad(expectation, th)
    return g


def loo_advantages_of(D, ys: tuple[int, ...]) -> torch.Tensor:
    n = len(ys)
    full = torch.tensor([D(ys)], dtype=torch.float64)
    loo = torch.tensor([[D(ys[:i] + ys[i + 1 :]) for i in range(n)]], dtype=torch.float64)
    return compute_loo_advantages(full, loo)[0]  # (n,)


def compute_subset_advantages(n: int, k: int, subset_score) -> torch.Tensor:
    """(n,) k-subset marginals of one set, f(S) = subset_score(S) over every k-subset."""
    subsets = enumerate_subsets(n, k)
    scores = torch.tensor([[float(subset_score(s)) for s in subsets]], dtype=torch.float64)  # (1, S)
    return compute_subset_marginals(scores, n, subsets)[0]


def subset_advantages_of(D, ys: tuple[int, ...], k: int) -> torch.Tensor:
    return compute_subset_advantages(len(ys), k, lambda s: D(tuple(ys[j] for j in s)))  # (n,)


def advantage_table(D, n: int, form: str, k: int | None = None) -> torch.Tensor:
    """(V**n, n) advantages of every ordered set, indexed by its base-V code."""
    rows = []
    for ys in itertools.product(range(V), repeat=n):
        rows.append(loo_advantages_of(D, ys) if form == "loo" else subset_advantages_of(D, ys, k))
    return torch.stack(rows)


def codes(ys: torch.Tensor) -> torch.Tensor:
    """(M, n) outcomes -> (M,) base-V code in itertools.product order."""
    n = ys.shape[1]
    weights = torch.tensor([V ** (n - 1 - j) for j in range(n)])
    return (ys * weights).sum(-1)


def expected_estimator_grad(table: torch.Tensor, n: int) -> torch.Tensor:
    """E_Y[Σ_i a_i ∇log π(y_i)] by enumeration; ∇_θ log softmax(θ)[y] = e_y − π. (V,)"""
    p = torch.softmax(torch.tensor(THETA0, dtype=torch.float64), 0)
    total = torch.zeros(V, dtype=torch.float64)
    for code, ys in enumerate(itertools.product(range(V), repeat=n)):
        prob = torch.prod(p[list(ys)])
        onehot = torch.nn.functional.one_hot(torch.tensor(ys), V).double()  # (n, V)
        score = (table[code].unsqueeze(-1) * (onehot - p)).sum(0)
        total += prob * score
    return total


@pytest.mark.parametrize("name", sorted(SET_FUNCTIONS))
@pytest.mark.parametrize("n", [2, 3, 4])
def test_loo_estimator_is_exactly_unbiased_by_enumeration(name, n):
    D = SET_FUNCTIONS[name]
    exact = exact_grad_expected_d(D, n)
    assert exact.abs().max() > 1e-3  # a non-trivial target
    got = expected_estimator_grad(advantage_table(D, n, "loo"), n)
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SET_FUNCTIONS))
@pytest.mark.parametrize("n,k", [(3, 2), (4, 2), (4, 3)])
def test_subset_estimator_expectation_by_enumeration(name, n, k):
    """E[Σ_i a_i ∇log π(y_i)] = ((n − k)/k) ∇E[D(Y_k)]: unbiased after compute_subset_advantage_scale."""
    D = SET_FUNCTIONS[name]
    exact_k = exact_grad_expected_d(D, k)
    got = expected_estimator_grad(advantage_table(D, n, "subset", k), n)
    torch.testing.assert_close(got, (n - k) / k * exact_k, rtol=0, atol=1e-12)
    torch.testing.assert_close(compute_subset_advantage_scale(n, k) * got, exact_k, rtol=0, atol=1e-12)


def _monte_carlo(D, n, form, k, M, seed):
    """Per-set gradients g_b = Σ_i a_{b,i} ∇log π(y_{b,i}) for M sampled sets, and the loss-based mean."""
    th = theta()
    p = torch.softmax(th, 0)
    gen = torch.Generator().manual_seed(seed)
    ys = torch.multinomial(p.detach(), M * n, replacement=True, generator=gen).view(M, n)  # (M, n)
    adv = advantage_table(D, n, form, k)[codes(ys)]  # (M, n)
    score = torch.nn.functional.one_hot(ys, V).double() - p.detach()  # (M, n, V)
    per_set = (adv.unsqueeze(-1) * score).sum(1)  # (M, V)
    # the same mean through the loss function: loss = 0 − 1·mean_b Σ_i a log π
    sample_logp = torch.log_softmax(th, 0)[ys]  # (M, n), carries grad
    loss, metrics = compute_polychromic_sft_loss(torch.zeros((), dtype=torch.float64), sample_logp, adv, lam=1.0)
    (g_loss,) = torch.autograd.grad(loss, th)
    return per_set, -g_loss


@pytest.mark.parametrize("name", sorted(SET_FUNCTIONS))
def test_loo_estimator_monte_carlo_matches_exact_gradient(name):
    D, n, M = SET_FUNCTIONS[name], 3, 100_000
    per_set, from_loss = _monte_carlo(D, n, "loo", None, M, seed=0)
    torch.testing.assert_close(from_loss, per_set.mean(0), rtol=0, atol=1e-12)
    exact = exact_grad_expected_d(D, n)
    se = per_set.std(0) / math.sqrt(M)
    assert torch.all((per_set.mean(0) - exact).abs() <= 4.5 * se + 1e-12), (per_set.mean(0), exact, se)


@pytest.mark.parametrize("name", sorted(SET_FUNCTIONS))
def test_subset_estimator_monte_carlo_matches_exact_gradient(name):
    D, n, k, M = SET_FUNCTIONS[name], 4, 2, 100_000
    per_set, from_loss = _monte_carlo(D, n, "subset", k, M, seed=1)
    torch.testing.assert_close(from_loss, per_set.mean(0), rtol=0, atol=1e-12)
    scaled = per_set * compute_subset_advantage_scale(n, k)
    exact = exact_grad_expected_d(D, k)
    se = scaled.std(0) / math.sqrt(M)
    assert torch.all((scaled.mean(0) - exact).abs() <= 4.5 * se + 1e-12), (scaled.mean(0), exact, se)


def test_no_grad_diversity_bug_has_zero_gradient():
    """The seeds' form: D computed on the samples under no_grad, then loss = NLL − λ·D.

    D is a constant of θ, so the loss gradient is the NLL gradient bit for bit, while
    the true ∇E[D] is far from zero: that version trained plain SFT.
    """
    th = theta()
    logp = torch.log_softmax(th, 0)
    nll = -logp[2]  # reference outcome y* = 2
    ys = torch.tensor([0, 0, 2])  # a sampled set: two distinct outcomes
    with torch.no_grad():
        d_const = torch.tensor(n_distinct(tuple(ys.tolist())), dtype=torch.float64)
    assert not d_const.requires_grad
    (g_bug,) = torch.autograd.grad(nll - 0.3 * d_const, th, retain_graph=True)
    (g_sft,) = torch.autograd.grad(nll, th, retain_graph=True)
    assert torch.equal(g_bug, g_sft)
    assert exact_grad_expected_d(n_distinct, 3).abs().max() > 1e-2
    # the score-function surrogate does move θ
    adv = loo_advantages_of(n_distinct, tuple(ys.tolist())).unsqueeze(0)
    assert adv.tolist() == [[0.0, 0.0, 1.0]]  # only the 2 adds a distinct outcome
    loss, _ = compute_polychromic_sft_loss(nll, logp[ys].unsqueeze(0), adv, lam=0.3)
    (g_poly,) = torch.autograd.grad(loss, th)
    assert (g_poly - g_sft).abs().max() > 1e-3


# ---- a tiny autoregressive-ish model for exact-gradient checks ---------------------------


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(7, 5), torch.nn.Linear(5, 7))


def token_logp(model, tokens: torch.Tensor) -> torch.Tensor:
    """(N, T) tokens -> (N, T-1) log p(tokens[t] | tokens[t-1])."""
    logits = model(tokens[:, :-1])
    return torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)


REF = torch.tensor([[1, 2, 3, 4], [2, 2, 5, 6]])
REF_MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def losses(model, samples: torch.Tensor, adv: torch.Tensor, lam: float):
    nll, _ = compute_sft_loss(token_logp(model, REF), REF_MASK)
    B, n, T = samples.shape
    sample_logp = token_logp(model, samples.view(B * n, T)).sum(-1).view(B, n)  # (B, n) sequence log-probs
    return nll, compute_polychromic_sft_loss(nll, sample_logp, adv, lam)


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def loo_semantic(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, n, d) hand embeddings -> (B, n) LOO advantages of the semantic diversity."""
    full = torch.tensor([semantic_from_embeddings(E) for E in embeddings], dtype=torch.float64)
    n = embeddings.shape[1]
    loo = torch.tensor(
        [[semantic_from_embeddings(torch.cat([E[:i], E[i + 1 :]])) for i in range(n)] for E in embeddings],
        dtype=torch.float64,
    )
    return compute_loo_advantages(full, loo)


SAMPLES = torch.tensor([[[1, 3, 3, 0], [1, 4, 6, 2], [1, 0, 5, 5]], [[2, 2, 1, 1], [2, 6, 6, 6], [2, 5, 0, 3]]])


def test_lambda_zero_reproduces_sft_gradients_exactly():
    model = tiny_model()
    adv = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    nll, (loss, metrics) = losses(model, SAMPLES, adv, lam=0.0)
    assert loss is nll
    g_poly = grads(model, loss)
    nll_only, _ = compute_sft_loss(token_logp(model, REF), REF_MASK)
    g_sft = grads(model, nll_only)
    assert all(torch.equal(a, b) for a, b in zip(g_poly, g_sft))
    assert metrics["nll"] == pytest.approx(float(nll_only.detach()))


def test_lambda_term_gradient_nonzero_for_distinct_samples_zero_for_identical():
    model = tiny_model()
    emb_distinct = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]]] * 2)  # (B, n, d)
    adv = loo_semantic(emb_distinct)
    assert adv.abs().min() > 0
    nll, (loss, metrics) = losses(model, SAMPLES, adv, lam=0.5)
    g_poly = grads(model, loss)
    g_sft = grads(model, compute_sft_loss(token_logp(model, REF), REF_MASK)[0])
    diff = sum(float((a - b).abs().sum()) for a, b in zip(g_poly, g_sft))
    assert diff > 1e-4
    assert metrics["adv_abs_mean"] > 0 and metrics["weight_mean"] == 1.0

    # identical samples: D(Y) = D(Y \ i) = 0, the marginals vanish and so does the λ term
    same = SAMPLES[:, :1].expand(-1, 3, -1).contiguous()
    emb_same = torch.tensor([[[0.3, 0.4, 0.5]] * 3] * 2)
    adv_same = loo_semantic(emb_same)
    assert torch.all(adv_same.abs() < 1e-12)
    adv_same = torch.zeros_like(adv_same)  # exact zeros (cosine round-off is ~1e-16)
    _, (loss_same, _) = losses(model, same, adv_same, lam=0.5)
    g_same = grads(model, loss_same)
    assert all(torch.allclose(a, b, rtol=0, atol=0) for a, b in zip(g_same, g_sft))


def test_importance_weights_are_clipped_and_stop_gradient():
    sample_logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    nll = torch.tensor(0.7, dtype=torch.float64)
    loss, m = compute_polychromic_sft_loss(nll, sample_logp, adv, lam=0.5, old_logp=old, ratio_clip=1.5)
    w = [min(math.exp(0.5), 1.5), math.exp(-1.0)]  # [1.5 (clipped), 0.3679]
    surrogate = 2.0 * w[0] * -1.0 + -1.0 * w[1] * -2.0
    assert loss.item() == pytest.approx(0.7 - 0.5 * surrogate, abs=1e-12)
    (g,) = torch.autograd.grad(loss, sample_logp)
    # w is a constant: d loss / d logp_i = −λ a_i w_i
    torch.testing.assert_close(g, torch.tensor([[-0.5 * 2.0 * w[0], 0.5 * 1.0 * w[1]]], dtype=torch.float64))
    assert m["weight_mean"] == pytest.approx(sum(w) / 2)
    assert m["diversity_surrogate"] == pytest.approx(surrogate)
    assert set(m) == {"nll", "diversity_surrogate", "adv_mean", "adv_abs_mean", "weight_mean", "adv_sum", "weight_sum"}
    assert m["weight_sum"] == pytest.approx(sum(w)) and m["adv_sum"] == pytest.approx(1.0)


def test_parts_of_a_batch_add_up_to_its_loss_and_lambda_zero_keeps_the_samples_forward():
    """A step's micro-batches are any split of its references and (flat) samples: their losses add up to
    the batch's; a part with samples alone gives −λ·surrogate, at λ = 0 a zero with a gradient path."""
    sample_logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.5, -2.5]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[0.4, -0.1, -0.3], [0.2, 0.5, -0.7]], dtype=torch.float64)
    nll = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    for lam in (0.0, 0.7):
        whole, _ = compute_polychromic_sft_loss(nll, sample_logp, adv, lam)
        flat, flat_adv = sample_logp.reshape(-1), adv.reshape(-1)
        first, _ = compute_polychromic_sft_loss(nll, flat[:2], flat_adv[:2], lam, num_groups=2)
        rest, m = compute_polychromic_sft_loss(None, flat[2:], flat_adv[2:], lam, num_groups=2)
        assert float(first + rest) == pytest.approx(float(whole), abs=1e-12) and "nll" not in m
        grad = lambda loss: torch.autograd.grad(loss, sample_logp, allow_unused=True)[0]  # noqa: E731
        g_whole, g_parts = grad(whole), grad(first + rest)
        torch.testing.assert_close(g_parts, torch.zeros_like(g_parts) if g_whole is None else g_whole)  # λ = 0: none
        assert rest.requires_grad  # a part of samples alone still reaches the parameters, also at λ = 0
    refs_only, m = compute_polychromic_sft_loss(nll, None, None, 0.7)
    assert refs_only is nll and set(m) == {"nll"}
    with pytest.raises(ValueError, match="need num_groups"):
        compute_polychromic_sft_loss(None, flat, flat_adv, 0.7)
    with pytest.raises(ValueError, match="references .* or samples"):
        compute_polychromic_sft_loss(None, None, None, 0.7)


def test_subset_advantages_hand_values_and_limits():
    scores = {(0, 1): 1.0, (0, 2): 2.0, (1, 2): 3.0}  # mean 2
    a = compute_subset_advantages(3, 2, scores.__getitem__)
    torch.testing.assert_close(a, torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64))
    assert torch.all(compute_subset_advantages(3, 3, lambda s: 5.0) == 0)  # k = n: one subset, no signal
    assert len(enumerate_subsets(8, 4)) == 70
    with pytest.raises(ValueError, match="exceeds the limit"):
        enumerate_subsets(30, 15)
    with pytest.raises(ValueError):
        enumerate_subsets(3, 4)
    with pytest.raises(ValueError):
        compute_subset_advantage_scale(4, 4)


def test_loo_advantages_shapes_and_values():
    full = torch.tensor([1.0, 0.5])
    loo = torch.tensor([[0.5, 1.0, 0.25], [0.5, 0.5, 0.5]])
    torch.testing.assert_close(compute_loo_advantages(full, loo), torch.tensor([[0.5, 0.0, 0.75], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        compute_loo_advantages(full, loo[0])
    with pytest.raises(ValueError):
        compute_polychromic_sft_loss(torch.tensor(0.0), torch.zeros(2, 3), torch.zeros(3, 2), lam=0.1)
