"""Choose on validation, evaluate the chosen model once on test: the one protocol of every choice polyray makes.

``polyray sweep`` chooses a setting, ``polyray experiment`` a candidate model, ``polyray interpolate``
an α: each on validation numbers only (:data:`SELECTED_ON`; a test-set metric fails when the file
loads, :func:`polyray.config.sweep.check_selection_metric`), by :func:`best` (or
:func:`best_keeping` where a second metric must hold), and the chosen run's phase is then evaluated
on test once (:func:`evaluate_on_test`: kept in the run's ``results.json`` under ``test``, so a
re-run reads it back; :func:`evaluate_chosen` for a set of runs, one failure each). A candidate that
was not chosen never has its test set read (:func:`record_on_test` refuses).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from polyray.config import RunConfig
from polyray.config.sweep import SELECTED_ON
from polyray.drivers.results import RunResults, read_results, write_results
from polyray.eval.record import EvalRecord

__all__ = [
    "SELECTED_ON",
    "best",
    "best_keeping",
    "error_line",
    "evaluate_chosen",
    "evaluate_dir_on_test",
    "evaluate_on_test",
    "record_on_test",
    "stages_to_test",
]

K = TypeVar("K", bound=Hashable)


def best(scores: Mapping[K, float | None], mode: str = "max") -> K | None:
    """The key with the best score (``mode``: max or min); ties go to the first in order. Keys scored
    None (not measured) are skipped; None when none is scored."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    sign = 1.0 if mode == "max" else -1.0
    scored = [k for k, v in scores.items() if v is not None]
    return max(scored, key=lambda k: sign * scores[k]) if scored else None


def best_keeping(score: Mapping[K, float], keep: Mapping[K, float], reference: K, tolerance: float) -> K:
    """The best ``score`` among the keys whose ``keep`` is at least the ``reference`` key's minus
    ``tolerance``; ties go to the first in order. The reference always qualifies, so a key is returned."""
    if reference not in keep or set(keep) != set(score):
        raise ValueError(f"best_keeping needs both metrics for the same keys, the reference {reference!r} among them")
    floor = keep[reference] - tolerance
    chosen = best({k: v for k, v in score.items() if keep[k] >= floor})
    # the reference qualifies
    assert chosen is not None
    return chosen


def error_line(error: BaseException | None) -> str | None:
    """The last line of an error's message (its type's name when empty), at most 500 characters."""
    if error is None:
        return None
    lines = str(error).strip().splitlines()
    return (lines[-1] if lines else type(error).__name__)[:500]


def record_on_test(results: RunResults, stage: str) -> EvalRecord:
    """``stage``'s test-set evaluation in a run's results: the stage evaluation of a run on ``eval.split:
    test``, else the one :func:`evaluate_on_test` added after a selection; KeyError when there is none
    (a candidate that was not chosen: its test set was never read)."""
    if stage in results.test:
        return results.test[stage]
    if results.eval_split != "test":
        raise KeyError(f"{stage}: evaluated on {results.eval_split} only")
    return results.evaluations[stage]


def stages_to_test(results: RunResults, stages: list[str]) -> list[str]:
    """Of ``stages``, those whose test-set evaluation the run does not hold yet (each is evaluated once:
    a selection re-run after an interruption evaluates only what is missing)."""
    have = set(results.test) | (set(results.evaluations) if results.eval_split == "test" else set())
    return [s for s in stages if s not in have]


def evaluate_dir_on_test(out: Path, stages: list[str]) -> dict[str, EvalRecord]:
    """:func:`evaluate_on_test` of the run in ``out`` with the config it ran with (its config.resolved.yaml)."""
    import yaml

    results = read_results(out / "results.json")
    # nothing to evaluate: no Ray, no config
    if not stages_to_test(results, stages):
        return {stage: record_on_test(results, stage) for stage in stages}
    run = RunConfig.model_validate(yaml.safe_load((out / "config.resolved.yaml").read_text()))
    return evaluate_on_test(run, out, stages)


def evaluate_on_test(run: RunConfig, out: Path, stages: list[str]) -> dict[str, EvalRecord]:
    """The test-set evaluations of ``stages`` of the finished run in ``out`` (stage evaluations on
    validation: a candidate that a selection chose), each its stage's adapter from the run's store,
    added to results.json under ``test``; a stage that already has one is not evaluated again.
    Returns every asked stage's test record. Starts (or joins) Ray and a rollout pool of its own."""
    # imported here: choosing and reading results back needs no Ray (``polyray check`` loads these modules)
    from polyray.drivers.run import INIT_VERSION, RunState, evaluate_stage, run_components

    results = read_results(out / "results.json")
    missing = stages_to_test(results, stages)
    if missing:
        state = RunState(run, out, True, results)
        # the model and engagement models exist: the run built them
        with run_components(state, engagement=[], training=False):
            prompts = state.task.prompts("test")
            for stage in missing:
                version = results.versions[stage] if stage != "base" else INIT_VERSION if run.init_adapter else None
                with state.timer(f"test_{stage}"):
                    record = evaluate_stage(
                        stage, state.pool, state.task, prompts, run=run, version=version, model_dir=state.model_dir
                    )
                results.test[stage] = record
                results.stage_done(f"test_{stage}")
                write_results(out, results)
    return {stage: record_on_test(results, stage) for stage in stages}


def evaluate_chosen(directories: Iterable[Path], phase: str) -> dict[str, EvalRecord | str]:
    """Run directory -> ``phase``'s test-set record (:func:`evaluate_dir_on_test`: once; a run that
    has it is only read), or the error line of one that could not be evaluated: one run's failure
    is its own, the others are still evaluated."""
    out: dict[str, EvalRecord | str] = {}
    for directory in directories:
        try:
            out[str(directory)] = evaluate_dir_on_test(Path(directory), [phase])[phase]
        except Exception as exc:
            out[str(directory)] = error_line(exc) or type(exc).__name__
    return out
