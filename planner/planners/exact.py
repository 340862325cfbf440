"""Exact joint end-cloud planning: the origin device keeps a prefix of layers and chooses, per MoE
layer, which experts stay local; one partner device runs the rest; a codec rank is chosen for the
cut; micro-batching is taken from the same grid the baselines use.

For each partner and each (micro-batch size, micro-batches) pair, the instance becomes a
:class:`models.twotier.TwoTierProblem` whose coefficients are the cost model's own terms, so the
MILP's objective equals :class:`planner.cost.costmodel.CostModel`'s evaluation of the resulting plan
(tests check this). The best plan over partners and batching is optimal over that space: plans with
at most one cut between the origin and one other device, routed experts of the origin's layers
kept local or served by the partner, and any allowed codec rank at the cut. Solver ``milp`` uses
Pyomo + HiGHS; ``cpsat`` the same equations in OR-Tools CP-SAT.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from models.twotier import TwoTierProblem, TwoTierSolution, evaluate, violations
from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.spaces.batching import batch_grid
from planner.spaces.bounds import plan_space_bound
from planner.spaces.twotier import instance_value, plan_from_solution, solution_from_plan, two_tier_problem
from solvers import registry
from solvers.registry import register
from solvers.result import Result, SolveOutcome, Status


def _cases(p: TwoTierProblem):
    """Which machines are used, as (a[0], a[L-1]): near only, far only, both."""
    return [(1, 1), (0, 0), (1, 0)] if p.objective == "energy" else [None]


def _solve_milp(p: TwoTierProblem, case, time_limit, rel_gap, threads, seed, warm: TwoTierSolution | None, backend: str,
                progress=None):
    from models import twotier_pyomo
    from solvers.milp import solve_pyomo

    model = twotier_pyomo.build(p, case)
    if warm is not None:
        twotier_pyomo.warm_start(model, p, warm)
    out = solve_pyomo(model, solver=backend, time_limit=time_limit, rel_gap=rel_gap, threads=threads, seed=seed,
                      warm_start=warm is not None, sense="min", progress=progress)
    out.objective /= model.objective_scale
    out.bound /= model.objective_scale
    sol = twotier_pyomo.extract(model, p) if out.status in (Status.OPTIMAL, Status.FEASIBLE) or (
        out.status == Status.TIME_LIMIT and math.isfinite(out.objective)) else None
    return out, sol


def _solve_cpsat(p: TwoTierProblem, case, time_limit, rel_gap, threads, seed, warm: TwoTierSolution | None, backend: str,
                 progress=None):
    from models import twotier_cpsat
    from solvers.cpsat import solve_cpsat

    cp = twotier_cpsat.build(p, case)
    hint = twotier_cpsat.hints(cp, p, warm) if warm is not None else None
    solver, out = solve_cpsat(cp.model, time_limit=time_limit, rel_gap=rel_gap, threads=threads, seed=seed, hint=hint,
                              sense="min", progress=progress, display_scale=1.0 / cp.objective_unit)
    has = out.status in (Status.OPTIMAL, Status.FEASIBLE) or (out.status == Status.TIME_LIMIT and math.isfinite(out.objective))
    sol = twotier_cpsat.extract(cp, solver, p) if has else None
    # Back to seconds (joules); the bound gives away the scaling error so that it stays a valid bound.
    out.objective = out.objective * cp.objective_unit if math.isfinite(out.objective) else out.objective
    out.bound = out.bound * cp.objective_unit - cp.objective_error if math.isfinite(out.bound) else out.bound
    return out, sol


def export_subproblem(instance: Instance, cm: CostModel, far: str, micro_batch: int, micro_batches: int, path: str) -> str:
    """Write the MILP of one subproblem (``.lp`` or ``.mps``) for any other solver; returns the path."""
    from models import twotier_pyomo
    from solvers.milp import export_model

    p = two_tier_problem(cm, instance.workload.origin, far, micro_batch, micro_batches)
    case = (1, 0) if p.objective == "energy" else None
    return str(export_model(twotier_pyomo.build(p, case), path))


def explain_infeasible(instance: Instance, cm: CostModel, time_limit: float | None = 10.0) -> str:
    """Which constraint family makes the joint space empty, with numbers: memory (checked against
    the weights' size), the latency SLOs (the least latency the space reaches without them, solved
    exactly within ``time_limit``) or the accuracy budget."""
    from dataclasses import replace

    m, origin = instance.model, instance.device(instance.workload.origin)
    weights = m.total_params * m.dtype_bytes
    partners = [d for d in instance.devices if d.name != origin.name]
    best = max(partners, key=lambda d: d.memory_bytes, default=None)
    room = origin.memory_bytes + (best.memory_bytes if best else 0.0)
    if weights > room:
        with_best = f" with the largest partner {best.name!r} ({best.memory_bytes / 1e9:.1f} GB)" if best else ""
        return (f"infeasible: memory binds: the model's weights need {weights / 1e9:.1f} GB; the origin "
                f"{origin.name!r} ({origin.memory_bytes / 1e9:.1f} GB){with_best} holds {room / 1e9:.1f} GB, and this "
                f"space uses at most two devices")
    c = instance.constraints
    relaxed = replace(instance, objective="latency", constraints=replace(c, latency_slo_s=None, ttft_slo_s=None, tpot_slo_s=None))
    res = solve_joint(relaxed, "highs", time_limit=time_limit, solver_name="milp", explain=False)
    if res.solution is not None:
        ev = CostModel(relaxed).evaluate(res.solution)
        for name, value, slo in (("latency", ev.latency_s, c.latency_slo_s), ("TTFT", ev.ttft_s, c.ttft_slo_s),
                                 ("TPOT", ev.tpot_s, c.tpot_slo_s)):
            if slo is not None and value > slo:
                proof = "proven least" if res.status == Status.OPTIMAL else "least found"
                return (f"infeasible: the {name} SLO binds: the {proof} request latency in this space is "
                        f"{ev.latency_s * 1e3:.1f} ms (TTFT {ev.ttft_s * 1e3:.1f} ms, TPOT {ev.tpot_s * 1e3:.1f} ms), "
                        f"the SLO is {slo * 1e3:.1f} ms")
        return "infeasible: the SLOs bind together with memory at every batching"
    free = replace(relaxed, constraints=replace(relaxed.constraints, accuracy_loss_budget=1.0))
    if solve_joint(free, "highs", time_limit=time_limit, solver_name="milp", explain=False).solution is not None:
        losses = ", ".join(f"rank {r}: {x:g}" for r, x in zip(c.codec.ranks, c.codec.accuracy_loss)) or "no codec"
        return (f"infeasible: the accuracy budget binds: every plan that fits memory needs a codec at the cut "
                f"whose loss exceeds the budget {c.accuracy_loss_budget:g} ({losses})")
    return "infeasible: memory binds: no split of the model between the origin and one partner fits both devices"


@dataclass
class _Found:
    """What the search over the subproblems found."""

    best: tuple | None = None  # (two-tier value, plan, (partner, micro-batch, micro-batches)); value and triple None for the warm start
    bound: float = math.inf  # least dual bound on the two-tier objective over every subproblem examined
    all_optimal: bool = True
    timed_out: bool = False
    versions: set = field(default_factory=set)  # the backends' version strings
    failed: SolveOutcome | None = None  # the solve of a subproblem that failed (the search stopped there)


def _subproblems(instance: Instance, cm: CostModel, warm: tuple | None):
    """Every (partner, micro-batch, micro-batches, problem, warm start or None, case) in the order
    they are solved: partners in fleet order, then the batching grid, then the cases."""
    origin = instance.workload.origin
    for far in [d.name for d in instance.devices if d.name != origin]:
        for b, mb in batch_grid(instance.workload.max_batch, 2):
            p = two_tier_problem(cm, origin, far, b, mb)
            start = warm[3] if warm is not None and warm[:3] == (far, b, mb) else None
            for case in _cases(p):
                yield far, b, mb, p, start, case


# Seconds to build one subproblem's model per (layer, expert) pair that may stay near, measured on this project's 2-core
# machine: DeepSeek-V3's 61 x 256 took 2-4 s with Pyomo (CP-SAT about 1 s), a small model milliseconds.
_BUILD_S_PER_PAIR = 5e-4


def _build_s(p: TwoTierProblem) -> float:
    """An estimate of the seconds building subproblem ``p``'s model takes (see :data:`_BUILD_S_PER_PAIR`)."""
    return _BUILD_S_PER_PAIR * int(p.allowed.sum())


def _search(instance: Instance, cm: CostModel, backend: str, *, solver_name: str, t0: float, deadline: float | None,
            rel_gap: float, threads, seed, warm: tuple | None, progress) -> _Found:
    """Solve every subproblem within the deadline (one past it is skipped, and the bound given up)
    and keep the best plan."""
    found = _Found()
    solve = _solve_milp if solver_name == "milp" else _solve_cpsat
    for far, b, mb, p, start, case in _subproblems(instance, cm, warm):
        remaining = None if deadline is None else deadline - time.perf_counter()
        if remaining is not None and remaining <= _build_s(p):
            # Out of time, or too little left to build this subproblem's model (the time limit binds the
            # solve, not the build): skipped, and the two-tier bound given up.
            found.timed_out, found.all_optimal = True, False
            found.bound = -math.inf
            continue
        out, sol = solve(p, case, remaining, rel_gap, threads, seed, start, backend, progress)
        found.versions.add(out.solver_version)
        if progress is not None:
            progress(f"{solver_name}: partner {far}, batch {b} x {mb}{'' if case is None else f', case {case}'}: "
                     f"{out.status.value}, objective {out.objective:.6g}, bound {out.bound:.6g} "
                     f"({time.perf_counter() - t0:.1f} s)")
        if out.status == Status.INFEASIBLE:
            continue
        if out.status == Status.ERROR:
            found.failed = out
            return found
        if out.status != Status.OPTIMAL:
            found.all_optimal = False
            found.timed_out = found.timed_out or out.status == Status.TIME_LIMIT
        found.bound = min(found.bound, out.bound if math.isfinite(out.bound) else -math.inf)
        if sol is None:
            continue
        if violations(p, sol):
            # Within the solver's tolerances but not the reference's: not a plan we return.
            continue
        value = evaluate(p, sol).objective(p.objective)
        if found.best is None or value < found.best[0]:
            found.best = (value, plan_from_solution(instance, instance.workload.origin, far, b, mb, sol, solver_name), (far, b, mb))
    return found


def _warm_start_value(instance: Instance, cm: CostModel, initial_solution: Plan, found: _Found) -> float | None:
    """The warm start's objective (instance units) if it beats the space's best plan or the space
    has none; None otherwise."""
    warm_value = cm.evaluate(initial_solution).objective(instance.objective)
    if found.best is None or is_better(instance.objective, warm_value, instance_value(instance, found.best[0])):
        return warm_value
    return None


def _outside_space_result(instance: Instance, solver_name: str, found: _Found, initial_solution: Plan, warm_value: float,
                          sense: str, elapsed: float, version: str) -> Result:
    """A plan outside the two-tier space (e.g. route-aware's pipeline over several devices) beats
    the space's optimum: return it, without claiming a bound for the instance."""
    space = ("the two-tier space has no feasible plan" if found.best is None else
             f"the two-tier space's best is {instance_value(instance, found.best[0]):.6g}"
             + (" (proven optimal)" if found.all_optimal else ""))
    return Result(Status.FEASIBLE, solver_name, objective=warm_value, bound=math.nan, sense=sense,
                  solve_time_s=elapsed, solution=initial_solution, solver_version=version,
                  message=f"returned the warm start, a plan outside the two-tier space: {space}",
                  stop_reason="the warm start beats the two-tier space")


def _no_plan_result(instance: Instance, cm: CostModel, solver_name: str, found: _Found, explain: bool, sense: str,
                    elapsed: float, version: str) -> Result:
    """No plan: out of time, or every subproblem infeasible (explained when asked)."""
    status = Status.TIME_LIMIT if found.timed_out else Status.INFEASIBLE
    if found.timed_out:
        why = "time limit reached before any plan was found"
    elif explain:
        why = explain_infeasible(instance, cm)
    else:
        why = "infeasible: no split between the origin and one partner fits memory, SLOs and the accuracy budget"
    return Result(status, solver_name, sense=sense, solve_time_s=elapsed, message=why, solver_version=version,
                  stop_reason="all subproblems infeasible" if not found.timed_out else "time limit")


def _plan_result(instance: Instance, cm: CostModel, solver_name: str, found: _Found, sense: str,
                 elapsed: float, version: str) -> Result:
    """The best plan, its objective by the cost model and the bound over the two-tier space."""
    plan = found.best[1]
    objective = cm.evaluate(plan).objective(instance.objective)
    # ``bound`` is the least dual bound over every subproblem examined: a bound on the two-tier space.
    bound_value = instance_value(instance, found.bound) if math.isfinite(found.bound) and found.bound > 0 else math.nan
    status = Status.OPTIMAL if found.all_optimal else (Status.TIME_LIMIT if found.timed_out else Status.FEASIBLE)
    return Result(status, solver_name, objective=objective, bound=bound_value, sense=sense, solve_time_s=elapsed,
                  solution=plan, solver_version=version,
                  stop_reason="every subproblem solved to optimality" if found.all_optimal else "time limit or gap")


def solve_joint(instance: Instance, backend: str, *, time_limit=None, seed=0, rel_gap=None, threads=None,
                initial_solution: Plan | None = None, cost_model: CostModel | None = None, progress=None,
                solver_name: str = "milp", export: str | None = None, explain: bool = True, **_) -> Result:
    """The best plan of the two-tier space over every partner, batching and case (``backend``: a
    Pyomo solver for ``milp``, ignored for ``cpsat``); ``initial_solution`` is a warm start, and is
    returned if it beats the space (it may lie outside it)."""
    t0 = time.perf_counter()
    cm = cost_model or CostModel(instance)
    sense = "max" if instance.objective == "throughput" else "min"
    deadline = None if time_limit is None else t0 + time_limit
    # Exact by default: prove optimality, not a 1e-4 gap (HiGHS's default).
    rel_gap = 0.0 if rel_gap is None else rel_gap
    warm = solution_from_plan(instance, initial_solution) if initial_solution is not None else None
    found = _search(instance, cm, backend, solver_name=solver_name, t0=t0, deadline=deadline, rel_gap=rel_gap,
                    threads=threads, seed=seed, warm=warm, progress=progress)
    if found.failed is not None:
        return Result(Status.ERROR, solver_name, sense=sense, message=found.failed.stop_reason,
                      solve_time_s=time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0
    version = ", ".join(sorted(v for v in found.versions if v))
    if export is not None:
        if solver_name != "milp":
            raise ValueError("--export writes the MILP (.lp or .mps): use --solver milp")
        if found.best is not None:  # the model of the best two-tier subproblem, whatever plan is returned
            export_subproblem(instance, cm, *found.best[2], export)
    if initial_solution is not None:
        warm_value = _warm_start_value(instance, cm, initial_solution, found)
        if warm_value is not None:
            if warm is None:
                return _outside_space_result(instance, solver_name, found, initial_solution, warm_value, sense, elapsed, version)
            found.best = (None, initial_solution, None)
    if found.best is None:
        return _no_plan_result(instance, cm, solver_name, found, explain, sense, elapsed, version)
    return _plan_result(instance, cm, solver_name, found, sense, elapsed, version)


def _with_warm_start(instance: Instance, options: dict) -> dict:
    """Unless told otherwise (``warm_start=None`` or an ``initial_solution``), start from the
    route-aware plan: a few milliseconds, and a time-limited solve is then never worse than it."""
    if options.pop("warm_start", "route-aware") == "route-aware" and options.get("initial_solution") is None:
        route_aware = registry.get("route-aware", problem="instance").func
        warm = route_aware(instance, seed=options.get("seed", 0), cost_model=options.get("cost_model"))
        options["initial_solution"] = warm.solution
    return options


TWO_TIER_SHARE = 0.6  # of a time limit, what the two-tier solve may use (with the warm start); the bound the rest


def _budget(options: dict, t0: float) -> dict:
    """Split ``time_limit`` (counted from ``t0``, the warm start included): the two-tier solve gets
    :data:`TWO_TIER_SHARE` of it, the plan-space bound what is left (``overall_time_limit``)."""
    limit = options.get("time_limit")
    if limit is None:
        return options
    spent = time.perf_counter() - t0
    return {**options, "time_limit": max(0.0, TWO_TIER_SHARE * limit - spent), "overall_time_limit": limit}


OPTIMAL_GAP = 1e-4  # a plan within this relative gap of the plan-space bound is reported optimal
DEFAULT_BOUND_TIME_S = 30.0  # the bound's MILPs when the solve has no time limit


def _certify(instance: Instance, result: Result, options: dict, t0: float) -> Result:
    """The two-tier solve's ``result`` judged against the whole plan space.

    Its plan (the two-tier optimum, or the warm start where that is better) keeps its objective;
    ``bound`` becomes :func:`planner.spaces.bounds.plan_space_bound`, which no plan of the instance
    beats (the two-tier bound covers its own space only: it goes to ``extra``). Status: ``optimal``
    when the gap to that bound is at most ``OPTIMAL_GAP``; else ``time_limit`` if the two-tier solve
    was cut short, else ``feasible``, with the gap. No plan and no bound: ``infeasible``, with the
    two-tier solve's explanation."""
    cm = options.get("cost_model") or CostModel(instance)
    limit = options.get("overall_time_limit")
    left = DEFAULT_BOUND_TIME_S if limit is None else max(limit - (time.perf_counter() - t0), 0.01)
    bound = plan_space_bound(instance, cm, time_limit=left)
    extra = {**result.extra, "two_tier_status": result.status.value, "two_tier_bound": result.bound,
             "two_tier_message": result.message}
    if bound is not None:
        extra.update(plan_space_bound=bound.value, bound_binding=bound.binding, bound_micro_batch=bound.micro_batch,
                     bound_time_s=bound.solve_time_s, bound_proven=bound.detail.get("proven", True))
    elapsed = time.perf_counter() - t0
    if result.solution is None:
        if bound is None and result.status is Status.INFEASIBLE:
            return replace(result, solve_time_s=elapsed, extra=extra)
        status = Status.TIME_LIMIT if result.status is Status.TIME_LIMIT else result.status
        return replace(result, status=status, bound=bound.value if bound is not None else math.nan,
                       solve_time_s=elapsed, extra=extra)
    if bound is None:  # cannot happen for a valid plan: the relaxation contains it
        raise RuntimeError("a plan exists but the plan-space relaxation is infeasible")
    gap = abs(bound.value - result.objective) / max(abs(result.objective), 1e-12)  # as Result.gap
    if gap <= OPTIMAL_GAP:
        status, stop = Status.OPTIMAL, f"within {OPTIMAL_GAP:g} of the plan-space bound"
    elif result.status is Status.TIME_LIMIT:
        status, stop = Status.TIME_LIMIT, "time limit; gap to the plan-space bound"
    else:
        status, stop = Status.FEASIBLE, "gap to the plan-space bound (a relaxation of the whole space)"
    where = "the warm start (outside the two-tier space)" if "warm start" in result.message else "the two-tier optimum"
    message = (f"{where}: {result.objective:.6g}; plan-space bound {bound.value:.6g} ({bound.binding}), gap {gap:.2%}; "
               f"two-tier space: {result.status.value}" + (f", bound {result.bound:.6g}" if math.isfinite(result.bound) else ""))
    return replace(result, status=status, bound=bound.value, solve_time_s=elapsed, stop_reason=stop, message=message,
                   extra=extra)


@register("milp", kind="exact", problem="instance")
def joint_milp(instance: Instance, **options) -> Result:
    """Exact end-cloud split with local experts and codec rank (Pyomo + HiGHS), certified against the plan-space bound."""
    t0 = time.perf_counter()
    backend = options.pop("backend", "highs")
    options = _budget(_with_warm_start(instance, options), t0)
    return _certify(instance, solve_joint(instance, backend, solver_name="milp", **options), options, t0)


@register("cpsat", kind="exact", problem="instance")
def joint_cpsat(instance: Instance, **options) -> Result:
    """Exact end-cloud split with local experts and codec rank (OR-Tools CP-SAT), certified against the plan-space bound."""
    t0 = time.perf_counter()
    options = _budget(_with_warm_start(instance, options), t0)
    return _certify(instance, solve_joint(instance, "cpsat", solver_name="cpsat", **options), options, t0)
