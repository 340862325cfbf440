"""The human output of solve and compare: every figure says what it means; compare ranks, marks and qualifies."""

from __future__ import annotations

import math

from planner import api
from planner.cost import report
from solvers.result import Result, Status
from tests.helpers import REPO


def _default():
    return api.load_instance(REPO / "instances" / "default.toml")


def test_the_plan_summary_explains_itself():
    inst = _default()
    text = report.plan_summary(inst, api.solve(inst).solution)
    # the cut, the batching and the layer count are spelled out
    assert "rank 512" in text and '"rank R" = a low-rank codec sends R numbers instead of the 4096 of the hidden state' in text
    assert "micro-batches of 16 sequence(s), 1 in flight at once: 16 sequence(s) decode together" in text
    assert "layers in all" in text
    # capacity is set against what the workload offers (0.5 req/s x 128 tokens = 64 tokens/s)
    assert "predicted capacity: 71.79 tokens/s" in text and "at saturation" in text
    assert "the workload offers 0.5 req/s x 128 output tokens = 64 tokens/s (the plan keeps up, busy 89% of the time)" in text
    # the bottleneck says what it is and what would move it
    assert "bottleneck: latency loop (16 sequences in flight)" in text and "sequences in flight divided by the time" in text
    # a device at 100 % is allowed and the headroom rule is shown
    assert "a100 at 100 % is allowed: a plan may fill a device's memory_gb, which is its usable memory" in text


def _result(solver, status, objective, message="", stop="done", time_s=1.0):
    return Result(status, solver, objective=objective, sense="max", message=message, stop_reason=stop, solve_time_s=time_s,
                  solution=None if math.isnan(objective) else object.__new__(_Plan))


class _Plan:
    metrics: dict = {}


def test_compare_ranks_marks_qualifies_and_keeps_notes_whole():
    note = "infeasible: the model's weights need 93.4 GB, origin 'orin' has 64.0 GB: " + "memory: " * 20 + "the end"
    results = [_result("end-only", Status.INFEASIBLE, math.nan, note, "no valid plan"),
               _result("dp", Status.OPTIMAL, 68.31), _result("milp", Status.OPTIMAL, 71.79, time_s=8.0),
               _result("route-aware", Status.FEASIBLE, 71.79, stop="move cap", time_s=0.01)]
    text = report.compare_table(results)
    rows = text.splitlines()[2:6]  # under the header and its rule
    # best first, the default solver first among equals (not the fastest: same input, same bytes), no plan last
    assert [r.split()[1] if r.startswith("*") else r.split()[0] for r in rows] == ["route-aware", "milp", "dp", "end-only"]
    assert rows[0].startswith("*") and rows[1].startswith("*") and not rows[2].startswith("*")
    assert "optimal in dp's space" in text and "optimal in milp's space" in text and "move cap" in text
    assert "* best objective (highest): route-aware and its equals" in text
    assert " ".join(text.split()).count("memory: " * 20 + "the end") == 1  # the note in full, wrapped, not cut
    assert report.best_result(results).solver == "route-aware"
    assert report.best_result(results[:1]) is None
    equals = [_result("milp", Status.OPTIMAL, 71.79, time_s=0.001), _result("cpsat", Status.OPTIMAL, 71.79, time_s=0.0001)]
    assert [r.solver for r in report._ranked(equals)] == ["milp", "cpsat"]  # given order, not solve time
    assert report.best_result([*equals, _result("route-aware", Status.FEASIBLE, 71.79, time_s=9.0)]).solver == "route-aware"


def test_the_default_listed_first_among_equals_is_the_api_default():
    from planner import api

    assert report.DEFAULT_FIRST == api.DEFAULT_SOLVER
