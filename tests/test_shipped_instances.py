"""Every scenario instance loads, and every baseline's plan on it passes the validator."""

from pathlib import Path

import pytest

from planner import api
from planner.planners.baselines import BASELINES

INSTANCES = sorted((Path(__file__).resolve().parents[1] / "instances").glob("*.toml"))


def test_there_are_at_least_eight_scenarios_and_a_default():
    assert len(INSTANCES) >= 8
    assert any(p.name == "default.toml" for p in INSTANCES)


@pytest.mark.parametrize("path", INSTANCES, ids=[p.stem for p in INSTANCES])
def test_every_baseline_plan_passes_the_validator(path):
    inst = api.load_instance(path)
    found = 0
    for name in BASELINES:
        res = api.solve(inst, name)
        assert res.status.value in ("feasible", "infeasible"), res.message
        if res.solution is not None:
            found += 1
            assert api.validate(inst, res.solution) == []
        else:
            assert res.message.startswith("infeasible")
    assert found >= 1, f"no baseline finds a plan for {path.name}"
