"""Expert placement of an instance solved with any solver of problem type "assignment".

:func:`solve_placement` solves :func:`planner.spaces.placement.placement_problem` with a
heuristic (``greedy-placement``, ``local-search-placement``, ``eplb``) or an exact solver
(``milp``, ``cpsat``, ``brute``), optionally warm-starting the exact one from a heuristic.

Exact solvers on large problems. DeepSeek-V3 on 32 GPUs has 58 x 256 x 32 = 475,136 (layer, expert,
device) triples: as many binary replicas plus as many shares. Measured on a 2-core machine, the
Pyomo model and its hand-over to HiGHS take about 4-6 minutes and 2.7 GB at peak, and HiGHS then
spends a 60 s limit in presolve without a bound (the warm start comes back). A monolithic MILP on
~28k candidate triples builds in 15-20 s, but HiGHS stays in the root cut loop for 60 s (bound
about 7,500 against the greedy's 12,411, no better plan). So by default, on problems with more than
``FULL_MASK_LIMIT`` triples, exact solvers get a RESTRICTED problem built around a reference
placement (the warm start, or ``greedy-placement``'s):

* candidates (:func:`candidate_mask`, option ``candidates=k``, default ``DEFAULT_CANDIDATES``):
  every expert keeps the devices of its replicas in the reference; the free experts of a layer (its
  ``free_items`` heaviest and those on its ``hot_bins`` most loaded devices) may also go on the
  layer's ``k`` least-loaded devices and on ``random_candidates`` random ones;
* layers apart (option ``decompose="layers"``, the default when restricted): each MoE layer is its
  own problem whose memory is what the reference uses in that layer plus an even part of what it
  leaves free (:func:`layer_problems`), so the layers' plans together meet every memory limit; the
  time limit is shared out over the layers, those with the most room for improvement first.

``candidates="all"`` with ``decompose=False`` forces the full problem. When restricted, status and
``Result.bound`` are those of the RESTRICTED problem (``extra["restricted"]`` is True,
``extra["restriction"]`` and ``Result.message`` say how); the plan is feasible for the full problem,
and ``extra["full_bound"]`` / ``extra["full_gap"]`` give a lower bound valid for the full problem
(:func:`lower_bound`: per layer, the larger of total load over total speed and each expert's load
over the speed of its ``max_replicas`` fastest devices).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from models.assignment import AssignmentSolution, ReplicatedAssignment, objective_value, violations
from planner.domain.instance import Instance
from planner.spaces.placement import (
    DEFAULT_CANDIDATES,
    FULL_MASK_LIMIT,
    MIN_LAYER_S,
    PROBLEM,
    PROBLEM_OPTIONS,
    candidate_mask,
    layer_problems,
    lower_bound,
    placement_problem,
)
from solvers import assignment as _assignment  # noqa: F401 - registers milp, cpsat, brute on "assignment"
from solvers import placement as _placement  # noqa: F401 - registers the placement heuristics
from solvers.assignment import explain_infeasible
from solvers.registry import get
from solvers.result import Result, Status


def _resolve_candidates(problem: ReplicatedAssignment, candidates) -> int | None:
    """Extra candidate devices per free item for an exact solver, or None for the full mask."""
    G, I, B = problem.shape
    if candidates is None:
        return DEFAULT_CANDIDATES if int(problem.mask.sum()) > FULL_MASK_LIMIT else None
    if candidates == "all":
        return None
    k = int(candidates)
    if k < 0:
        raise ValueError(f"candidates must be >= 0 (extra devices per expert) or 'all', got {candidates!r}")
    return None if k >= B else k


def _replicas_by_memory(problem: ReplicatedAssignment) -> np.ndarray:
    """[B]: most replicas each bin holds by memory alone, every one of the lightest item on that bin
    (inf where that item weighs nothing)."""
    lightest = problem.weight.min(axis=0)
    safe = np.where(lightest > 0, lightest, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lightest > 0, np.floor(problem.capacity / safe + 1e-9), np.inf)


def _memory_room(problem: ReplicatedAssignment) -> float:
    """Most replicas the bins hold over all groups by memory alone (with the lightest item on each bin)."""
    return float(_replicas_by_memory(problem).sum())


def _necessary_conditions_fail(problem: ReplicatedAssignment) -> bool:
    """Cheap necessary conditions for feasibility: enough slots per group and enough memory overall
    (each bin holds at most min(slots x groups, capacity / weight) replicas, with the lightest weight)."""
    G, I, B = problem.shape
    if int(problem.slots.sum()) < I:
        return True
    return float(np.minimum(problem.slots * G, _replicas_by_memory(problem)).sum()) < G * I


def _why_infeasible(problem: ReplicatedAssignment) -> str:
    """:func:`explain_infeasible`'s message, plus the memory count when memory alone is short and the
    message does not already blame memory."""
    message = explain_infeasible(problem)
    G, I, B = problem.shape
    room = _memory_room(problem)
    if room < G * I and not message.startswith(("memory binds", "slots and memory")):
        message += (f"; memory alone is short as well: the devices hold at most {room:.0f} expert replicas, "
                    f"{G * I} are needed")
    return message


def _solve_by_layers(info, problem: ReplicatedAssignment, reference: AssignmentSolution,
                     initial: AssignmentSolution | None, time_limit, seed, options, progress) -> Result:
    """``info``'s solver on every group of ``problem`` apart (see :func:`layer_problems`).

    Groups go in order of their room for improvement (the reference's value minus
    :func:`lower_bound`, largest first). With a ``time_limit`` (wall clock, formulation included,
    which may overrun it by one group's formulation) each group gets the larger of an even share of
    the time left and ``MIN_LAYER_S``; groups reached after the time is up keep ``reference``'s
    placement, as does a group whose solve finds nothing."""
    t0 = time.perf_counter()
    G, I, B = problem.shape
    deadline = None if time_limit is None else t0 + float(time_limit)
    y = np.asarray(reference.replicas, dtype=bool).copy()
    s = np.asarray(reference.shares, dtype=float).copy()
    subs = layer_problems(problem, reference)
    floors = [lower_bound(sub) for sub in subs]
    ref_values = [objective_value(sub, AssignmentSolution(y[g:g + 1], s[g:g + 1])) for g, sub in enumerate(subs)]
    order = sorted(range(G), key=lambda g: -(ref_values[g] - floors[g]))
    bounds = list(floors)
    statuses, rows, solver_s = [], [None] * G, 0.0
    for n, g in enumerate(order):
        sub, floor = subs[g], floors[g]
        limit = None
        if deadline is not None:
            left = deadline - time.perf_counter()
            if left < 0.05:
                statuses.append(Status.TIME_LIMIT)
                rows[g] = {"group": g, "status": "not solved (time)", "objective": ref_values[g], "bound": floor}
                continue
            limit = min(max(left / (G - n), MIN_LAYER_S), left)
        start = None if initial is None else AssignmentSolution(initial.replicas[g:g + 1], initial.shares[g:g + 1])
        r = info.func(sub, time_limit=limit, seed=seed, initial_solution=start, **options)
        solver_s += float(r.extra.get("solver_time_s", r.solve_time_s))
        if r.solution is not None:
            y[g], s[g] = r.solution.replicas[0], r.solution.shares[0]
            statuses.append(r.status)
        else:
            statuses.append(Status.TIME_LIMIT if r.status == Status.TIME_LIMIT else Status.FEASIBLE)
        bounds[g] = max(r.bound, floor) if math.isfinite(r.bound) else floor
        rows[g] = {"group": g, "status": r.status.value, "objective": r.objective, "bound": bounds[g],
                   "time_s": r.solve_time_s}
        if progress is not None:
            progress(f"layer {g} ({n + 1}/{G}): {r.status.value} objective {r.objective:.6g} (reference "
                     f"{ref_values[g]:.6g}) bound {bounds[g]:.6g} in {r.solve_time_s:.2f}s")
    if all(st == Status.OPTIMAL for st in statuses):
        status, why = Status.OPTIMAL, "every layer solved to optimality"
    elif any(st == Status.TIME_LIMIT for st in statuses):
        status, why = Status.TIME_LIMIT, "time limit: some layers unsolved or not proven optimal"
    else:
        status, why = Status.FEASIBLE, "some layers not proven optimal"
    solution = AssignmentSolution(y, s)
    elapsed = time.perf_counter() - t0
    solved = sum(1 for row in rows if row.get("time_s") is not None)
    return Result(status, info.name, objective=objective_value(problem, solution), bound=float(sum(bounds)),
                  solve_time_s=elapsed, solution=solution, sense="min", stop_reason=why,
                  extra={"layers": rows, "layers_solved": solved, "solver_time_s": solver_s,
                         "build_s": max(elapsed - solver_s, 0.0)})


def _pop_options(options: dict) -> tuple[dict, object, object, dict, dict]:
    """Take :func:`solve_placement`'s own options out of ``options`` (what is left goes to the solver):
    ``(problem options, candidates, decompose, candidate-mask options, warm-start options)``."""
    problem_opts = {k: options.pop(k) for k in PROBLEM_OPTIONS if k in options}
    candidates = options.pop("candidates", None)
    decompose = options.pop("decompose", None)
    mask_opts = {key: int(options.pop(key)) for key in ("free_items", "hot_bins", "random_candidates")
                 if key in options}
    warm_opts = dict(options.pop("warm_start_options", None) or {})
    if decompose not in (None, False, "layers"):
        raise ValueError(f"decompose must be 'layers' or False, got {decompose!r}")
    return problem_opts, candidates, decompose, mask_opts, warm_opts


def _finish(result: Result, problem: ReplicatedAssignment, extra: dict, t0: float) -> Result:
    """``result`` checked against the full ``problem``, with its gap to ``extra["full_bound"]``, the
    restriction in its message, ``extra`` merged in and the time since ``t0`` (perf_counter s)."""
    if result.solution is not None:
        broken = violations(problem, result.solution)
        assert not broken, f"the placement breaks the full problem's constraints: {broken[:3]}"
        extra["full_gap"] = abs(result.objective - extra["full_bound"]) / max(abs(result.objective), 1e-12)
    message = result.message
    if extra["restricted"]:
        message = (message + "; " if message else "") + extra["restriction"]
    return replace(result, message=message, solve_time_s=time.perf_counter() - t0, extra={**result.extra, **extra})


def _warm_start(problem: ReplicatedAssignment, warm_start_solver: str | None, time_limit, seed: int, warm_opts: dict,
                progress, extra: dict) -> Result | None:
    """The warm-start heuristic's result on ``problem`` (None without one), noted in ``extra``."""
    if warm_start_solver is None:
        return None
    warm = get(warm_start_solver, problem=PROBLEM).func(problem, time_limit=time_limit, seed=seed, **warm_opts)
    extra.update(warm_start_solver=warm_start_solver, warm_start_s=warm.solve_time_s,
                 warm_start_status=warm.status.value)
    if warm.solution is not None:
        extra["warm_start_objective"] = warm.objective
    if progress is not None:
        progress(f"warm start {warm_start_solver}: {warm.status.value} objective {warm.objective:.6g} "
                 f"in {warm.solve_time_s:.2f}s")
    return warm


def _choose_restriction(problem: ReplicatedAssignment, exact: bool, candidates, decompose,
                        initial: AssignmentSolution | None, warm_start_solver: str | None, seed: int,
                        extra: dict) -> tuple[int | None, bool, AssignmentSolution | None]:
    """Whether an exact solver gets a restricted problem: ``(k, layered, reference)``, ``k`` the
    extra candidate devices per free expert (None: the full mask), ``layered`` whether the layers
    are solved apart, ``reference`` the placement the restriction is built around (the warm start,
    else ``greedy-placement``'s; its name goes to ``extra["reference"]``). Heuristics solve the full problem."""
    G = problem.shape[0]
    k = _resolve_candidates(problem, candidates) if exact else None
    layered = exact and (decompose == "layers" or (decompose is None and k is not None)) and G > 1
    reference = initial
    if exact and (k is not None or layered):
        if reference is None:
            reference = get("greedy-placement", problem=PROBLEM).func(problem, seed=seed).solution
            extra["reference"] = "greedy-placement"
        else:
            extra["reference"] = warm_start_solver
        if reference is None:  # the greedy found nothing: solve the full problem after all
            k, layered = None, False
    return k, layered, reference


def _restrict(problem: ReplicatedAssignment, reference: AssignmentSolution | None, k: int | None, layered: bool,
              seed: int, mask_opts: dict, extra: dict) -> ReplicatedAssignment:
    """The problem to solve: ``problem`` with the candidate mask around ``reference`` when ``k`` is
    given, else ``problem`` itself; ``extra`` says whether and how it is restricted (its
    ``restriction`` text also goes into the result's message)."""
    G, I, B = problem.shape
    solved = problem
    if k is not None:
        solved = replace(problem, mask=candidate_mask(problem, reference, k, seed=seed, **mask_opts))
        extra.update(restricted=True, candidates=k, candidate_triples=int(solved.mask.sum()))
        extra["restriction"] = (f"restricted problem: {extra['candidate_triples']} candidate (layer, expert, device) "
                                f"triples of {G * I * B} (each expert on its devices in the {extra['reference']} "
                                f"placement; its layer's heaviest and hottest experts also on {k} least-loaded and "
                                f"random devices)")
    if layered:
        extra["restricted"] = True
        extra["restriction"] = ((extra["restriction"] + "; " if extra["restriction"] else "restricted problem: ")
                                + f"each of the {G} layers solved apart with the memory the {extra['reference']} "
                                  "placement uses in it plus an even part of what it leaves free")
    if extra["restricted"]:
        extra["restriction"] += ("; status and bound are those of the restricted problem, extra['full_bound'] is "
                                 "valid for the full one")
    return solved


def _run_solver(info, solver: str, solved: ReplicatedAssignment, reference: AssignmentSolution | None,
                initial: AssignmentSolution | None, layered: bool, time_limit, seed: int, options: dict, progress,
                extra: dict) -> Result:
    """``info``'s solver on ``solved``: layer by layer (:func:`_solve_by_layers`) or in one go, the
    warm start passed on to those that take one (exact solvers, ``local-search-placement``); on one
    go the formulation time (s) goes to ``extra["build_s"]`` when the solver reports its own time."""
    kwargs = dict(options)
    if layered:
        return _solve_by_layers(info, solved, reference, initial, time_limit, seed, kwargs, progress)
    if info.kind == "exact":
        kwargs["initial_solution"] = initial
        if progress is not None:
            kwargs["progress"] = progress
    elif initial is not None and solver == "local-search-placement":
        kwargs["initial_solution"] = initial
    t1 = time.perf_counter()
    result = info.func(solved, time_limit=time_limit, seed=seed, **kwargs)
    if "solver_time_s" in result.extra:
        extra["build_s"] = max(time.perf_counter() - t1 - float(result.extra["solver_time_s"]), 0.0)
    return result


def _not_worse_than_warm_start(result: Result, warm: Result | None, warm_start_solver: str | None, solver: str) -> Result:
    """``result``, or the warm start's placement where ``result`` has none or a worse one (the exact
    solvers already guarantee it; a heuristic may not), with a note why in the message."""
    if warm is None or warm.solution is None or (result.solution is not None and not result.objective > warm.objective):
        return result
    note = (f"returned the warm start of {warm_start_solver} (objective {warm.objective:.9g}); "
            f"{solver} gave {'nothing' if result.solution is None else f'{result.objective:.9g}'}")
    status = result.status if result.status in (Status.OPTIMAL, Status.TIME_LIMIT) else Status.FEASIBLE
    return replace(result, status=status, solution=warm.solution, objective=warm.objective,
                   message=(result.message + "; " if result.message else "") + note)


def solve_placement(instance: Instance, solver: str = "greedy-placement", *, time_limit: float | None = None,
                    seed: int = 0, warm_start_solver: str | None = None, progress=None, **options) -> Result:
    """Place the experts of ``instance`` with solver ``solver`` (registered on problem "assignment").

    ``warm_start_solver`` (a heuristic such as ``greedy-placement``) runs first; its solution goes to
    ``solver`` as ``initial_solution``, and the result is never worse than it (checked here too).

    Exact solvers on large problems (more than ``FULL_MASK_LIMIT`` candidate triples, or when
    ``candidates`` is given) solve a RESTRICTED problem built around a reference placement (the warm
    start, or ``greedy-placement``'s): the candidate mask of :func:`candidate_mask`, and with
    ``decompose="layers"`` (the default when restricted) every MoE layer apart, each with the memory
    the reference uses in it plus an even part of what it leaves free (:func:`layer_problems`).
    ``time_limit`` is then wall clock over all layers, formulation included; on the full problem it is
    the solver's own clock (formulating comes on top: ``extra["build_s"]``). Status and
    ``Result.bound`` are those of the problem solved: ``extra["restricted"]`` says whether it is
    restricted and ``extra["restriction"]`` how; ``extra["full_bound"]`` and ``extra["full_gap"]``
    hold a simple lower bound (:func:`lower_bound`) valid for the full problem.

    Options: those of :func:`placement_problem` (``devices``, ``layers``, ``tokens``,
    ``max_replicas``, ``slots``, ``nonexpert``, ``headroom``, ``traffic_weight``, ``traffic_origin``,
    ``cost_model``); ``candidates`` (extra devices per free expert, or "all"), ``free_items``,
    ``hot_bins``, ``random_candidates`` (:func:`candidate_mask`) and ``decompose`` ("layers" or
    False) for exact solvers; ``warm_start_options`` (a dict for the warm-start heuristic); anything
    else goes to ``solver`` (``threads``, ``rel_gap``, native options).

    ``Result.solution`` is an :class:`AssignmentSolution` of the full problem; ``extra`` also holds
    ``problem`` (the full problem), ``names`` (device of each bin), ``warm_start_objective`` and
    ``candidate_triples``. An infeasible problem gets :func:`solvers.assignment.explain_infeasible`'s
    message (plus the count of replicas memory holds, when memory alone is short and that message
    does not blame memory: on a problem this large its MILP check may run out of time).
    """
    t0 = time.perf_counter()
    problem_opts, candidates, decompose, mask_opts, warm_opts = _pop_options(options)
    problem, names = placement_problem(instance, **problem_opts)
    info = get(solver, problem=PROBLEM)
    G, I, B = problem.shape
    extra = {"problem": problem, "names": names, "shape": (G, I, B), "full_bound": lower_bound(problem),
             "restricted": False, "restriction": "", "candidate_triples": G * I * B}
    if _necessary_conditions_fail(problem):
        return _finish(Result(Status.INFEASIBLE, solver, sense="min", message=_why_infeasible(problem),
                              stop_reason="necessary conditions fail (checked before solving)"), problem, extra, t0)
    warm = _warm_start(problem, warm_start_solver, time_limit, seed, warm_opts, progress, extra)
    initial = warm.solution if warm is not None and warm.solution is not None else None
    k, layered, reference = _choose_restriction(problem, info.kind == "exact", candidates, decompose, initial,
                                                warm_start_solver, seed, extra)
    solved = _restrict(problem, reference, k, layered, seed, mask_opts, extra)
    result = _run_solver(info, solver, solved, reference, initial, layered, time_limit, seed, options, progress, extra)
    return _finish(_not_worse_than_warm_start(result, warm, warm_start_solver, solver), problem, extra, t0)
