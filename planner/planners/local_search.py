"""Large-neighbourhood search over plans (solver ``local-search``): improves any valid plan.

Start: option ``initial_solution`` (any valid plan: several pipelines, expert placements, codecs),
by default the ``route-aware`` plan. Each step destroys part of the incumbent with one to three
random moves applied in sequence, repairs the result where only memory or an SLO broke (halving the
micro-batch), and keeps it only if :func:`planner.cost.validator.validate` finds no violation and the
cost model's objective strictly improves. The moves, all scored with
:class:`planner.cost.costmodel.CostModel` directly:

* ``shift``: move a stage boundary by +-1..3 layers;
* ``device``: give a stage an unused device, or swap the devices of two stages;
* ``merge`` / ``split``: join two neighbouring stages on one of their devices, or split a stage
  and put one part on an unused device (new cut uncompressed);
* ``codec``: another rank at a cut (allowed ranks or none, within the accuracy-loss budget);
* ``expert``: send routed experts away from their layer's device (popular experts first, to devices
  with fast memory first: hot experts to fast devices), bring one back, or move one elsewhere;
* ``batch``: another micro-batching (the shared grid of :func:`planner.planners.baselines.batch_grid` and
  its neighbours, within ``max_batch``);
* ``share``: shift request share between pipelines (plans with several pipelines).

Determinism: every random choice comes from ``numpy.random.default_rng(seed)`` and nothing iterates
over a set, so the sequence of moves depends on the seed only. The clock is read only to stop: with
a time budget the stopping point (hence the plan) depends on the machine's speed. Give ``max_moves``
for exact reproducibility: then exactly that many moves are tried and the clock is not read (unless
``time_budget_s`` is given too). The result is never worse than the start, which is returned
unchanged (the same object) when nothing improves.
"""

from __future__ import annotations

import time
from dataclasses import replace

from planner.cost.costmodel import CostModel
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.planners.neighbourhood import (
    DEFAULT_TIME_BUDGET_S,
    MOVES,
    MemoCostModel,
    Scorer,
    SearchOutcome,
    improve,
    improves,
    plan_key,
    unused_devices,
)
from solvers import registry
from solvers.registry import register
from solvers.result import Result, Status

__all__ = ["DEFAULT_TIME_BUDGET_S", "MOVES", "MemoCostModel", "Scorer", "SearchOutcome", "improve", "improves", "local_search",
           "plan_key", "unused_devices"]


@register("local-search", kind="heuristic", problem="instance")
def local_search(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None,
                 initial_solution: Plan | None = None, time_budget_s: float | None = None, max_moves: int | None = None,
                 **_) -> Result:
    """Large-neighbourhood search from any valid plan (default: the route-aware plan); never worse than its start.

    ``time_budget_s`` (default 0.1 s, unless ``max_moves`` is given) bounds the search; building the
    default start plan comes on top. ``time_limit`` caps both together.
    """
    t0 = time.perf_counter()
    sense = "max" if instance.objective == "throughput" else "min"
    cm = cost_model or CostModel(instance)
    start = initial_solution
    if start is None:
        route_aware = registry.get("route-aware", problem="instance").func
        first = route_aware(instance, time_limit=time_limit, seed=seed, cost_model=MemoCostModel(cm))
        if first.solution is None:
            return Result(first.status, "local-search", sense=sense, solve_time_s=time.perf_counter() - t0,
                          message=first.message, stop_reason="no start plan (route-aware found none)")
        start = first.solution
    budget = DEFAULT_TIME_BUDGET_S if time_budget_s is None and max_moves is None else time_budget_s
    if time_limit is not None:  # the time limit caps the search, whatever else is given
        left = max(0.0, time_limit - (time.perf_counter() - t0))
        budget = left if budget is None else min(budget, left)
    try:
        out = improve(instance, start, cost_model=cm, time_budget_s=budget, max_moves=max_moves, seed=seed)
    except ValueError as exc:
        return Result(Status.ERROR, "local-search", sense=sense, solve_time_s=time.perf_counter() - t0,
                      message=f"initial_solution: {exc}", stop_reason="invalid start plan")
    plan = replace(out.plan, solver="local-search")
    return Result(Status.FEASIBLE, "local-search", objective=out.objective, sense=sense,
                  solve_time_s=time.perf_counter() - t0, solution=plan, stop_reason=out.stop_reason,
                  extra={"initial_objective": out.initial_objective, "moves_tried": out.moves_tried,
                         "moves_accepted": out.moves_accepted, "evaluations": out.evaluations})
