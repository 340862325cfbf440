"""Solve an OR-Tools CP-SAT model: one entry point, :func:`solve_cpsat`, returning the solver (to read
values from) and a :class:`solvers.result.SolveOutcome` (in the model's integer objective units), the
type :func:`solvers.milp.solve_pyomo` returns too.

Status mapping (every CP-SAT status named):
    OPTIMAL        -> OPTIMAL (proven within ``rel_gap``)
    FEASIBLE       -> TIME_LIMIT when the time limit was reached, else FEASIBLE (stopped by another limit)
    INFEASIBLE     -> INFEASIBLE
    MODEL_INVALID  -> ERROR, message from ``CpModel.validate()``
    UNKNOWN        -> TIME_LIMIT without a solution when the time limit was reached, else ERROR

"The time limit was reached": a time limit was given and no other stopping parameter
(``max_number_of_conflicts``, ``max_deterministic_time``, ...) was set, or the solve took the time
limit. CP-SAT stops a little before its limit when its next step would overrun it, so the time taken
alone cannot tell.

Defaults: ``threads=None`` means 1 worker, so that a solve is deterministic for a given ``seed`` (CP-SAT
with several workers is deterministic only with ``interleave_search``); pass ``threads`` for speed.
``rel_gap=None`` means 0 (prove optimality); it maps to ``relative_gap_limit``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ortools.sat.python import cp_model

from solvers.result import SolveOutcome, Status

SENSES = ("min", "max")
# A solve that stops within this fraction of the time limit counts as stopped by it.
_TIME_LIMIT_SLACK = 0.98
# SatParameters that stop a search other than the time limit.
_OTHER_STOPS = frozenset({"max_deterministic_time", "max_number_of_conflicts", "max_memory_in_mb",
                          "stop_after_first_solution", "stop_after_presolve", "stop_after_root_propagation"})


def _stopped_by_time(wall_time: float, elapsed: float, time_limit: float, parameters: dict | None) -> bool:
    """Whether a solve that ended without proof was stopped by its time limit.

    CP-SAT stops *before* its limit when the longest gap seen between two of its clock checks would
    take it past the limit (a stop at 80 % of a 20 ms limit is common, and more so on a loaded
    machine), and its ``wall_time`` leaves out loading the model. With no other stopping parameter
    set, the time limit is the only thing that stops a search early; with one set, the solve counts
    as stopped by time when the time spent in ``solve`` reached the limit (less a small slack).
    """
    if not _OTHER_STOPS & set(parameters or {}):
        return True
    return max(wall_time, elapsed) >= _TIME_LIMIT_SLACK * time_limit



class _ProgressCallback(cp_model.CpSolverSolutionCallback):
    """Sends one line per improving solution: incumbent, bound and time, objective / ``display_scale``."""

    def __init__(self, progress: Callable[[str], None], display_scale: float):
        super().__init__()
        self.progress = progress
        self.display_scale = display_scale

    def on_solution_callback(self) -> None:
        self.progress(f"incumbent {self.objective_value / self.display_scale:.9g} "
                      f"bound {self.best_objective_bound / self.display_scale:.9g} time {self.wall_time:.2f}s")


def _version() -> str:
    import ortools

    return ortools.__version__


def map_status(native: str, *, has_solution: bool, hit_time_limit: bool, detail: str = "") -> tuple[Status, str]:
    """Map a CP-SAT status name to ``(Status, stop_reason)``; ``detail`` is added to ERROR reasons."""
    if native == "OPTIMAL":
        return Status.OPTIMAL, "optimal within the requested gap"
    if native == "FEASIBLE":
        if hit_time_limit:
            return Status.TIME_LIMIT, "time limit reached with an incumbent"
        return Status.FEASIBLE, "stopped by a limit other than time before proving optimality"
    if native == "INFEASIBLE":
        return Status.INFEASIBLE, "proven infeasible"
    if native == "MODEL_INVALID":
        return Status.ERROR, f"CP-SAT rejected the model as invalid: {detail or 'no validation message'}"
    if native == "UNKNOWN":
        if hit_time_limit and not has_solution:
            return Status.TIME_LIMIT, "time limit reached before any feasible solution"
        return Status.ERROR, f"CP-SAT stopped with status UNKNOWN before the time limit: {detail}"
    return Status.ERROR, f"CP-SAT returned status {native!r}: {detail}"


def solve_cpsat(model: cp_model.CpModel, *, time_limit: float | None = None, rel_gap: float | None = None,
                threads: int | None = None, seed: int = 0, hint: list[tuple[cp_model.IntVar, int]] | None = None,
                progress: Callable[[str], None] | None = None, sense: str = "min",
                display_scale: float = 1.0, parameters: dict | None = None) -> tuple[cp_model.CpSolver, SolveOutcome]:
    """Solve ``model`` and return ``(solver, outcome)``; read the incumbent with ``solver.value(var)``
    when ``outcome.has_solution``.

    ``hint``: ``(variable, value)`` pairs added as a solution hint (replacing any hint the model
    had). ``sense``: the objective's sense, checked against the model. ``display_scale``: progress
    lines show objective and bound divided by it (the model's objective is often scaled to integers).
    ``parameters``: native ``SatParameters`` fields (e.g. ``linearization_level``), applied last;
    an unknown name raises ``ValueError``.
    """
    if sense not in SENSES:
        raise ValueError(f"sense must be one of {SENSES}, got {sense!r}")
    proto = model.proto
    if proto.has_objective() and (proto.objective.scaling_factor < 0) != (sense == "max"):
        raise ValueError(f"the model's objective sense differs from sense={sense!r}")
    if time_limit is not None and time_limit <= 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
    if hint is not None:
        model.clear_hints()
        for var, value in hint:
            model.add_hint(var, int(value))

    solver = cp_model.CpSolver()
    params = solver.parameters
    params.random_seed = int(seed)
    params.num_workers = 1 if threads is None else int(threads)
    params.relative_gap_limit = 0.0 if rel_gap is None else float(rel_gap)
    if time_limit is not None:
        params.max_time_in_seconds = float(time_limit)
    for name, value in (parameters or {}).items():
        if not hasattr(params, name):
            raise ValueError(f"CP-SAT has no parameter {name!r}")
        setattr(params, name, value)
    callback = _ProgressCallback(progress, display_scale) if progress is not None else None
    started = time.perf_counter()
    native_status = solver.solve(model, callback)
    elapsed = time.perf_counter() - started
    native = solver.status_name(native_status)

    has_solution = native in ("OPTIMAL", "FEASIBLE")
    hit_time_limit = time_limit is not None and _stopped_by_time(solver.wall_time, elapsed, time_limit, parameters)
    detail = model.validate() if native == "MODEL_INVALID" else ""
    if native == "UNKNOWN":
        detail = solver.solution_info() or solver.response_stats().splitlines()[0]
    status, reason = map_status(native, has_solution=has_solution, hit_time_limit=hit_time_limit, detail=detail)
    has_objective = proto.has_objective() or proto.has_floating_point_objective()
    objective = float(solver.objective_value) if has_solution and has_objective else math.nan
    if has_solution and not has_objective:
        objective = 0.0
    proven = has_objective and native not in ("INFEASIBLE", "MODEL_INVALID")
    bound = float(solver.best_objective_bound) if proven else math.nan
    if not math.isfinite(bound):
        bound = math.nan
    return solver, SolveOutcome(status=status, objective=objective, bound=bound, solve_time_s=float(solver.wall_time),
                             solver_name="cpsat", solver_version=_version(), stop_reason=reason,
                             native_status=native)
