"""Solve a Pyomo model with a MILP solver: HiGHS through Pyomo's appsi interface, or any other solver
Pyomo's ``SolverFactory`` knows and finds installed (cbc, glpk, scip, gurobi, cplex).

One entry point, :func:`solve_pyomo`, returns a :class:`SolveOutcome` that keeps why the solver stopped
(``status``, ``stop_reason``, ``native_status``) apart from what it found (the incumbent is loaded into
the model's variables; ``objective``, ``bound``). Every native termination condition is mapped
explicitly; a condition not named here becomes ``ERROR`` naming it, never a time limit.

Defaults: ``rel_gap=None`` means 0 (prove optimality; HiGHS still stops within its absolute gap
``mip_abs_gap`` = 1e-6), ``threads=None`` leaves the solver's own choice, ``seed`` sets the solver's
random seed.

Progress (HiGHS): ``progress(line)`` gets one line per improving incumbent ("incumbent ... bound ...
time ...") from HiGHS's MIP callback, and HiGHS's own log is streamed to stderr. Pyomo captures the
process's stdout and stderr while HiGHS runs, so whatever ``progress`` prints during the solve also
reaches stderr (through the same log handler). Without ``progress`` HiGHS is silent.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyomo.environ as pyo

from solvers.result import SolveOutcome, Status

SENSES = ("min", "max")
EXPORT_FORMATS = {".lp": "cpxlp", ".mps": "mps"}  # suffix -> Pyomo's ProblemFormat name

# Native option names of the solvers reached through SolverFactory: time limit (s), relative gap,
# threads, random seed. A solver missing here cannot take that setting.
_LEGACY_OPTIONS = {
    "cbc": {"time_limit": "seconds", "rel_gap": "ratioGap", "threads": "threads", "seed": "randomCbcSeed"},
    "glpk": {"time_limit": "tmlim", "rel_gap": "mipgap"},
    "scip": {"time_limit": "limits/time", "rel_gap": "limits/gap", "seed": "randomization/randomseedshift"},
    "gurobi": {"time_limit": "TimeLimit", "rel_gap": "MIPGap", "threads": "Threads", "seed": "Seed"},
    "cplex": {"time_limit": "timelimit", "rel_gap": "mipgap", "threads": "threads", "seed": "randomseed"},
}



def status_from_termination(condition: str, has_solution: bool) -> tuple[Status, str]:
    """Map a Pyomo termination condition name (appsi or legacy) to ``(Status, stop_reason)``.

    ``has_solution``: whether the solver holds a feasible incumbent.
    """
    if condition in ("optimal", "globallyOptimal"):
        return Status.OPTIMAL, "optimal within the requested gap"
    if condition == "maxTimeLimit":
        if has_solution:
            return Status.TIME_LIMIT, "time limit reached with an incumbent"
        return Status.TIME_LIMIT, "time limit reached before any feasible solution"
    if condition == "infeasible":
        return Status.INFEASIBLE, "proven infeasible"
    if condition == "unbounded":
        return Status.ERROR, "the model is unbounded (check the formulation: a bounded problem was expected)"
    if condition == "infeasibleOrUnbounded":
        return Status.ERROR, "the model is infeasible or unbounded (the solver did not tell which)"
    if condition in ("maxIterations", "objectiveLimit", "maxEvaluations", "userInterrupt", "interrupted", "feasible"):
        kind = Status.FEASIBLE if has_solution else Status.ERROR
        return kind, f"stopped by {condition} before proving optimality"
    return Status.ERROR, f"solver stopped with termination condition {condition!r}"


def _condition_name(condition) -> str:
    return getattr(condition, "name", str(condition))


def _objective_sense(model) -> str:
    objectives = list(model.component_data_objects(pyo.Objective, active=True))
    if len(objectives) != 1:
        raise ValueError(f"the model must have exactly one active objective, found {len(objectives)}")
    return "min" if objectives[0].sense == pyo.minimize else "max"


def installed_solvers() -> list[str]:
    """Solver names :func:`solve_pyomo` can run on this machine ("highs" first)."""
    names = ["highs"]
    for name in _LEGACY_OPTIONS:
        try:
            if pyo.SolverFactory(name).available(exception_flag=False):
                names.append(name)
        except Exception:  # noqa: BLE001 - a broken plugin only means "not installed" here
            continue
    return names


def solve_pyomo(model, *, solver: str = "highs", time_limit: float | None = None, rel_gap: float | None = None,
                threads: int | None = None, seed: int = 0, warm_start: bool = False,
                progress: Callable[[str], None] | None = None, sense: str = "min",
                options: dict | None = None) -> SolveOutcome:
    """Solve ``model`` (a Pyomo ``ConcreteModel`` with one objective whose sense is ``sense``).

    ``warm_start``: variables already holding values are passed as a MIP start (HiGHS reads a full
    start; a variable without a value counts as 0). ``options``: native solver options, applied last.
    Raises ``ValueError`` for an unknown or uninstalled solver, a bad ``sense`` or a model whose
    objective sense differs from ``sense``.
    """
    if sense not in SENSES:
        raise ValueError(f"sense must be one of {SENSES}, got {sense!r}")
    if _objective_sense(model) != sense:
        raise ValueError(f"the model's objective is '{_objective_sense(model)}' but sense={sense!r}")
    if time_limit is not None and time_limit <= 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    if solver in ("highs", "appsi_highs"):
        return _solve_highs(model, time_limit, rel_gap, threads, seed, warm_start, progress, sense, options or {})
    return _solve_legacy(model, solver, time_limit, rel_gap, threads, seed, warm_start, progress, sense, options or {})


class _ProgressLog:
    """A logger that prints HiGHS's log to stderr while Pyomo captures the solver's output."""

    def __init__(self):
        self.logger = logging.getLogger("moeplan.solvers.milp.highs_log")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.handler = logging.StreamHandler(sys.stderr)
        self.handler.setFormatter(logging.Formatter("%(message)s"))

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self.logger

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def _solve_highs(model, time_limit, rel_gap, threads, seed, warm_start, progress, sense, options) -> SolveOutcome:
    from pyomo.contrib.appsi.solvers.highs import Highs

    opt = Highs()
    if not opt.available():
        raise ValueError(f"solver 'highs' is not installed (highspy missing); available: {', '.join(installed_solvers())}")
    version = ".".join(str(v) for v in opt.version())
    opt.config.load_solution = False
    opt.config.time_limit = time_limit
    opt.config.mip_gap = 0.0 if rel_gap is None else float(rel_gap)
    opt.config.warmstart = bool(warm_start)
    highs_options = {"random_seed": int(seed), "output_flag": progress is not None}
    if threads is not None:
        highs_options["threads"] = int(threads)
    highs_options.update(options)
    opt.highs_options = highs_options

    opt.set_instance(model)
    if progress is not None:
        _subscribe_incumbents(opt, progress)
    log = _ProgressLog() if progress is not None else None
    if log is not None:
        opt.config.solver_output_logger = log.logger
    start = time.perf_counter()
    with log if log is not None else contextlib.nullcontext():
        results = opt.solve(model)
    elapsed = time.perf_counter() - start

    condition = _condition_name(results.termination_condition)
    has_solution = results.best_feasible_objective is not None
    status, reason = status_from_termination(condition, has_solution)
    if has_solution:
        results.solution_loader.load_vars()
    bound = results.best_objective_bound
    return SolveOutcome(
        status=status,
        objective=float(results.best_feasible_objective) if has_solution else math.nan,
        bound=_finite_or_nan(bound),
        solve_time_s=float(results.wallclock_time if results.wallclock_time is not None else elapsed),
        solver_name="highs", solver_version=version, stop_reason=reason, native_status=condition)


def _subscribe_incumbents(opt, progress) -> None:
    """Report each improving incumbent through HiGHS's MIP callback.

    Pyomo's appsi keeps the highspy object in a private attribute; without it only the log remains.
    """
    highs = getattr(opt, "_solver_model", None)
    event = getattr(highs, "cbMipImprovingSolution", None)
    if event is None:
        return

    def on_incumbent(e) -> None:
        data = e.data_out
        progress(f"incumbent {data.mip_primal_bound:.9g} bound {data.mip_dual_bound:.9g} "
                 f"time {data.running_time:.2f}s")

    event.subscribe(on_incumbent)


def _finite_or_nan(value) -> float:
    if value is None:
        return math.nan
    value = float(value)
    return value if math.isfinite(value) else math.nan


def _solve_legacy(model, solver, time_limit, rel_gap, threads, seed, warm_start, progress, sense, options) -> SolveOutcome:
    try:
        opt = pyo.SolverFactory(solver)
        available = opt is not None and opt.available(exception_flag=False)
    except Exception:  # noqa: BLE001 - an unknown plugin name is "not installed"
        available = False
    if not available:
        raise ValueError(f"solver {solver!r} is not installed; available: {', '.join(installed_solvers())}")
    names = _LEGACY_OPTIONS.get(solver, {})
    wanted = {"time_limit": time_limit, "rel_gap": 0.0 if rel_gap is None else rel_gap, "threads": threads,
              "seed": seed}
    for key, value in wanted.items():
        if value is None:
            continue
        if key not in names:
            if key == "time_limit" or (key == "threads" and value != 1):
                raise ValueError(f"solver {solver!r} has no known option for {key}; pass it in options")
            continue
        opt.options[names[key]] = value
    for key, value in options.items():
        opt.options[key] = value
    kwargs = {"load_solutions": False, "tee": progress is not None}
    if warm_start and getattr(opt, "warm_start_capable", lambda: False)():
        kwargs["warmstart"] = True
    start = time.perf_counter()
    results = opt.solve(model, **kwargs)
    elapsed = time.perf_counter() - start

    condition = _condition_name(results.solver.termination_condition)
    has_solution = len(results.solution) > 0 and condition not in ("infeasible", "infeasibleOrUnbounded")
    status, reason = status_from_termination(condition, has_solution)
    objective = math.nan
    if has_solution:
        model.solutions.load_from(results)
        objective = float(pyo.value(next(model.component_data_objects(pyo.Objective, active=True))))
    problem = results.problem[0] if len(results.problem) else None
    bound = math.nan
    if problem is not None:
        bound = _finite_or_nan(problem.lower_bound if sense == "min" else problem.upper_bound)
    version = opt.version() if hasattr(opt, "version") else None
    return SolveOutcome(
        status=status, objective=objective, bound=bound,
        solve_time_s=float(getattr(results.solver, "wallclock_time", None) or elapsed),
        solver_name=solver, solver_version=".".join(str(v) for v in version) if version else "",
        stop_reason=reason, native_status=condition)


def export_model(model, path: str | Path) -> Path:
    """Write ``model`` as CPLEX LP (``.lp``) or MPS (``.mps``), chosen by the suffix; other suffixes
    raise ``ValueError``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"cannot export to {path.name!r}: use one of {', '.join(EXPORT_FORMATS)}")
    model.write(str(path), format=EXPORT_FORMATS[suffix], io_options={"symbolic_solver_labels": True})
    return path
