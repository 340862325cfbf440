"""The public API (planner/api.py, re-exported by planner): what it exports and how each call behaves."""

from dataclasses import replace

import pytest

import planner
from planner import api
from planner.domain.plan import Stage


def test_the_package_exports_the_api():
    for name in api.__all__:
        assert getattr(planner, name) is getattr(api, name)
    for name in ("load_instance", "solve", "compare", "validate", "evaluate", "simulate", "replan", "Plan", "Result",
                 "Status", "available_solvers"):
        assert name in planner.__all__
    assert {"route-aware", "milp", "cpsat", "dp", "local-search"} <= set(planner.available_solvers())


def test_compare_solves_with_each_in_order_and_rejects_unknown_names_first(line):
    seen = []
    results = planner.compare(line, ["single-cut", "route-aware"], progress=seen.append)
    assert [r.solver for r in results] == seen == ["single-cut", "route-aware"]
    assert all(planner.validate(line, r.solution) == [] for r in results)
    seen.clear()
    with pytest.raises(ValueError, match="unknown solver 'nope'"):
        planner.compare(line, ["route-aware", "nope"], progress=seen.append)
    assert seen == []  # nothing ran


def test_evaluate_prices_a_plan_and_refuses_a_broken_shape(line):
    plan = planner.solve(line).solution
    ev = planner.evaluate(line, plan)
    assert ev.metrics()["throughput_tokens_per_s"] == pytest.approx(plan.metrics["throughput_tokens_per_s"])
    pipe = plan.pipelines[0]
    broken = replace(plan, pipelines=(replace(pipe, stages=(Stage("nowhere", 0, line.model.num_layers),), codec_ranks=()),))
    with pytest.raises(ValueError, match="cannot be priced"):
        planner.evaluate(line, broken)


def test_solve_rejects_a_bad_time_limit(line):
    with pytest.raises(ValueError, match="time_limit"):
        planner.solve(line, time_limit=0)
