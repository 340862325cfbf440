"""Expert placement of an instance, solved: heuristic and exact placements valid, warm starts kept,
restricted solves feasible for the full problem, infeasibility explained."""

from __future__ import annotations

import math

import pytest

from models.assignment import objective_value, violations
from planner.planners.placement import solve_placement
from planner.spaces.placement import (
    placement_problem,
)
from solvers.assignment import explain_infeasible
from solvers.result import Status
from tests.helpers import ALL5


def test_heuristic_and_exact_solutions_have_no_violations(cluster):
    for name in ("greedy-placement", "local-search-placement"):
        r = solve_placement(cluster, name, devices=ALL5)
        assert r.status == Status.FEASIBLE
        assert not violations(r.extra["problem"], r.solution)
        assert r.objective >= r.extra["full_bound"] - 1e-9
    r = solve_placement(cluster, "milp", devices=ALL5, layers=4, time_limit=10)
    p = r.extra["problem"]
    assert r.status == Status.OPTIMAL and not r.extra["restricted"]
    assert not violations(p, r.solution)
    assert math.isclose(r.objective, objective_value(p, r.solution), rel_tol=1e-9)
    assert r.bound <= r.objective + 1e-6 and r.gap < 1e-6


@pytest.mark.parametrize("solver", ["milp", "cpsat"])
def test_warm_started_exact_is_never_worse_than_the_warm_start(cluster, solver):
    r = solve_placement(cluster, solver, devices=ALL5, time_limit=0.3, warm_start_solver="greedy-placement")
    assert r.solution is not None and not violations(r.extra["problem"], r.solution)
    assert r.extra["warm_start_solver"] == "greedy-placement"
    assert r.objective <= r.extra["warm_start_objective"] * (1 + 1e-12)


def test_time_limited_exact_on_a_medium_problem_has_a_finite_bound(cluster):
    # 32 x 8 x 5 = 1280 replica variables: HiGHS does not close it in a second
    r = solve_placement(cluster, "milp", devices=ALL5, time_limit=1.0, warm_start_solver="greedy-placement")
    assert r.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    assert math.isfinite(r.bound) and math.isfinite(r.objective)
    assert r.bound <= r.objective + 1e-9
    assert r.bound >= r.extra["full_bound"] - 1e-6      # HiGHS's bound is at least the simple one here
    assert not r.extra["restricted"]


def test_restricted_and_layered_solve_is_feasible_for_the_full_problem(cluster):
    r = solve_placement(cluster, "milp", devices=ALL5, time_limit=5, warm_start_solver="greedy-placement",
                        candidates=1, free_items=2, random_candidates=0)
    p = r.extra["problem"]
    assert r.extra["restricted"] and "restricted" in r.message and r.extra["candidate_triples"] < p.mask.size
    assert not violations(p, r.solution)
    assert r.objective <= r.extra["warm_start_objective"] * (1 + 1e-12)
    assert math.isfinite(r.bound) and r.bound <= r.objective + 1e-6
    assert r.extra["full_bound"] <= r.objective + 1e-9


def test_deepseek_v3_restricted_milp_returns_in_time(deepseek):
    r = solve_placement(deepseek, "milp", time_limit=2.0, warm_start_solver="greedy-placement")
    assert r.extra["restricted"] and r.extra["shape"] == (58, 256, 32)
    assert r.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    assert r.objective <= r.extra["warm_start_objective"] * (1 + 1e-12)
    assert math.isfinite(r.bound) and r.extra["full_bound"] <= r.bound <= r.objective + 1e-6
    assert not violations(r.extra["problem"], r.solution)


@pytest.mark.parametrize("solver", ["greedy-placement", "milp"])
def test_too_little_memory_is_explained(cluster, solver):
    options = dict(devices=ALL5, headroom=0.5, slots=8)   # half of every device kept free: experts do not fit
    p, _ = placement_problem(cluster, **options)
    r = solve_placement(cluster, solver, **options)
    assert r.status == Status.INFEASIBLE and r.solution is None
    assert r.message == explain_infeasible(p)
    assert r.message.startswith("memory binds")


def test_too_little_memory_for_the_slots_too_is_explained(cluster):
    # slots follow memory: with 80 % of every device kept free a layer has 6 slots for its 8 experts
    p, _ = placement_problem(cluster, devices=ALL5, headroom=0.8)
    assert p.slots.sum() < p.shape[1]
    r = solve_placement(cluster, "milp", devices=ALL5, headroom=0.8)
    assert r.status == Status.INFEASIBLE
    assert r.message == explain_infeasible(p)
    assert r.message.startswith("slots and memory both bind")
