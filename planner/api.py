"""The public API of moeplan: load an instance, plan it with any solver, check, price, simulate and re-plan.

    import planner
    inst = planner.load_instance("instances/default.toml")
    res = planner.solve(inst)                       # the default solver, route-aware
    print(res.status.value, res.objective, res.solution.metrics["throughput_tokens_per_s"])
    exact = planner.solve(inst, "milp")             # proven optimum, bound and gap
    assert planner.validate(inst, res.solution) == []

Every name here is also importable from ``planner`` itself. Solvers are registered when the
``planner`` package is imported (:mod:`planner.solve`); :func:`available_solvers` lists them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import Evaluation
from planner.cost.validator import Violation, evaluate_checked, structure_violations, validate
from planner.domain.fields import seed_error
from planner.domain.instance import Instance, load_instance
from planner.domain.plan import Plan
from planner.planners.replan import ReplanResult, replan
from planner.sim import SimResult, simulate
from planner.spaces.infeasibility import capacity_check
from solvers import registry
from solvers.result import Result, Status

DEFAULT_SOLVER = "route-aware"

__all__ = [
    "DEFAULT_SOLVER", "Evaluation", "Instance", "Plan", "ReplanResult", "Result", "SimResult", "Status", "Violation",
    "available_solvers", "capacity_check", "compare", "evaluate", "load_instance", "replan", "simulate", "solve",
    "validate",
]


def available_solvers() -> list[str]:
    """Names of the solvers of whole instances, sorted (``route-aware``, ``milp``, ``dp``, baselines, ...)."""
    return registry.available(problem="instance")


def solve(instance: Instance, solver: str = DEFAULT_SOLVER, *, time_limit: float | None = None, seed: int = 0,
          **options) -> Result:
    """Plan ``instance`` with the named solver.

    Parameters
    ----------
    instance
        The instance (:func:`load_instance`).
    solver
        A name from :func:`available_solvers`; default ``route-aware``.
    time_limit
        Seconds the solver may run (exact solvers then report the best bound); None: the solver's own default.
    seed
        Seed of the solver's random choices: the same seed gives the same plan.
    **options
        Solver options, e.g. ``initial_solution=plan`` (a warm start), ``progress=print`` (exact
        solvers: incumbent and bound over time), ``export="model.lp"`` (milp).

    Returns
    -------
    Result
        ``status`` (optimal, feasible, infeasible, time_limit, error), ``objective`` (tokens/s,
        latency ms or J/token as the instance's objective says), ``bound``, ``gap``,
        ``solve_time_s`` and ``solution``: a :class:`Plan` that has passed :func:`validate`, with
        predicted ``metrics`` and the solver's ``certificate``. No plan is a status, not an
        exception; a solver whose plan fails validation gives status ``error`` listing the violations.

    Raises
    ------
    ValueError
        An unknown solver name (the message lists the known ones), a time limit that is not a
        positive number of seconds, or a seed that is not an integer from 0 to 2**31 - 1.
    """
    info = registry.get(solver, problem="instance")
    _check_options(time_limit, seed)
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


def compare(instance: Instance, solvers: Iterable[str] | None = None, *, time_limit: float | None = None, seed: int = 0,
            progress: Callable[[str], None] | None = None) -> list[Result]:
    """Plan ``instance`` with several solvers, one :func:`solve` each, in the order given.

    Parameters
    ----------
    instance
        The instance.
    solvers
        Solver names; default every solver of :func:`available_solvers`. Unknown names, an empty
        list, a bad time limit or seed raise ``ValueError`` before any solver runs.
    time_limit, seed
        As in :func:`solve`, for every solver.
    progress
        Called with each solver's name before it runs.

    Returns
    -------
    list of Result
        One per solver, in the order of ``solvers``.
    """
    names = list(solvers) if solvers is not None else available_solvers()
    if not names:
        raise ValueError("no solver named: give at least one name, or None for every solver")
    for name in names:
        registry.get(name, problem="instance")  # unknown names fail before any work
    _check_options(time_limit, seed)
    results = []
    for name in names:
        if progress is not None:
            progress(name)
        results.append(solve(instance, name, time_limit=time_limit, seed=seed))
    return results


def _check_options(time_limit: float | None, seed: int) -> None:
    if time_limit is not None and not (time_limit > 0 and math.isfinite(time_limit)):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    why = seed_error(seed)
    if why:
        raise ValueError(f"seed {why}")


def evaluate(instance: Instance, plan: Plan, cost_model: CostModel | None = None) -> Evaluation:
    """The cost model's prediction for ``plan`` on ``instance``.

    Parameters
    ----------
    instance, plan
        The plan need not be valid: :func:`validate` says whether it is (memory, SLOs, ...); a plan
        whose shape is broken (a layer covered twice, an unknown device) raises ``ValueError``.
    cost_model
        A :class:`CostModel` of ``instance`` to reuse (it caches per-hardware tables).

    Returns
    -------
    Evaluation
        ``throughput_tokens_per_s``, ``latency_s``, ``ttft_s``, ``tpot_s``, ``energy_j_per_token``,
        ``memory_bytes`` per device, ``bytes_per_token`` per link, ``bottleneck``, per-pipeline figures;
        ``.metrics()`` gives the JSON ``metrics`` object.
    """
    shape = structure_violations(instance, plan)
    if shape:
        raise ValueError("the plan cannot be priced: " + "; ".join(map(str, shape)))
    return (cost_model or CostModel(instance)).evaluate(plan)
