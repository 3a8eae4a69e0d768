"""The joint seeds-and-prompts bootstrap covers at its nominal level on synthetic designs shaped
like an experiment's (5 seeds, 256 test prompts shared by every seed); drawing prompts apart per
seed (the scheme it replaced) does not.

One model's pass@1 (binary outcomes): a prompt's success probability in seed s is
expit(μ + a_s + b_i + g_si), a_s ~ N(0, 0.08²) the training run's effect, b_i ~ N(0, 1.2²) the
prompt's difficulty, shared by every seed, g_si ~ N(0, 0.3²) a seed x prompt interaction; the
per-prompt value is pass@1 = c/10 from 10 samples. The seed effect is pass@1's spread over seeds in
docs/recipes.md's experiments (SD ≈ 0.01 at pass@1 ≈ 0.14). The true value, the mean over new
seeds and new prompts, is E[expit(μ + σZ)] by Gauss–Hermite quadrature, independent of the
bootstrap.

A paired difference (continuous): treatment − control per seed and prompt is
δ + a_s + b_i + e_si with a_s ~ N(0, 0.005²) (the part of a seed's run both models do not share),
b_i ~ N(0, 0.15²) (the treatment helps some prompts and hurts others, the same in every seed),
e_si ~ N(0, 0.05²); true value δ.

Coverage at nominal 0.95, measured with 1000 replications x 1000 resamples (this test runs 1000 x 400):

| design                                                   | joint draw | prompts apart per seed |
|----------------------------------------------------------|------------|------------------------|
| one model's pass@1 (this test)                           | 0.950      | 0.773                  |
| paired difference, continuous (this test)                | 0.945      | 0.675                  |
| paired difference, binary (both arms as above; treatment |            |                        |
|   +0.3 shift, seed 0.08, prompt 0.8, interaction 0.3)    | 0.962      | 0.889                  |
| the same, interaction 0.6 in both arms                   | 0.980      | 0.953                  |
| one model, seed effect 0.3 instead of 0.08               | 0.900      | 0.800                  |

The last three rows are where the joint interval is off, as its docstring says. A difference of
two binary arms carries both arms' per-prompt sampling noise, a seed x prompt residual the
pigeonhole bootstrap counts about three times (Owen 2007): conservative, more so as that residual
grows. With 5 seeds carrying most of the variance it is narrow (plug-in seed variance, normal
tails of a percentile interval); there the paired t-interval over seeds is the one to read.
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy.special import expit

from polyray.eval.stats import hierarchical_bootstrap

SEEDS, PROMPTS, SAMPLES, REPS, RESAMPLES = 5, 256, 10, 1000, 400


def _mean_of_expit(mu: float, sd: float) -> float:
    """E[expit(mu + sd Z)], Z ~ N(0, 1), by 80-point Gauss–Hermite (probabilists') quadrature."""
    z, w = hermegauss(80)
    return float((w * expit(mu + sd * z)).sum() / w.sum())


def _coverage(per_prompt: np.ndarray, true: float) -> dict[str, float]:
    """Share of the replications (first axis) whose 95% interval holds ``true``, per scheme."""
    hits = {"joint": 0, "apart": 0}
    for r, y in enumerate(per_prompt):
        for key, shared in (("joint", True), ("apart", False)):
            ci = hierarchical_bootstrap(y, shared_prompts=shared, n_resamples=RESAMPLES, seed=r)
            hits[key] += ci.low <= true <= ci.high
    return {k: v / len(per_prompt) for k, v in hits.items()}


def test_joint_bootstrap_covers_one_models_pass1_and_the_old_scheme_does_not():
    mu, seed_sd, prompt_sd, inter_sd = -1.5, 0.08, 1.2, 0.3
    rng = np.random.default_rng(2024)
    eta = mu + rng.normal(0, seed_sd, (REPS, SEEDS, 1)) + rng.normal(0, prompt_sd, (REPS, 1, PROMPTS))
    pass1 = rng.binomial(SAMPLES, expit(eta + rng.normal(0, inter_sd, (REPS, SEEDS, PROMPTS)))) / SAMPLES
    true = _mean_of_expit(mu, float(np.sqrt(seed_sd**2 + prompt_sd**2 + inter_sd**2)))
    assert 0.2 < true < 0.3  # pass@1 of the order the experiments measure
    cover = _coverage(pass1, true)
    assert 0.93 <= cover["joint"] <= 0.97, cover
    assert cover["apart"] < 0.85, cover  # a prompt's difficulty is every seed's: it does not average out


def test_joint_bootstrap_covers_a_paired_difference_and_the_old_scheme_does_not():
    delta, seed_sd, prompt_sd, resid_sd = 0.02, 0.005, 0.15, 0.05
    rng = np.random.default_rng(7)
    diffs = (
        delta
        + rng.normal(0, seed_sd, (REPS, SEEDS, 1))
        + rng.normal(0, prompt_sd, (REPS, 1, PROMPTS))
        + rng.normal(0, resid_sd, (REPS, SEEDS, PROMPTS))
    )
    cover = _coverage(diffs, delta)
    assert 0.93 <= cover["joint"] <= 0.97, cover
    assert cover["apart"] < 0.8, cover
