"""Every statistic polyray reports, as pure functions (docs/algorithms.md §5).

Two kinds of comparison live here, because a claim about a model has two possible units:

- Over prompts (the evaluation job: two fixed models on the same prompts): Mann–Whitney U, paired
  t, Wilcoxon signed-rank, Cohen's d / d_z, Cliff's δ, a bootstrap CI of the mean difference,
  ``compare_models`` / ``compare_many`` (Holm across the job's comparisons). These generalise to
  new prompts, given the two trained models.
- Over seeds (``polyray experiment``; ``polyray sweep``'s mean and t-interval per setting): the
  training run is the unit. Every model of an experiment is trained and evaluated on the same
  seeds (same SFT start, training prompts, sampling seeds and test prompts per seed), so two
  models are compared *paired by seed id*: paired t on the per-seed differences with its
  interval (``paired_t``), Wilcoxon signed-rank (``wilcoxon``), d_z and a TOST equivalence test
  (``equivalence_tost``) with a stated margin; Welch's t and Mann–Whitney U (``welch_t``,
  ``mann_whitney``) only where the seed sets differ (``compare_over_seeds`` picks). These
  intervals are conditional on the one test set every seed used (``CONDITIONAL_ON_TEST_PROMPTS``):
  they generalise to new training runs, not to new prompts. Prompts enter through a bootstrap
  that resamples seeds and the *shared* prompts jointly (``hierarchical_bootstrap``, aligned by
  ``align_prompts``; ``compare_within_seeds`` for a difference, ``interval_over_seeds_and_prompts``
  for one model), whose interval conditions on neither (``CONDITIONAL_ON_NOTHING``); per seed,
  pairing by prompt (``pair_prompts``) and a descriptive Wilcoxon. Holm across one family per test
  (``holm_families``).

Every interval or test result over seeds carries ``conditional_on``: a "95% CI over seeds" that
does not say it holds the test prompts fixed reads as a claim about the task, which it is not.

One function per test, the same over prompts and over seeds (the unit is the caller's choice),
with one answer on degenerate input: every paired difference zero (or every value equal) gives
p = 1, there is no evidence of a difference; a test the data leave undefined (one value, a constant
non-zero paired difference, no spread for a t-test) gives pvalue None with a ``note``. Paired
differences are rounded to 12 decimals first: values that are means carry float noise, and a
constant or tied difference must read as one.

Tests come from scipy.stats; TOST from statsmodels (``ttost_paired`` / ``ttost_ind``); Holm's
step-down adjustment (Holm 1979) from statsmodels (``multipletests(method="holm")``: scipy's
``false_discovery_control`` is Benjamini–Hochberg); only the effect sizes (Cohen's d / d_z,
Cliff's δ) and the bootstrap's resampling are written here.

Results are typed (``results``): a test gives a ``TestResult`` (t-tests a ``TTestResult`` with df
and interval), ``mean_ci`` an ``Interval``, ``bootstrap_ci`` a ``BootstrapInterval``,
``hierarchical_bootstrap`` a ``HierarchicalInterval``, ``equivalence_tost`` an ``Equivalence``,
``noninferiority_paired`` a ``NonInferiority``, ``holm`` a ``HolmResult``; effect sizes are floats.
Each result's ``to_json()`` is its JSON-safe dict (None for NaN/±inf). The aggregates that build a
report (``compare_models``, ``compare_many``, ``compare_over_seeds``, ``compare_within_seeds``,
``raised_and_kept``, ``interval_over_seeds``, ``interval_over_seeds_and_prompts``,
``holm_families``) return those JSON dicts, as results.json and experiment.json hold them.
Samples are 1-D arrays: values per prompt (paired when both models saw the same prompts in the
same order) or per seed.

| module      | holds                                                                          |
|-------------|--------------------------------------------------------------------------------|
| ``base``    | levels, ``conditional_on`` labels, input checks, ``finite_or_none``           |
| ``results`` | the result types and their ``to_json()``                                       |
| ``tests``   | paired t, Welch's t, Wilcoxon, Mann–Whitney, TOST, non-inferiority             |
| ``effects`` | Cohen's d, d_z, Cliff's δ                                                      |
| ``intervals``| t-interval of a mean, bootstrap CI of a difference, the seeds × prompts bootstrap |
| ``multiple``| Holm, Holm per family of a report                                              |
| ``compare`` | two models over prompts (the evaluation job)                                   |
| ``seeds``   | models over seeds, paired by seed id; prompts within and across seeds          |
"""

from __future__ import annotations

from polyray.eval.stats.base import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    CONDITIONAL_ON_MODELS,
    CONDITIONAL_ON_NOTHING,
    CONDITIONAL_ON_SEEDS_PROMPTS_APART,
    CONDITIONAL_ON_TEST_PROMPTS,
    CONFIDENCE,
    EQUIVALENCE_MARGIN,
    EXACT_SPLITS,
    finite_or_none,
)
from polyray.eval.stats.compare import compare_many, compare_models
from polyray.eval.stats.effects import cliffs_delta, cohens_d, cohens_dz
from polyray.eval.stats.intervals import bootstrap_ci, hierarchical_bootstrap, mean_ci
from polyray.eval.stats.multiple import holm, holm_families
from polyray.eval.stats.results import (
    BootstrapInterval,
    Equivalence,
    HierarchicalInterval,
    HolmResult,
    Interval,
    NonInferiority,
    TestResult,
    TTestResult,
)
from polyray.eval.stats.seeds import (
    align_prompts,
    compare_over_seeds,
    compare_within_seeds,
    interval_over_seeds,
    interval_over_seeds_and_prompts,
    pair_prompts,
    raised_and_kept,
)
from polyray.eval.stats.tests import (
    equivalence_tost,
    mann_whitney,
    noninferiority_paired,
    paired_t,
    welch_t,
    wilcoxon,
)

__all__ = [
    "ALPHA",
    "BOOTSTRAP_RESAMPLES",
    "CONDITIONAL_ON_MODELS",
    "CONDITIONAL_ON_NOTHING",
    "CONDITIONAL_ON_SEEDS_PROMPTS_APART",
    "CONDITIONAL_ON_TEST_PROMPTS",
    "CONFIDENCE",
    "EQUIVALENCE_MARGIN",
    "EXACT_SPLITS",
    "BootstrapInterval",
    "Equivalence",
    "HierarchicalInterval",
    "HolmResult",
    "Interval",
    "NonInferiority",
    "TTestResult",
    "TestResult",
    "align_prompts",
    "bootstrap_ci",
    "cliffs_delta",
    "cohens_d",
    "cohens_dz",
    "compare_many",
    "compare_models",
    "compare_over_seeds",
    "compare_within_seeds",
    "equivalence_tost",
    "finite_or_none",
    "hierarchical_bootstrap",
    "holm",
    "holm_families",
    "interval_over_seeds",
    "interval_over_seeds_and_prompts",
    "mann_whitney",
    "mean_ci",
    "noninferiority_paired",
    "pair_prompts",
    "paired_t",
    "raised_and_kept",
    "welch_t",
    "wilcoxon",
]
