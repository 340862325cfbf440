"""Public API: load an instance, solve it with any registered solver, check and describe the plan.

    from planner import api
    inst = api.load_instance("instances/default.toml")
    res = api.solve(inst, solver="route-aware")
    print(res.status, res.objective, res.solution.metrics["throughput_tokens_per_s"])
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from planner.solve import baselines  # noqa: F401  (register the solvers)

from planner.spaces import chain as chain_plan

from planner.solve import edgeshard

from planner.solve import eplb as eplb_instance

from planner.solve import exact as joint

from planner.solve import local_search as lns

from planner.solve import route_aware
from planner.cost.costmodel import CostModel
from planner.domain.instance import Instance, load_instance
from planner.domain.plan import Plan
from planner.cost.validator import evaluate_checked, validate
from solvers import registry
from solvers.result import Result, Status

GB = 1e9
DEFAULT_SOLVER = "route-aware"

__all__ = ["load_instance", "solve", "validate", "capacity_check", "Plan", "Result", "Status", "available_solvers"]


def available_solvers() -> list[str]:
    return registry.available(problem="instance")


def capacity_check(instance: Instance) -> str | None:
    """Why no plan can exist at all (the binding resource with numbers), or None."""
    m = instance.model
    weights = m.total_params * m.dtype_bytes
    have = instance.total_memory_bytes
    if weights > have:
        return (f"infeasible: the model {m.name!r} needs {weights / GB:.1f} GB for its weights alone, "
                f"the fleet has {have / GB:.1f} GB of memory in all ({len(instance.devices)} devices)")
    return None


def solve(instance: Instance, solver: str = DEFAULT_SOLVER, *, time_limit: float | None = None, seed: int = 0, **options) -> Result:
    """Plan ``instance`` with the named solver. Never raises for infeasibility: see ``Result.status``.

    The returned plan (``Result.solution``) carries predicted ``metrics`` and the solver's
    ``certificate``, and has passed :func:`planner.cost.validator.validate`; a solver whose plan fails
    validation yields status ``error`` listing the violations.
    """
    info = registry.get(solver, problem="instance")
    if time_limit is not None and not (time_limit > 0 and math.isfinite(time_limit)):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    t0 = time.perf_counter()
    sense = "max" if instance.objective == "throughput" else "min"
    why = capacity_check(instance)
    if why:
        return Result(Status.INFEASIBLE, solver, sense=sense, message=why, stop_reason="capacity check",
                      solve_time_s=time.perf_counter() - t0)
    cm = CostModel(instance)
    result = info.func(instance, time_limit=time_limit, seed=seed, cost_model=cm, **options)
    if result.solution is None:
        return result
    ev, violations = evaluate_checked(instance, result.solution, cm)
    if violations:
        return Result(Status.ERROR, solver, sense=sense, solve_time_s=result.solve_time_s,
                      message="the solver's plan fails validation: " + "; ".join(map(str, violations)))
    certificate = {
        "status": result.status.value, "objective": result.objective, "bound": result.bound, "gap": result.gap,
        "solve_time_s": result.solve_time_s, "solver_version": result.solver_version, "stop_reason": result.stop_reason,
    }
    result.solution = replace(result.solution, solver=solver, instance=instance.name, metrics=ev.metrics(), certificate=certificate)
    return result

