"""Results of solvers over instances, built the same way by each (status, objective, timing, why)."""

from __future__ import annotations

import functools
import gc
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


def collector_paused(func):
    """Run ``func`` with CPython's cyclic garbage collector paused (restored after, as it was).

    A heuristic's solve allocates hundreds of thousands of small acyclic objects (placement entries,
    tuples, cost terms) that reference counting frees; with a large instance alive the collector's
    full passes over them cost a third of a DeepSeek-V3 solve (about 250 of 900 ms on 40 devices)
    and make its time vary from run to run. Cycles made meanwhile are collected once it resumes."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if not gc.isenabled():
            return func(*args, **kwargs)
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            gc.enable()
    return wrapper
