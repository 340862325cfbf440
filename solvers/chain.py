"""Solvers for chain partition (:class:`models.chain.ChainPartition`), registered on problem "chain".

    dp      exact dynamic programming (:mod:`solvers.dp`), O(L^2 D + L D^2); ignores time_limit
    milp    Pyomo MILP (:mod:`models.chain_pyomo`) through :func:`solvers.milp.solve_pyomo` (HiGHS)
    cpsat   CP-SAT (:mod:`models.chain_cpsat`) through :func:`solvers.cpsat.solve_cpsat`; optimal up
            to its time quantum (``extra["scaling_error_s"]``: a solution's scaled objective is within
            it of the true one, so an optimum is within twice it of the true optimum)
    brute   every ordered partition, for tiny cases (refuses more than 200,000 candidates)

Every solver has the signature ``f(problem, *, time_limit=None, seed=0, rel_gap=None, threads=None,
initial_solution=None, progress=None, **options) -> Result``. ``Result.solution`` is a list of
:class:`models.chain.Stage`; ``objective`` is recomputed with :func:`models.chain.evaluate`
(``extra`` holds both ``bottleneck_s`` and ``latency_s``); ``bound`` is a proven lower bound in
seconds. ``initial_solution`` (stages) is a warm start: malformed stages raise ``ValueError``; a
feasible start is returned instead of the solver's answer whenever that answer is missing or worse,
so a warm start never makes the result worse. No solution is a status: an infeasible problem gives
``Status.INFEASIBLE`` and a message naming the binding constraint family with numbers.

Options: milp takes ``solver`` (a Pyomo solver name, default "highs") and ``solver_options`` (native
options); cpsat takes ``resolution`` (see :mod:`models.chain_cpsat`); unknown options raise
``ValueError``. MILP incumbents are accepted within a relative tolerance of 1e-6 on memory and the
cap (HiGHS decides feasibility within 1e-7 on rows scaled to O(1)).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from math import comb

import numpy as np

from models.chain import ChainPartition, Stage, evaluate, objective_value, structure_errors, violations
from solvers import dp
from solvers.registry import register
from solvers.result import Result, Status

PROBLEM = "chain"
BRUTE_LIMIT = 200_000
MILP_TOLERANCE = 1e-6


def count_candidates(num_items: int, num_devices: int) -> int:
    """Ordered partitions of ``num_items`` items into non-empty stages on increasing devices:
    ``sum_s C(L - 1, s - 1) C(D, s)``."""
    return sum(comb(num_items - 1, s - 1) * comb(num_devices, s) for s in range(1, min(num_items, num_devices) + 1))


def _check(problem, options: dict, allowed: tuple[str, ...], time_limit) -> None:
    if not isinstance(problem, ChainPartition):
        raise ValueError(f"a chain solver needs a models.chain.ChainPartition, got {type(problem).__name__}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown options {unknown}; this solver takes {list(allowed) or 'none'}")
    if time_limit is not None and not (time_limit > 0):
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit!r}")


def _start(problem: ChainPartition, initial_solution) -> tuple[list[Stage] | None, float]:
    """The warm start as stages and its objective (inf if it breaks memory or the cap)."""
    if initial_solution is None:
        return None, math.inf
    errors = structure_errors(problem, initial_solution)
    if errors:
        raise ValueError("initial_solution is not a chain partition: " + "; ".join(errors))
    stages = [Stage(*map(int, s)) for s in initial_solution]
    if violations(problem, stages):
        return stages, math.inf
    return stages, objective_value(problem, stages)


def _infeasible(problem: ChainPartition, name: str, t0: float, version: str, reason: str, native: str = "") -> Result:
    why = dp.infeasibility_reason(problem)
    if why is None:
        return Result(Status.ERROR, name, sense="min", solve_time_s=time.perf_counter() - t0, solver_version=version,
                      message=f"{name} reported infeasible ({reason}), yet the exact DP finds a solution: a numerical issue",
                      stop_reason=reason, extra={"native_status": native})
    return Result(Status.INFEASIBLE, name, sense="min", solve_time_s=time.perf_counter() - t0, solver_version=version,
                  message=why, stop_reason=reason, extra={"native_status": native})


def _finish(problem: ChainPartition, name: str, t0: float, *, status: Status, stages, bound: float, version: str,
            reason: str, start: tuple, native: str = "", tol: float = 1e-9, **extra) -> Result:
    """The Result of a solver's answer, keeping the warm start when it is better."""
    message = ""
    broken = violations(problem, stages, tol) if stages is not None else []
    if broken:
        stages, message = None, "the solver's solution was rejected: " + "; ".join(broken)
        status = Status.ERROR if status in (Status.OPTIMAL, Status.FEASIBLE) else status
    objective = objective_value(problem, stages) if stages is not None else math.inf
    initial, initial_objective = start
    if initial_objective < objective:
        stages, objective = initial, initial_objective
        message = (message + "; " if message else "") + "the warm start is better than the solver's answer and is returned"
        if status is Status.ERROR:
            status = Status.FEASIBLE
    if stages is None:
        return Result(status, name, sense="min", solve_time_s=time.perf_counter() - t0, bound=bound, message=message,
                      solver_version=version, stop_reason=reason, extra={"native_status": native, **extra})
    bottleneck, latency = evaluate(problem, stages)
    return Result(status, name, objective=objective, bound=min(bound, objective) if not math.isnan(bound) else bound,
                  solve_time_s=time.perf_counter() - t0, solution=stages, message=message, sense="min",
                  solver_version=version, stop_reason=reason,
                  extra={"bottleneck_s": bottleneck, "latency_s": latency, "native_status": native, **extra})


def _numpy_version() -> str:
    return f"numpy {np.__version__}"


@register("dp", kind="exact", problem=PROBLEM, description="exact dynamic programming over (item, device) states")
def solve_dp(problem: ChainPartition, *, time_limit: float | None = None, seed: int = 0, rel_gap: float | None = None,
             threads: int | None = None, initial_solution=None, progress: Callable[[str], None] | None = None,
             **options) -> Result:
    """Exact dynamic programming over (item, device) states; polynomial, so ``time_limit`` is not needed."""
    t0 = time.perf_counter()
    _check(problem, options, (), time_limit)
    start = _start(problem, initial_solution)
    stages = dp.best_stages(problem)
    if stages is None:
        return _infeasible(problem, "dp", t0, _numpy_version(), "proven infeasible by the DP")
    objective = objective_value(problem, stages)
    if progress is not None:
        progress(f"incumbent {objective:.9g} bound {objective:.9g} time {time.perf_counter() - t0:.2f}s")
    return _finish(problem, "dp", t0, status=Status.OPTIMAL, stages=stages, bound=objective,
                   version=_numpy_version(), reason="the DP is exact", start=start)


@register("milp", kind="exact", problem=PROBLEM, description="MILP (flow over item-device states) with HiGHS via Pyomo")
def solve_milp(problem: ChainPartition, *, time_limit: float | None = None, seed: int = 0, rel_gap: float | None = None,
               threads: int | None = None, initial_solution=None, progress: Callable[[str], None] | None = None,
               **options) -> Result:
    """MILP of :mod:`models.chain_pyomo` solved by HiGHS (or ``solver=``) through Pyomo."""
    from models import chain_pyomo
    from solvers.milp import solve_pyomo

    t0 = time.perf_counter()
    _check(problem, options, ("solver", "solver_options"), time_limit)
    start = _start(problem, initial_solution)
    model = chain_pyomo.build(problem)
    if start[0] is not None:
        chain_pyomo.warm_start(model, problem, start[0])
    out = solve_pyomo(model, solver=options.get("solver", "highs"), time_limit=time_limit, rel_gap=rel_gap,
                      threads=threads, seed=seed, warm_start=start[0] is not None, progress=progress, sense="min",
                      options=options.get("solver_options"))
    version = f"{out.solver_name} {out.solver_version}"
    if out.status is Status.INFEASIBLE:
        return _infeasible(problem, "milp", t0, version, out.stop_reason, out.native_status)
    stages = chain_pyomo.extract(model, problem) if out.has_solution else None
    return _finish(problem, "milp", t0, status=out.status, stages=stages, bound=out.bound * model.time_unit_s,
                   version=version, reason=out.stop_reason, start=start, native=out.native_status,
                   tol=MILP_TOLERANCE, solver_time_s=out.solve_time_s)


@register("cpsat", kind="exact", problem=PROBLEM, description="CP-SAT over whole stages, times scaled to integers")
def solve_cpsat(problem: ChainPartition, *, time_limit: float | None = None, seed: int = 0, rel_gap: float | None = None,
                threads: int | None = None, initial_solution=None, progress: Callable[[str], None] | None = None,
                **options) -> Result:
    """CP-SAT model of :mod:`models.chain_cpsat`; optimal up to the time quantum (see the module docstring)."""
    from models import chain_cpsat
    from solvers.cpsat import solve_cpsat as run_cpsat

    t0 = time.perf_counter()
    _check(problem, options, ("resolution",), time_limit)
    start = _start(problem, initial_solution)
    cm = chain_cpsat.build(problem, options.get("resolution", chain_cpsat.DEFAULT_RESOLUTION))
    hint = chain_cpsat.warm_start(cm, start[0]) if start[0] is not None else None
    solver, out = run_cpsat(cm.model, time_limit=time_limit, rel_gap=rel_gap, threads=threads, seed=seed, hint=hint,
                            progress=progress, sense="min", display_scale=1 / cm.time_unit_s)
    version = f"ortools {out.solver_version}"
    if out.status is Status.INFEASIBLE:
        return _infeasible(problem, "cpsat", t0, version, out.stop_reason, out.native_status)
    stages = chain_cpsat.extract(cm, solver) if out.has_solution else None
    bound = max(0.0, out.bound * cm.time_unit_s - cm.error_s) if not math.isnan(out.bound) else math.nan
    return _finish(problem, "cpsat", t0, status=out.status, stages=stages, bound=bound, version=version,
                   reason=out.stop_reason, start=start, native=out.native_status, solver_time_s=out.solve_time_s,
                   time_unit_s=cm.time_unit_s, scaling_error_s=cm.error_s)


def partitions(num_items: int, num_devices: int):
    """Every ordered partition as a list of stages (see :func:`count_candidates`)."""
    for s in range(1, min(num_items, num_devices) + 1):
        for cuts in itertools.combinations(range(1, num_items), s - 1):
            bounds = (0, *cuts, num_items)
            for devices in itertools.combinations(range(num_devices), s):
                yield [Stage(d, bounds[i], bounds[i + 1]) for i, d in enumerate(devices)]


@register("brute", kind="exact", problem=PROBLEM, description="enumerate every ordered partition (tiny cases)")
def solve_brute(problem: ChainPartition, *, time_limit: float | None = None, seed: int = 0, rel_gap: float | None = None,
                threads: int | None = None, initial_solution=None, progress: Callable[[str], None] | None = None,
                **options) -> Result:
    """Enumerate every ordered partition; ``ValueError`` above 200,000 candidates."""
    t0 = time.perf_counter()
    _check(problem, options, (), time_limit)
    D, L = problem.shape
    n = count_candidates(L, D)
    if n > BRUTE_LIMIT:
        raise ValueError(f"brute force would try {n} partitions ({L} items, {D} devices), more than {BRUTE_LIMIT}; "
                         f"use the 'dp' solver")
    start = _start(problem, initial_solution)
    best, best_key, timed_out = None, (math.inf, math.inf), False
    for i, stages in enumerate(partitions(L, D)):
        if time_limit is not None and i % 1000 == 0 and time.perf_counter() - t0 > time_limit:
            timed_out = True
            break
        if violations(problem, stages):
            continue
        bottleneck, latency = evaluate(problem, stages)
        key = (bottleneck, latency) if problem.objective == "bottleneck" else (latency, bottleneck)
        if key < best_key:
            best, best_key = stages, key
    if timed_out:
        return _finish(problem, "brute", t0, status=Status.TIME_LIMIT, stages=best, bound=math.nan,
                       version=_numpy_version(), reason="time limit reached before every partition was tried",
                       start=start)
    if best is None:
        return _infeasible(problem, "brute", t0, _numpy_version(), f"none of the {n} partitions is feasible")
    return _finish(problem, "brute", t0, status=Status.OPTIMAL, stages=best, bound=best_key[0],
                   version=_numpy_version(), reason=f"tried all {n} partitions", start=start)
