"""Time tables shared between cost models give the figures of a fresh cost model."""

from __future__ import annotations

from planner import api
from planner.cost import compute
from planner.cost.costmodel import CostModel
from planner.domain.changes import changed_instance
from tests.helpers import load


def test_shared_time_tables_give_the_figures_of_a_fresh_cost_model():
    inst = load("default.toml")
    plan = api.solve(inst, "route-aware").solution
    slow = changed_instance(inst, bandwidth_factor=0.25)
    CostModel(inst).evaluate(plan)           # fills the shared tables
    shared = CostModel(slow).evaluate(plan)  # reuses them
    compute._TABLES.clear()
    fresh = CostModel(slow).evaluate(plan)
    assert shared.metrics() == fresh.metrics()
