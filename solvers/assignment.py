"""Exact solvers of :class:`models.assignment.ReplicatedAssignment`, registered on problem "assignment".

* ``milp``:  the Pyomo formulation (:mod:`models.assignment_pyomo`) on HiGHS, or on another installed
  Pyomo solver with ``solver_backend="cbc"`` (``"scip"``, ``"gurobi"``, ...). Extra keyword options
  are passed to the solver as native options.
* ``cpsat``: the integer formulation (:mod:`models.assignment_cpsat`) on CP-SAT. Its optimum is exact
  up to ``Result.extra["tolerance"]`` (whole-unit shares, rounded coefficients; see that module), and
  its bound is converted back conservatively.
* ``brute``: enumeration for tiny instances, the reference the others are tested against.

Every solver: ``f(problem, *, time_limit=None, seed=0, rel_gap=None, threads=None,
initial_solution=None, progress=None, **options) -> Result`` with ``Result.solution`` an
:class:`AssignmentSolution`, ``objective`` = ``objective_value(problem, solution)`` (recomputed, so exact
for the returned solution), ``bound`` a proven lower bound, ``sense`` "min", and ``solve_time_s`` the
whole call (formulation, solve, extraction). ``initial_solution`` is a warm start; the returned
solution is never worse than it: when the solver ends with nothing better, the warm start comes back,
with status OPTIMAL if the solver proved its own (no better) incumbent optimal, TIME_LIMIT after a
time limit, FEASIBLE otherwise. An infeasible problem gets a ``message`` from :func:`explain_infeasible`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import numpy as np

from models.assignment import AssignmentSolution, ReplicatedAssignment, normalise_shares, objective_value, violations
from solvers.registry import register
from solvers.result import Result, Status

PROBLEM = "assignment"
BRUTE_LIMIT = 200_000  # most replica-set combinations brute enumerates (per-group sets plus cross-group choices)
EXPLAIN_TIME_LIMIT_S = 10.0


# -- shared plumbing ------------------------------------------------------------------------------


def _check_initial(problem: ReplicatedAssignment, initial: AssignmentSolution | None) -> None:
    if initial is None:
        return
    broken = violations(problem, initial)
    if broken:
        raise ValueError(f"initial_solution is not feasible: {'; '.join(broken[:5])}")


def _items_without_candidates(problem: ReplicatedAssignment) -> list[tuple[int, int]]:
    return [(int(g), int(i)) for g, i in zip(*np.nonzero(~problem.mask.any(axis=2)))]


def _finish(problem: ReplicatedAssignment, name: str, *, status: Status, solution: AssignmentSolution | None,
            bound: float, stop_reason: str, solver_version: str, initial: AssignmentSolution | None,
            start: float, message: str = "", extra: dict | None = None) -> Result:
    """Check the solution, fall back to a better warm start, explain infeasibility, build the Result."""
    extra = dict(extra or {})
    if solution is not None:
        broken = violations(problem, solution)
        if broken:
            message = f"the solver's solution breaks {len(broken)} constraint(s), dropped: {'; '.join(broken[:3])}"
            solution, status = None, Status.ERROR
    objective = objective_value(problem, solution) if solution is not None else math.nan
    if initial is not None:
        start_objective = objective_value(problem, initial)
        if solution is None or objective > start_objective:
            if status not in (Status.OPTIMAL, Status.TIME_LIMIT):
                status = Status.FEASIBLE
            message = (message + "; " if message else "") + (
                f"returned the initial solution (objective {start_objective:.9g}): the solver found "
                + ("nothing" if solution is None else f"only {objective:.9g}"))
            solution, objective = initial, start_objective
    if status == Status.INFEASIBLE:
        message = explain_infeasible(problem)
    return Result(status=status, solver=name, objective=objective, bound=bound,
                  solve_time_s=time.perf_counter() - start, solution=solution, message=message, sense="min",
                  solver_version=solver_version, stop_reason=stop_reason, extra=extra)


def _no_candidates(problem: ReplicatedAssignment, name: str, initial, start: float) -> Result | None:
    if not _items_without_candidates(problem):
        return None
    return _finish(problem, name, status=Status.INFEASIBLE, solution=None, bound=math.nan,
                   stop_reason="an item has no candidate bin (checked before solving)", solver_version="",
                   initial=initial, start=start)


# -- milp -----------------------------------------------------------------------------------------


@register("milp", kind="exact", problem=PROBLEM, description="MILP (Pyomo; HiGHS by default, solver_backend= for others)")
def solve_milp(problem: ReplicatedAssignment, *, time_limit: float | None = None, seed: int = 0,
               rel_gap: float | None = None, threads: int | None = None,
               initial_solution: AssignmentSolution | None = None, progress: Callable[[str], None] | None = None,
               solver_backend: str = "highs", **options) -> Result:
    """Solve with the MILP formulation; ``options`` are native options of ``solver_backend``."""
    from models import assignment_pyomo
    from solvers.milp import solve_pyomo

    start = time.perf_counter()
    _check_initial(problem, initial_solution)
    name = "milp" if solver_backend == "highs" else f"milp:{solver_backend}"
    early = _no_candidates(problem, name, initial_solution, start)
    if early is not None:
        return early
    model = assignment_pyomo.build(problem)
    if initial_solution is not None:
        assignment_pyomo.warm_start(model, problem, initial_solution)
    out = solve_pyomo(model, solver=solver_backend, time_limit=time_limit, rel_gap=rel_gap, threads=threads,
                      seed=seed, warm_start=initial_solution is not None, progress=progress, sense="min",
                      options=options)
    solution = assignment_pyomo.extract(model, problem) if out.has_solution else None
    return _finish(problem, name, status=out.status, solution=solution, bound=out.bound,
                   stop_reason=out.stop_reason, solver_version=f"{out.solver_name} {out.solver_version}",
                   initial=initial_solution, start=start, message="" if out.status != Status.ERROR else out.stop_reason,
                   extra={"native_status": out.native_status, "solver_time_s": out.solve_time_s,
                          "backend": out.solver_name})


# -- cpsat ----------------------------------------------------------------------------------------


@register("cpsat", kind="exact", problem=PROBLEM, description="CP-SAT on integer shares (exact up to Result.extra['tolerance'])")
def solve_cpsat_assignment(problem: ReplicatedAssignment, *, time_limit: float | None = None, seed: int = 0,
                           rel_gap: float | None = None, threads: int | None = None,
                           initial_solution: AssignmentSolution | None = None,
                           progress: Callable[[str], None] | None = None, **options) -> Result:
    """Solve with the CP-SAT formulation. ``threads=None`` runs one worker (deterministic); ``options``
    are native CP-SAT parameters (``linearization_level=2``, ...)."""
    from models import assignment_cpsat
    from solvers.cpsat import solve_cpsat

    start = time.perf_counter()
    _check_initial(problem, initial_solution)
    early = _no_candidates(problem, "cpsat", initial_solution, start)
    if early is not None:
        return early
    model = assignment_cpsat.build(problem)
    hint = assignment_cpsat.warm_start(model, problem, initial_solution) if initial_solution is not None else None
    solver, out = solve_cpsat(model, time_limit=time_limit, rel_gap=rel_gap, threads=threads, seed=seed, hint=hint,
                              progress=progress, sense="min", display_scale=model.scaling.objective_scale,
                              parameters=options)
    solution = assignment_cpsat.extract(model, solver, problem) if out.has_solution else None
    bound = assignment_cpsat.objective_bound(model, problem, out.bound)
    scaling = model.scaling
    message = out.stop_reason if out.status == Status.ERROR else ""
    return _finish(problem, "cpsat", status=out.status, solution=solution, bound=bound, stop_reason=out.stop_reason,
                   solver_version=f"cpsat {out.solver_version}", initial=initial_solution, start=start,
                   message=message,
                   extra={"native_status": out.native_status, "solver_time_s": out.solve_time_s,
                          "tolerance": scaling.tolerance, "share_units": scaling.share_units,
                          "coef_scale": scaling.coef_scale, "memory_exact": scaling.memory_exact})


# -- brute ----------------------------------------------------------------------------------------


def _replica_sets(problem: ReplicatedAssignment, g: int, i: int) -> list[tuple[int, ...]]:
    bins = [int(b) for b in np.nonzero(problem.mask[g, i])[0]]
    top = 1 if problem.objective == "cost" else min(int(problem.max_replicas[g, i]), len(bins))
    return [c for k in range(1, top + 1) for c in itertools.combinations(bins, k)]


def _fluid_bottleneck(loads: np.ndarray, sets: tuple[tuple[int, ...], ...], speed: np.ndarray) -> float:
    """Least bottleneck of one group for fixed replica sets, no traffic: the largest over bin subsets K
    of (load of items whose replicas all lie in K) / (speed of K) (Gale's supply-demand theorem on the
    item -> bin flow)."""
    B = speed.shape[0]
    masks = [sum(1 << b for b in s) for s in sets]
    best = 0.0
    for K in range(1, 1 << B):
        inside = sum(l for l, m in zip(loads, masks) if m & ~K == 0)
        if inside > 0:
            best = max(best, inside / sum(speed[b] for b in range(B) if K >> b & 1))
    return best


def _group_shares(problem: ReplicatedAssignment, g: int, sets) -> tuple[float, np.ndarray]:
    """Optimal shares [I, B] of group g for fixed replica sets, and the group's objective, by LP."""
    from scipy.optimize import linprog

    I, B = problem.shape[1], problem.shape[2]
    cols = [(i, b) for i in range(I) for b in sets[i]]
    n = len(cols)
    c = np.zeros(n + 1)
    c[n] = 1.0
    for k, (i, b) in enumerate(cols):
        c[k] = problem.traffic_weight * problem.traffic[g, i, b] * problem.load[g, i]
    a_eq = np.zeros((I, n + 1))
    a_ub = np.zeros((B, n + 1))
    a_ub[:, n] = -1.0
    for k, (i, b) in enumerate(cols):
        a_eq[i, k] = 1.0
        a_ub[b, k] = problem.load[g, i] / problem.speed[b]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(B), A_eq=a_eq, b_eq=np.ones(I),
                  bounds=[(0.0, 1.0)] * n + [(0.0, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"share LP of group {g} failed: {res.message}")
    shares = np.zeros((I, B))
    for k, (i, b) in enumerate(cols):
        shares[i, b] = res.x[k]
    return float(res.fun), shares


def _group_options(problem: ReplicatedAssignment, g: int, finite: np.ndarray, deadline: float) -> dict | None:
    """Best (value, replica sets) of group g per memory-use vector on the finite-capacity bins, or None
    when the deadline passes. Values: the group's cost, or its bottleneck plus traffic."""
    I, B = problem.shape[1], problem.shape[2]
    per_item = [_replica_sets(problem, g, i) for i in range(I)]
    uses_traffic = problem.objective == "bottleneck" and problem.traffic_weight > 0 and np.any(problem.traffic[g] > 0)
    cheapest_traffic = [min(problem.traffic[g, i, b] for b in range(B) if problem.mask[g, i, b]) if uses_traffic else 0.0
                        for i in range(I)]
    candidates = []
    for count, sets in enumerate(itertools.product(*per_item)):
        if count % 2048 == 0 and time.perf_counter() > deadline:
            return None
        per_bin = np.zeros(B, dtype=int)
        memory = np.zeros(B)
        for i, s in enumerate(sets):
            per_bin[list(s)] += 1
            memory[list(s)] += problem.weight[i, list(s)]
        if np.any(per_bin > problem.slots) or np.any(memory[finite] > problem.capacity[finite]):
            continue
        if problem.objective == "cost":
            value = float(sum(problem.cost[g, i, s[0]] for i, s in enumerate(sets)))
        else:
            value = _fluid_bottleneck(problem.load[g], sets, problem.speed)
            if uses_traffic:  # a lower bound here; the LP below gives the value
                value += problem.traffic_weight * sum(problem.load[g, i] * cheapest_traffic[i] for i in range(I))
        candidates.append((value, tuple(memory[finite]), sets))
    best: dict[tuple, tuple[float, tuple]] = {}
    for value, key, sets in sorted(candidates, key=lambda c: c[0]):
        if key in best and value >= best[key][0]:
            continue  # its lower bound cannot beat what this memory use already achieves
        if uses_traffic:
            value = _group_shares(problem, g, sets)[0]
        if key not in best or value < best[key][0]:
            best[key] = (value, sets)
    return _pareto(best)


def _pareto(options: dict) -> dict:
    """Drop options with no less value and no less memory on every bin than another."""
    items = sorted(options.items(), key=lambda kv: kv[1][0])
    kept: dict = {}
    for key, (value, sets) in items:
        if any(v <= value and all(a <= b for a, b in zip(k, key)) for k, (v, _) in kept.items()):
            continue
        kept[key] = (value, sets)
    return kept


@register("brute", kind="exact", problem=PROBLEM, description="enumeration of replica sets, LP shares (tiny instances)")
def solve_brute(problem: ReplicatedAssignment, *, time_limit: float | None = None, seed: int = 0,
                rel_gap: float | None = None, threads: int | None = None,
                initial_solution: AssignmentSolution | None = None, progress: Callable[[str], None] | None = None,
                **options) -> Result:
    """Enumerate every item's replica set (within masks, max_replicas, slots and memory), per group,
    keep each group's Pareto-best (value, memory) choices, and combine the groups; shares come from an
    LP. Raises ``ValueError`` when more than ``BRUTE_LIMIT`` combinations would be enumerated."""
    if options:
        raise ValueError(f"brute takes no options {sorted(options)}")
    start = time.perf_counter()
    _check_initial(problem, initial_solution)
    early = _no_candidates(problem, "brute", initial_solution, start)
    if early is not None:
        return early
    G, I, B = problem.shape
    per_group = [math.prod(len(_replica_sets(problem, g, i)) for i in range(I)) for g in range(G)]
    if sum(per_group) > BRUTE_LIMIT:
        raise ValueError(f"brute would enumerate {sum(per_group)} replica-set combinations, limit {BRUTE_LIMIT}")
    deadline = start + time_limit if time_limit is not None else math.inf
    finite = np.isfinite(problem.capacity)

    options_by_group = []
    for g in range(G):
        found = _group_options(problem, g, finite, deadline)
        if found is None:
            return _finish(problem, "brute", status=Status.TIME_LIMIT, solution=None, bound=math.nan,
                           stop_reason="time limit reached during enumeration", solver_version="",
                           initial=initial_solution, start=start)
        options_by_group.append(list(found.items()))
        if progress is not None:
            progress(f"group {g}: {len(found)} Pareto choices of {per_group[g]} combinations")
    crossings = math.prod(len(o) for o in options_by_group)
    if crossings > BRUTE_LIMIT:
        raise ValueError(f"brute would combine {crossings} group choices, limit {BRUTE_LIMIT}")

    best_value, best_choice = math.inf, None
    for choice in itertools.product(*options_by_group):
        used = np.sum([key for key, _ in choice], axis=0) if finite.any() else np.zeros(0)
        if np.any(used > problem.capacity[finite]):
            continue
        value = sum(v for _, (v, _) in choice)
        if value < best_value:
            best_value, best_choice = value, choice
    if best_choice is None:
        return _finish(problem, "brute", status=Status.INFEASIBLE, solution=None, bound=math.nan,
                       stop_reason="no combination satisfies every constraint", solver_version="",
                       initial=initial_solution, start=start)

    replicas = np.zeros((G, I, B), dtype=bool)
    shares = np.zeros((G, I, B))
    for g, (_, (_, sets)) in enumerate(best_choice):
        for i, s in enumerate(sets):
            replicas[g, i, list(s)] = True
        shares[g] = replicas[g].astype(float) if problem.objective == "cost" else _group_shares(problem, g, sets)[1]
    if problem.objective == "bottleneck":
        shares = normalise_shares(replicas, shares)
    return _finish(problem, "brute", status=Status.OPTIMAL, solution=AssignmentSolution(replicas, shares),
                   bound=best_value, stop_reason="enumerated every combination", solver_version="brute",
                   initial=initial_solution, start=start, extra={"combinations": sum(per_group), "crossings": crossings})


# -- infeasibility --------------------------------------------------------------------------------


def _slot_matching(problem: ReplicatedAssignment, g: int) -> int:
    """How many of group g's items get a replica when each bin b offers slots[b] places (max matching)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    I, B = problem.shape[1], problem.shape[2]
    places = [b for b in range(B) for _ in range(min(int(problem.slots[b]), I))]
    if not places:
        return 0
    dense = np.array([[problem.mask[g, i, b] for b in places] for i in range(I)], dtype=np.int8)
    match = maximum_bipartite_matching(csr_matrix(dense), perm_type="column")
    return int(np.sum(match >= 0))


def _feasible_without_slots(problem: ReplicatedAssignment) -> bool | None:
    """Whether some assignment meets masks and memory (slots dropped); None when undecided in time."""
    from models import assignment_pyomo
    from solvers.milp import solve_pyomo

    G, I, B = problem.shape
    relaxed = ReplicatedAssignment.build(problem.load, problem.speed, slots=np.full(B, I), weight=problem.weight,
                                         capacity=problem.capacity, mask=problem.mask, objective="cost")
    out = solve_pyomo(assignment_pyomo.build(relaxed), time_limit=EXPLAIN_TIME_LIMIT_S)
    if out.status == Status.INFEASIBLE:
        return False
    return True if out.has_solution else None


def _memory_numbers(problem: ReplicatedAssignment) -> str:
    G, I, B = problem.shape
    finite = np.isfinite(problem.capacity)
    need = 0.0
    forced = np.zeros(B)
    for g in range(G):
        for i in range(I):
            bins = np.nonzero(problem.mask[g, i])[0]
            if len(bins) == 0 or not finite[bins].all():
                continue  # a candidate without a memory limit takes it for free
            need += float(problem.weight[i, bins].min())
            if len(bins) == 1:
                forced[bins[0]] += problem.weight[i, bins[0]]
    text = (f"items need at least {need:.6g} bytes on memory-limited bins (one replica each on its lightest "
            f"candidate), bins hold {problem.capacity[finite].sum():.6g}")
    over = [f"bin {b} must hold {forced[b]:.6g} bytes of items with no other candidate, capacity "
            f"{problem.capacity[b]:.6g}" for b in range(B) if finite[b] and forced[b] > problem.capacity[b]]
    return text + ("; " + "; ".join(over) if over else "")


def _slot_numbers(problem: ReplicatedAssignment, short: list[tuple[int, int]]) -> str:
    G, I, B = problem.shape
    g, placed = short[0]
    text = (f"{G} x {I} items need {G * I} replicas ({I} per group), bins have {int(problem.slots.sum())} slots per "
            f"group (slots per bin {problem.slots.tolist()}); in group {g} at most {placed} of the {I} items fit "
            f"the slots of their candidate bins")
    if len(short) > 1:
        text += f" ({len(short)} groups fall short)"
    return text


def explain_infeasible(problem: ReplicatedAssignment) -> str:
    """Which constraint family makes ``problem`` infeasible, with numbers, checking in turn: candidate
    masks (directly), memory (is it feasible with memory dropped?), slots (with slots dropped?)."""
    G, I, B = problem.shape
    lonely = _items_without_candidates(problem)
    if lonely:
        listed = ", ".join(f"({g}, {i})" for g, i in lonely[:5])
        more = f" and {len(lonely) - 5} more" if len(lonely) > 5 else ""
        return f"candidate masks leave item(s) {listed}{more} no bin"
    placed = [(g, _slot_matching(problem, g)) for g in range(G)]
    short = [(g, n) for g, n in placed if n < I]
    if not short:
        return "memory binds: the problem is feasible with memory limits dropped; " + _memory_numbers(problem)
    without_slots = _feasible_without_slots(problem)
    if without_slots:
        return "slots bind: the problem is feasible with slot limits dropped; " + _slot_numbers(problem, short)
    if without_slots is None:
        return ("slots bind (memory undecided within the time limit): " + _slot_numbers(problem, short))
    return "slots and memory both bind: " + _slot_numbers(problem, short) + "; " + _memory_numbers(problem)
