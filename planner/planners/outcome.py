"""Results of solvers over instances, built the same way by each (status, objective, timing, why)."""

from __future__ import annotations

import time

from planner.domain.instance import Instance
from planner.domain.plan import Plan
from solvers.result import Result, Status


def baseline_result(name: str, instance: Instance, plan: Plan | None, obj, t0: float, why: str) -> Result:
    sense = "max" if instance.objective == "throughput" else "min"
    if plan is None:
        return Result(Status.INFEASIBLE, name, sense=sense, solve_time_s=time.perf_counter() - t0,
                      message=why, stop_reason="no valid plan in this baseline's space")
    return Result(Status.FEASIBLE, name, objective=obj, sense=sense, solve_time_s=time.perf_counter() - t0,
                  solution=plan, stop_reason="baseline finished")
