"""Online re-planning: adapt a running plan to a changed instance, with bounded weight migration.

:func:`replan` takes the plan that runs now and the instance as it is now (links slower or faster,
a device added or lost, a load spike, drifting expert popularity) and returns a
:class:`ReplanResult`: the plan to run next, the objective before (the current plan on the new
instance; NaN if it is no longer valid there) and after, and the weights to copy.

Candidates:

* the current plan, if it is still valid (no migration);
* the current plan repaired, if it is not: stages on lost devices give their layers to a
  neighbouring stage (variant ``merge``) or move to an unused device (variant ``replace``); experts
  whose every host is lost go home (``experts home``) or to the device with the most free memory
  (``experts rehost``); codec ranks no longer allowed (or over the accuracy budget) are dropped;
  micro-batching is clamped to ``max_batch``; devices over memory shed boundary layers to a
  neighbour with room, else their least popular experts to the device with the most free memory;
  the batching is kept if valid, else lowered along the shared grid until it fits;
* the route-aware plan on the new instance (:mod:`planner.planners.route_aware`);
* the current (or repaired) plans with other allowed codec ranks at their cuts
  (:func:`planner.spaces.codec_choice.codec_variants`): a migration of codec matrices only, the cheap
  answer to a bandwidth change;
* local moves (:mod:`planner.planners.local_search`) from the best start within the migration budget and from the
  least-migrating valid start, vetoing every move whose plan would exceed the migration budget.

Choice: among the valid candidates whose migration fits the budget (the argument, else the
instance's ``constraints.migration_budget_bytes``, else unlimited), those that no other such
candidate beats by more than ``threshold`` (default 1 %) are equally good; of these the one that
migrates the fewest bytes wins, and a current plan that is still valid always wins among them: it is
kept unchanged (the same object), with zero migration and reason "no change needed", unless some
candidate improves the objective by more than the threshold. With ``constraints.accuracy_tradeoff``
= ``t`` > 0 this choice is made among the candidates of least codec accuracy loss within ``t`` of
the best objective (so the ranks follow the bandwidth: larger while the link is fast, smaller when
it slows down). With no valid candidate within budget the status is ``infeasible``, the plan None,
and the reason says why.

Migration bytes: a plan's *memory map* lists which device holds which weights: every layer's
non-expert block (on its stage device), every routed expert (on its stage device, or where the
expert placement puts it), the embedding (first stage) and LM head (last stage; for tied embeddings
the head is the embedding matrix), and codec matrices (encoder on the sending side, decoder on the
receiving side of a cut, keyed by the cut's layer and rank, ``hidden_size x rank`` each). Migration
is every (weights, device) pair of the new map absent from the current one, at the cost model's
byte sizes (what :meth:`CostModel.memory_bytes` counts). KV caches and activations are not weights
and are not counted (in-flight requests are assumed to drain or be re-prefilled). Each copy is a
:class:`MigrationStep` from a device that still exists and holds those weights now, or from
``None`` (the model store) when none does.

The time budget: the route-aware heuristic may use the first half of ``time_budget_s`` (it stops
between partners and steps once it has a plan, so with a small budget it returns the first
structure it finds, untuned) and the local moves get what is left but a tenth, kept for choosing
and reporting. A search that cannot produce its first plan within the budget still finishes (a
few ms on Mixtral, more on large fleets), in which case no local moves run unless ``max_moves`` is
given (then exactly ``max_moves`` moves per start, and route-aware runs to its end: reproducible,
but the time budget no longer bounds the run). Route-aware does not run at all when the repairs of the
current plan left it less than a quarter of the budget and one of them is within the migration
budget (unless ``max_moves`` is given). Without ``max_moves`` the chosen plan may depend on
the machine's speed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_within
from planner.cost.validator import validate
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.domain.units import GB
from planner.planners import local_search
from planner.planners.migration import MigrationStep, migration, weight_map
from planner.planners.repair import check_plan_matches_model, repair
from planner.spaces.codec_choice import codec_variants, plan_accuracy_loss
from solvers import registry
from solvers.result import Status

DEFAULT_THRESHOLD = 0.01


@dataclass
class ReplanResult:
    plan: Plan | None
    status: Status
    objective_before: float
    objective_after: float
    migration_bytes: float
    steps: list[MigrationStep]
    reason: str
    solve_time_s: float
    # Every candidate considered: name, objective (NaN if invalid), migration bytes, within budget.
    candidates: list[dict] = field(default_factory=list)


@dataclass
class _Cand:
    name: str
    plan: Plan
    objective: float
    migration_bytes: float
    steps: list


def _fmt_obj(kind: str, v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    unit = {"throughput": "tokens/s", "latency": "ms", "energy": "J/token"}[kind]
    return f"{v:.4g} {unit}"


class _Candidates:
    """The plans considered so far, each with its objective (the instance's units) and its migration
    from ``current`` (bytes): valid ones ``within`` the migration budget and valid ones ``over`` it.
    Invalid plans and plans already considered are left out."""

    def __init__(self, current: Plan, instance: Instance, scorer: local_search.Scorer, budget: float, current_map):
        self.current = current
        self.instance = instance
        self.scorer = scorer
        self.budget = budget
        self.current_map = current_map
        self.within: list[_Cand] = []
        self.over: list[_Cand] = []  # valid but over the migration budget

    def _migration(self, plan: Plan):
        """(bytes, steps): the weights to copy to go from the current plan to ``plan``."""
        return migration(self.current, plan, self.instance, self.scorer.memo, current_map=self.current_map)

    def add(self, name: str, plan: Plan | None, objective: float | None = None) -> None:
        """Consider ``plan`` (scored here unless its ``objective`` is given)."""
        if plan is None or any(c.plan == plan for c in self.within + self.over):
            return
        if objective is None:
            objective = self.scorer.score(plan)[0]
            if objective is None:
                return
        mig, steps = (0.0, []) if plan is self.current else self._migration(plan)
        (self.within if mig <= self.budget else self.over).append(_Cand(name, plan, objective, mig, steps))

    def fits_budget(self, plan: Plan) -> bool:
        """Whether moving from the current plan to ``plan`` stays within the migration budget."""
        return math.isinf(self.budget) or self._migration(plan)[0] <= self.budget


def _checked_budget(current: Plan, instance: Instance, time_budget_s: float, threshold: float,
                    migration_budget_bytes: float | None) -> float:
    """Check :func:`replan`'s options and that ``current`` fits the model; the migration budget in
    bytes (the argument, else the instance's, else inf)."""
    if not (time_budget_s >= 0 and math.isfinite(time_budget_s)):
        raise ValueError(f"time_budget_s must be a finite number >= 0, got {time_budget_s!r}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    check_plan_matches_model(current, instance)
    budget = migration_budget_bytes if migration_budget_bytes is not None else instance.constraints.migration_budget_bytes
    budget = math.inf if budget is None else float(budget)
    if not budget >= 0:
        raise ValueError(f"migration budget must be >= 0 bytes, got {budget!r}")
    return budget


def _weights_exceed_fleet(instance: Instance) -> str | None:
    """The reason no plan can exist when the fleet cannot even hold the model's weights, else None."""
    weights = instance.model.total_params * instance.model.dtype_bytes
    if weights <= instance.total_memory_bytes:
        return None
    return (f"infeasible: the model needs {weights / GB:.1f} GB for its weights, the fleet has "
            f"{instance.total_memory_bytes / GB:.1f} GB (devices: {', '.join(d.name for d in instance.devices)})")


def _add_route_aware(cands: _Candidates, *, seed: int, t0: float, time_budget_s: float, max_moves: int | None) -> None:
    """The route-aware plan on the changed instance, unless the clock says it would come too late.

    Route-aware may use the first half of the budget (it stops between partners and steps once a
    plan is found); the local moves get the rest but a tenth, kept for choosing and reporting.
    With ``max_moves`` nothing depends on the clock: route-aware runs to its end.
    When the repairs gave a plan within the migration budget and left route-aware less than a
    quarter of the budget, route-aware is skipped: its first plan would likely come too late."""
    route_aware = registry.get("route-aware", problem="instance").func
    ra_left = t0 + 0.5 * time_budget_s - time.perf_counter()
    if max_moves is not None or ra_left >= 0.25 * time_budget_s or not cands.within:
        ra = route_aware(cands.instance, seed=seed, cost_model=cands.scorer.memo,
                         time_budget_s=1.0 if max_moves is not None else max(ra_left, 1e-4))
        if ra.solution is not None:
            cands.add("route-aware", ra.solution)


def _add_codec_variants(cands: _Candidates) -> None:
    """Other codec ranks for the current or repaired plans: a cheap migration (the codec matrices)
    that follows the bandwidth (see planner.spaces.codec_choice)."""
    for c in list(cands.within):
        if c.name != "route-aware":
            for variant in codec_variants(c.plan, cands.instance):
                cands.add(f"{c.name}, codec ranks {_ranks_text(variant)}", variant)


def _add_local_moves(cands: _Candidates, *, seed: int, deadline: float, time_budget_s: float,
                     max_moves: int | None) -> None:
    """Local moves from the best start and from the least-migrating start, vetoing every move whose
    plan would exceed the migration budget. Without ``max_moves`` the starts share the time left
    before ``deadline`` (perf_counter s) but a tenth of the budget."""
    if not cands.within:
        return
    kind = cands.instance.objective
    best_start = _best(kind, cands.within)
    thrifty = min(cands.within, key=lambda c: (c.migration_bytes, _key(kind, c.objective)))
    starts = [best_start] + ([thrifty] if thrifty is not best_start else [])
    for i, start in enumerate(starts):
        left = deadline - 0.1 * time_budget_s - time.perf_counter()
        if max_moves is None and left <= 0:
            break
        share = None if max_moves is not None else left / (len(starts) - i)
        out = local_search.improve(cands.instance, start.plan, time_budget_s=share, max_moves=max_moves, seed=seed + i,
                                   accept=cands.fits_budget, scorer=cands.scorer)
        if out.plan is not start.plan:
            cands.add(f"local-search from {start.name}", out.plan, out.objective)


def _gather(cands: _Candidates, violations: list, before: float, *, seed: int, t0: float, time_budget_s: float,
            max_moves: int | None) -> None:
    """Every candidate, in order: the current plan if valid (else its repairs), route-aware, codec
    variants, local moves (see the module docstring)."""
    if not violations:
        cands.add("current", cands.current, before)
    else:
        for name, plan in repair(cands.current, cands.instance, scorer=cands.scorer):
            cands.add(name, plan)
    _add_route_aware(cands, seed=seed, t0=t0, time_budget_s=time_budget_s, max_moves=max_moves)
    _add_codec_variants(cands)
    _add_local_moves(cands, seed=seed, deadline=t0 + time_budget_s, time_budget_s=time_budget_s, max_moves=max_moves)


def _table(cands: _Candidates) -> list[dict]:
    """One row per candidate considered, for :attr:`ReplanResult.candidates`."""
    return [{"name": c.name, "objective": c.objective, "migration_bytes": c.migration_bytes, "within_budget": c in cands.within,
             "accuracy_loss": plan_accuracy_loss(c.plan, cands.instance)} for c in cands.within + cands.over]


def _infeasible_reason(cands: _Candidates, why_current: str, budget_txt: str) -> str:
    """Why no candidate is chosen: all valid ones migrate too much, or there is none."""
    if cands.over:
        cheapest = min(cands.over, key=lambda c: c.migration_bytes)
        return (f"infeasible within the migration budget: {why_current}; the cheapest valid plan "
                f"({cheapest.name}) needs {cheapest.migration_bytes / GB:.3g} GB of migration, budget {budget_txt}")
    return (f"infeasible: {why_current}; neither a repair nor the route-aware heuristic finds a valid plan "
            f"on the changed instance")


def _choose(kind: str, within: list[_Cand], current: Plan, instance: Instance, threshold: float) -> tuple[_Cand, _Cand, _Cand]:
    """The candidate to run (module docstring, "Choice"): ``(chosen, best, top)``, ``best`` the best
    objective of all, ``top`` the best of those within the accuracy trade-off."""
    best = _best(kind, within)
    pool = within
    tradeoff = instance.constraints.accuracy_tradeoff
    if tradeoff > 0:
        # The least accuracy loss among the candidates within the trade-off of the best objective.
        near = [c for c in within if is_within(kind, c.objective, best.objective, tradeoff)]
        least = min(plan_accuracy_loss(c.plan, instance) for c in near)
        pool = [c for c in near if plan_accuracy_loss(c.plan, instance) <= least + 1e-12]
    top = _best(kind, pool)
    good = [c for c in pool if not local_search.improves(kind, top.objective, c.objective, threshold)]
    keep = next((c for c in good if c.plan is current), None)
    chosen = keep or min(good, key=lambda c: (c.migration_bytes, _key(kind, c.objective), within.index(c)))
    return chosen, best, top


def _kept_reason(kind: str, chosen: _Cand, best: _Cand, top: _Cand, before: float, threshold: float,
                 tradeoff: float) -> str:
    """Why the current plan (``chosen``) stays."""
    if best is chosen:
        return "no change needed: current plan valid and no candidate beats it"
    if top is chosen:
        return (f"no change needed: current plan valid; the best candidate ({best.name}, "
                f"{_fmt_obj(kind, best.objective)}) is within the accuracy trade-off {tradeoff:.0%} and "
                f"loses more accuracy")
    gain = abs(top.objective - before) / abs(before) if before else math.inf
    return (f"no change needed: current plan valid; the best candidate ({top.name}, "
            f"{_fmt_obj(kind, top.objective)}) improves it by {gain:.2%}, threshold {threshold:.0%}")


def _change_reason(kind: str, chosen: _Cand, current: Plan, instance: Instance, before: float, violations: list,
                   why_current: str, budget_txt: str) -> str:
    """Why ``chosen`` replaces the current plan, and what it costs."""
    tradeoff = instance.constraints.accuracy_tradeoff
    if violations:
        head = why_current
    elif tradeoff > 0 and plan_accuracy_loss(chosen.plan, instance) != plan_accuracy_loss(current, instance):
        head = (f"current plan valid, {chosen.name} has codec accuracy loss {plan_accuracy_loss(chosen.plan, instance):.4g} "
                f"(current {plan_accuracy_loss(current, instance):.4g}) within the accuracy trade-off {tradeoff:.0%}")
    else:
        gain = abs(chosen.objective - before) / abs(before) if before else math.inf
        head = f"current plan valid, {chosen.name} is {gain:.1%} better"
    return (f"{head}; chose {chosen.name}: {_fmt_obj(kind, before)} -> {_fmt_obj(kind, chosen.objective)}, "
            f"migration {chosen.migration_bytes / GB:.3g} GB (budget {budget_txt})")


def replan(current: Plan, instance: Instance, *, time_budget_s: float = 0.02, migration_budget_bytes: float | None = None,
           seed: int = 0, threshold: float = DEFAULT_THRESHOLD, max_moves: int | None = None,
           cost_model: CostModel | None = None) -> ReplanResult:
    """Adapt ``current`` to the changed ``instance`` (see the module docstring for the rules).

    ``threshold``: relative improvement a change must bring over the least-migrating good candidate
    (default 1 %). ``max_moves``: local moves per start, for exact reproducibility. Raises
    :class:`InputError` when ``current`` does not fit the instance's model, ``ValueError`` for bad options.
    """
    t0 = time.perf_counter()
    budget = _checked_budget(current, instance, time_budget_s, threshold, migration_budget_bytes)
    scorer = local_search.Scorer(instance, cost_model or CostModel(instance))
    cm = scorer.memo
    kind = instance.objective
    current_map = weight_map(current, instance, cm)
    before, _ = scorer.score(current)
    violations = [] if before is not None else (validate(instance, current, cm) or ["invalid"])
    before = math.nan if before is None else before
    too_big = _weights_exceed_fleet(instance)
    if too_big is not None:
        return ReplanResult(None, Status.INFEASIBLE, before, math.nan, 0.0, [], too_big, time.perf_counter() - t0, [])

    cands = _Candidates(current, instance, scorer, budget, current_map)
    _gather(cands, violations, before, seed=seed, t0=t0, time_budget_s=time_budget_s, max_moves=max_moves)
    table = _table(cands)
    elapsed = lambda: time.perf_counter() - t0  # noqa: E731
    budget_txt = "unlimited" if math.isinf(budget) else f"{budget / GB:.3g} GB"
    why_current = ("current plan valid" if not violations
                   else "current plan invalid (" + "; ".join(map(str, violations[:2])) + ")")
    if not cands.within:
        return ReplanResult(None, Status.INFEASIBLE, before, math.nan, 0.0, [], _infeasible_reason(cands, why_current, budget_txt),
                            elapsed(), table)

    chosen, best, top = _choose(kind, cands.within, current, instance, threshold)
    if chosen.plan is current:
        reason = _kept_reason(kind, chosen, best, top, before, threshold, instance.constraints.accuracy_tradeoff)
        return ReplanResult(current, Status.FEASIBLE, before, before, 0.0, [], reason, elapsed(), table)
    plan = replace(chosen.plan, instance=instance.name, solver="replan", metrics=cm.evaluate(chosen.plan).metrics())
    reason = _change_reason(kind, chosen, current, instance, before, violations, why_current, budget_txt)
    return ReplanResult(plan, Status.FEASIBLE, before, chosen.objective, chosen.migration_bytes, chosen.steps, reason,
                        elapsed(), table)


def _ranks_text(plan: Plan) -> str:
    return "; ".join(",".join("none" if r is None else str(r) for r in p.codec_ranks) for p in plan.pipelines)


def _key(kind: str, v: float) -> float:
    """Sort key: smaller is better."""
    return -v if kind == "throughput" else v


def _best(kind: str, cands: list[_Cand]) -> _Cand:
    return min(cands, key=lambda c: (_key(kind, c.objective), c.migration_bytes, cands.index(c)))
