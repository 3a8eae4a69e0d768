"""The selection protocol's pieces: the best candidate on validation, and the chosen run's test record, once."""

from __future__ import annotations

import pytest

from polyray.drivers.results import RunResults, write_results
from polyray.drivers.selection import best, best_keeping, evaluate_chosen
from polyray.eval.record import Estimate, EvalRecord


def test_best_takes_the_mode_skips_the_unmeasured_and_breaks_ties_by_order():
    scores = {"a": 0.2, "b": None, "c": 0.5, "d": 0.5, "e": 0.1}
    assert best(scores, "max") == "c"  # c and d tie: the first listed
    assert best(scores, "min") == "e"
    assert best({"x": None}) is None and best({}) is None
    assert best({"b": 0.5, "a": 0.5}) == "b"  # order, not the key's own sort
    with pytest.raises(ValueError, match="mode"):
        best(scores, "maximum")


def test_best_keeping_drops_what_loses_the_kept_metric():
    keep = {"x": 0.30, "y": 0.285, "z": 0.31}
    score = {"x": 0.40, "y": 0.90, "z": 0.50}
    assert best_keeping(score, keep, "x", tolerance=0.02) == "y"
    assert best_keeping(score, keep, "x", tolerance=0.01) == "z"  # y is 0.015 below the reference
    with pytest.raises(ValueError, match="reference"):
        best_keeping({"y": 1.0}, {"y": 1.0}, "x", 0.0)


def test_evaluate_chosen_reads_a_kept_test_record_and_reports_a_failure_as_that_runs_alone(tmp_path):
    """A run with its test record is read back (no Ray, no config); a directory that is no run gives its
    own error line, and the other run's record still comes back."""
    good = tmp_path / "good"
    good.mkdir()
    write_results(
        good,
        RunResults(
            name="t",
            eval_split="val",
            evaluations={"grpo": EvalRecord(pass_at_k={1: Estimate(0.9)})},
            versions={"grpo": 2},
            test={"grpo": EvalRecord(pass_at_k={1: Estimate(0.4)})},
        ),
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    out = evaluate_chosen([bad, good], "grpo")
    assert out[str(good)].pass_at_k[1].mean == 0.4  # the test record, not the validation one
    assert isinstance(out[str(bad)], str) and "results.json" in out[str(bad)]
