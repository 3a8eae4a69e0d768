"""The evaluation job's unit store: saved as generated and as judged, restored by fingerprint, torn tail ignored."""

from __future__ import annotations

from polyray.drivers.evaluate import EvalJobConfig
from polyray.drivers.evaluate.models import ResolvedModel
from polyray.drivers.evaluate.plan import EvalUnit
from polyray.drivers.evaluate.store import UnitStore, unit_key
from polyray.rollout.sampling import JudgedGroups
from polyray.rollout.worker import Sample
from polyray.tasks import Judgement, Prompt, build_task

CFG = EvalJobConfig.model_validate({"models": [{"name": "base"}], "n_samples": 2, "ks": [1, 2]})


def _unit() -> EvalUnit:
    unit = EvalUnit("countdown", "countdown", ResolvedModel("base", "base"), n_requested=1)
    unit.prompts, unit.inputs = [Prompt("nums 1 2 target 3\nexpr:", " 1+2")], ["nums 1 2 target 3\nexpr:"]
    unit.sampling = CFG.sampling
    return unit


def test_units_round_trip_and_resume_stage(tmp_path):
    task = build_task(CFG.tasks[0])
    unit, key = _unit(), unit_key(_unit(), CFG.tasks[0], CFG)
    unit.samples = [
        [Sample(0, " 1+2", [1, 2], [3, 4], [-0.1, -0.2], 0, True), Sample(1, " 2", [1, 2], [5], [-1.0], 0, False)]
    ]
    store = UnitStore(tmp_path)
    assert store.restore(_unit(), key, task) is None
    store.save_generated(unit, key)
    fresh = _unit()
    assert UnitStore(tmp_path).restore(fresh, key, task) == "generated" and fresh.samples == unit.samples
    unit.judged = JudgedGroups(unit.prompts, unit.samples, [[Judgement(1.0, "correct"), Judgement(0.0, "no")]], task)
    store.save_judged(unit, key)
    with open(tmp_path / "units.jsonl", "a") as f:
        f.write('{"key": "torn')  # a kill mid-write
    fresh = _unit()
    assert UnitStore(tmp_path).restore(fresh, key, task) == "judged"
    assert fresh.judged.counts == [(2, 1)] and fresh.judged.judgements[0][0].reason == "correct"


def test_a_changed_config_does_not_match(tmp_path):
    other = CFG.model_copy(update={"seed": 7})
    assert unit_key(_unit(), CFG.tasks[0], CFG) != unit_key(_unit(), CFG.tasks[0], other)
    assert unit_key(_unit(), CFG.tasks[0], CFG) == unit_key(_unit(), CFG.tasks[0], CFG)
