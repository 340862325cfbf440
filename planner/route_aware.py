"""Route-aware pipeline scheduling (the EC2MoE scheduler), a fast heuristic on the joint space.

Space: the same as :mod:`planner.joint` (the origin keeps a prefix of layers and a choice of local
experts; one partner runs the rest; one codec option at the cut; batching from the shared grid), so
``moeplan compare`` measures the heuristic's gap against the exact optimum directly.

Algorithm, for each candidate partner (one per distinct card and route, best routes first):

* Step 1, every cut and codec at once: with every expert of the origin's layers kept local, the
  latency, busy time and memory of each side are prefix / suffix sums over layers, so all ``L + 1``
  cut points x ``K`` codec options are scored in one vectorised pass (O(L K)).
* Step 2, hardware-aware local expert selection: where the origin's memory cannot hold all experts
  of its layers, keep the experts that cover the most expected routing mass (popularity) and serve
  the rest from the partner, filling the memory left after the non-expert weights; scored exactly.
* Step 3, local search: from the best candidate, score every neighbour at once (the cut moved by
  one layer, other codec options, the four most popular away experts brought back, the four least
  popular local ones sent away) with the vectorised exact evaluator, take the best, repeat until
  no move improves or the move cap is reached.
* Step 4: tune micro-batching on the best structure with the cost model.

Deterministic: Step 3 stops at a local optimum or after ``max_evaluations`` scored moves per
partner and batching; ``time_budget_s`` (default 1 s) is only a safety net, and ``stop_reason``
says when it was hit (then the plan may depend on the machine's speed).

Complexity per partner and batching: O(L K) for Step 1, O(L^2 E) for Step 2 (every cut scored exactly, vectorised),
and O(moves x L E) for Step 3. No randomness; ``seed`` is accepted for the common signature.
"""

from __future__ import annotations

import math
import time

import numpy as np

from models.twotier import FAR, NEAR, TwoTierProblem, TwoTierSolution, evaluate, evaluate_many, violations
from planner.baselines import batch_grid, partner_candidates
from planner.costmodel import CostModel, is_better
from planner.instance import Instance
from planner.joint import plan_from_solution, two_tier_problem
from planner.validator import evaluate_checked
from solvers.registry import register
from solvers.result import Result, Status


def _all_cuts(p: TwoTierProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """With all experts local, for every cut k and option [L+1, K]: the objective (inf where
    infeasible), the objective ignoring the origin's memory (to rank codec options where experts
    must leave), and the origin's memory deficit [L+1] (bytes over capacity; <= 0 when it fits)."""
    L = p.num_layers
    ex = p.exists.astype(float)
    near_lat = p.ne_lat[NEAR] + np.einsum("le,lep->lp", ex, p.item_lat[NEAR])           # [L, P]
    far_lat = p.ne_lat[FAR] + np.einsum("le,lep->lp", ex, p.item_lat[FAR])
    near_busy = p.ne_busy[NEAR] + (ex * p.item_busy[NEAR]).sum(axis=1)                    # [L]
    far_busy = p.ne_busy[FAR] + (ex * p.item_busy[FAR]).sum(axis=1)
    near_mem = p.ne_mem[NEAR] + (ex * p.item_mem).sum(axis=1)
    far_mem = p.ne_mem[FAR] + (ex * p.item_mem).sum(axis=1)
    zero = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:]), np.cumsum(a, axis=0)])  # noqa: E731
    pre = lambda a: zero(a)                                                                 # noqa: E731  sum of l < k
    suf = lambda a: zero(a[::-1])[::-1]                                                     # noqa: E731  sum of l >= k
    k = np.arange(L + 1)
    first = (k > 0).astype(float)
    last = (k == L).astype(float)
    cut = first - last
    lat = pre(near_lat) + suf(far_lat)                                                      # [L+1, P]
    lat += first[:, None] * p.ends_lat[0, NEAR] + (1 - first)[:, None] * p.ends_lat[0, FAR]
    lat += last[:, None] * p.ends_lat[1, NEAR] + (1 - last)[:, None] * p.ends_lat[1, FAR]
    lat += (1 - first)[:, None] * p.entry_lat + (1 - last)[:, None] * p.exit_lat
    lat = lat[:, None, :] + cut[:, None, None] * p.cut_lat[None, :, :]                      # [L+1, K, P]
    R = lat @ p.lat_weight                                                                  # [L+1, K]
    bn = pre(near_busy) + first * p.ends_busy[0, NEAR] + last * p.ends_busy[1, NEAR]
    bf = suf(far_busy) + (1 - first) * p.ends_busy[0, FAR] + (1 - last) * p.ends_busy[1, FAR]
    bn = bn[:, None] + cut[:, None] * p.cut_busy[NEAR][None, :]
    bf = bf[:, None] + cut[:, None] * p.cut_busy[FAR][None, :]
    links = ((1 - first)[:, None] * p.entry_busy[None, :] + (1 - last)[:, None] * p.exit_busy[None, :])   # [L+1, J]
    links = links[:, None, :] + cut[:, None, None] * p.cut_busy[2:].T[None, :, :]          # [L+1, K, J]
    busy_max = np.maximum(bn, bf)
    if links.shape[2]:
        busy_max = np.maximum(busy_max, links.max(axis=2))
    period = np.maximum(busy_max, R / p.concurrency)
    mn = (pre(near_mem) + first * (p.ends_mem[0, NEAR] + p.workspace_mem[NEAR]) + last * (p.ends_mem[1, NEAR] - p.head_tied_mem))
    mf = (suf(far_mem) + (1 - first) * (p.ends_mem[0, FAR] - p.head_tied_mem) + (1 - last) * (p.ends_mem[1, FAR] + p.workspace_mem[FAR]))
    mn = mn[:, None] + cut[:, None] * p.cut_mem[NEAR][None, :]
    mf = mf[:, None] + cut[:, None] * p.cut_mem[FAR][None, :]
    loss = cut[:, None] * p.cut_loss[None, :]
    if p.objective == "throughput":
        obj = period
    elif p.objective == "latency":
        obj = R
    else:
        used = np.stack([first, 1 - last], axis=1)                                           # [L+1, 2]
        obj = (used @ p.idle_w)[:, None] * period + (p.power_w[NEAR] - p.idle_w[NEAR]) * bn + (p.power_w[FAR] - p.idle_w[FAR]) * bf
    ok = (mf <= p.capacity[FAR]) & (loss <= p.loss_budget + 1e-12)
    if p.max_request_latency is not None:
        ok &= R <= p.max_request_latency
    for ph, capv in enumerate(p.max_phase_latency):
        if capv is not None:
            ok &= lat[:, :, ph] <= capv
    if p.max_period is not None:
        ok &= period <= p.max_period
    fits = ok & (mn <= p.capacity[NEAR])
    return np.where(fits, obj, np.inf), np.where(ok, obj, np.inf), np.where(ok, mn - p.capacity[NEAR], np.inf).min(axis=1)


def _select_local(p: TwoTierProblem, k: int, deficit: float) -> np.ndarray:
    """Hardware-aware local experts for cut ``k``: drop the least popular experts of the origin's
    layers (by expected routing mass) until ``deficit`` bytes are freed. Popularity is read from the
    decode-phase traffic coefficient (proportional to selection probability)."""
    near = p.exists.copy()
    near[k:] = False
    if deficit <= 0:
        return near
    mass = _mass(p)
    cells = np.argwhere(near)
    order = np.lexsort((cells[:, 0], mass[cells[:, 0], cells[:, 1]]))
    freed = np.cumsum(p.item_mem[cells[order, 0], cells[order, 1]])
    count = int(np.searchsorted(freed, deficit)) + 1  # the fewest least-popular experts that free enough
    drop = cells[order[:count]]
    near[drop[:, 0], drop[:, 1]] = False
    return near


def _mass(p: TwoTierProblem) -> np.ndarray:
    """Expected routing mass of each expert [L, E] (its tokens' traffic if sent away; proportional to popularity)."""
    return p.item_link_busy.sum(axis=0) if p.num_links else p.item_busy[NEAR]


def _value(p: TwoTierProblem, s: TwoTierSolution) -> float:
    v = evaluate(p, s)
    return math.inf if violations(p, s, value=v) else v.objective(p.objective)


def _local_search(p: TwoTierProblem, s: TwoTierSolution, v: float, deadline: float,
                  max_evaluations: int) -> tuple[TwoTierSolution, float, bool]:
    """Best-improvement search over cut +-1, codec options and single-expert moves: each round
    scores its whole neighbourhood in one vectorised call and takes the best (ties: the first).
    Stops at a local optimum or after ``max_evaluations`` scored moves (both deterministic), or at
    ``deadline`` (a safety net; the third value says whether it was hit)."""
    evaluations = 0
    mass = _mass(p)
    improved = True
    while improved and evaluations < max_evaluations:
        if time.perf_counter() >= deadline:
            return s, v, True
        improved = False
        cands = []
        for dk in (-1, 1):
            k = s.near_layers + dk
            if 0 <= k <= p.num_layers:
                near = s.near_items.copy()
                if dk > 0:
                    near[k - 1] = p.exists[k - 1]
                cands.append(TwoTierSolution(k, near, s.option))
        cands += [TwoTierSolution(s.near_layers, s.near_items, o) for o in range(p.num_options) if o != s.option]
        k = s.near_layers
        if k:
            away = np.argwhere(p.exists[:k] & ~s.near_items[:k])
            home = np.argwhere(p.exists[:k] & s.near_items[:k])
            for l, e in sorted(map(tuple, away), key=lambda c: -mass[c])[:4]:
                near = s.near_items.copy()
                near[l, e] = True
                cands.append(TwoTierSolution(k, near, s.option))
            for l, e in sorted(map(tuple, home), key=lambda c: mass[c])[:4]:
                near = s.near_items.copy()
                near[l, e] = False
                cands.append(TwoTierSolution(k, near, s.option))
        cands = cands[: max_evaluations - evaluations]
        if not cands:
            break
        evaluations += len(cands)
        values = evaluate_many(p, np.array([c.near_layers for c in cands]), np.stack([c.near_items for c in cands]),
                               np.array([c.option for c in cands]))
        i = int(np.argmin(values))
        if values[i] < v * (1 - 1e-12):
            s, v, improved = cands[i], float(values[i]), True
    return s, v, False


def _partners(instance: Instance, cm: CostModel) -> list[str]:
    """Partner candidates, the strongest routes first (widest bottleneck, then shortest RTT, then memory)."""
    ranked = sorted(partner_candidates(instance, cm),
                    key=lambda c: (-c[1], c[2], -instance.device(c[0]).memory_bytes, c[0]))
    return [name for name, _, _ in ranked]


def _search(p: TwoTierProblem, deadline: float, max_evaluations: int) -> tuple[float, TwoTierSolution, bool] | None:
    """Steps 1-3 on one partner and batching: (objective, solution) or None."""
    table, ranking, deficit = _all_cuts(p)
    cands = []
    if np.isfinite(table).any():
        k, o = np.unravel_index(np.argmin(table), table.shape)
        cands.append((float(table[k, o]), TwoTierSolution(int(k), _select_local(p, int(k), 0.0), int(o))))
    # Step 2: every cut where the origin must send experts away, with that cut's best codec option,
    # all scored exactly in one vectorised pass.
    short = np.flatnonzero(np.isfinite(deficit) & (deficit > 0))
    if short.size:
        near = np.stack([_select_local(p, int(k), float(deficit[k])) for k in short])
        options = np.argmin(ranking[short], axis=1)
        values = evaluate_many(p, short, near, options)
        for k, v, n, o in zip(short, values, near, options):
            cands.append((float(v), TwoTierSolution(int(k), n, int(o))))
    if not cands:
        return None
    v, s = min(cands, key=lambda c: c[0])
    if not math.isfinite(v):
        return None
    s, v, hit = _local_search(p, s, v, deadline, max_evaluations)
    return v, s, hit


@register("route-aware", kind="heuristic", problem="instance")
def route_aware(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None,
                time_budget_s: float = 1.0, max_partners: int = 4, max_evaluations: int = 200, **_) -> Result:
    """EC2MoE-style route-aware scheduler: cut, local experts, codec rank, batching (heuristic)."""
    t0 = time.perf_counter()
    budget = time_budget_s if time_limit is None else min(time_budget_s, time_limit)
    deadline = t0 + budget
    cm = cost_model or CostModel(instance)
    origin = instance.workload.origin
    sense = "max" if instance.objective == "throughput" else "min"
    B = instance.workload.max_batch
    b0, m0 = (max(1, B // 2), 2) if B >= 2 else (1, 1)
    best = None  # (value, partner, batching, solution)
    budget_hit = False
    # Structures are searched at full concurrency, as one batch or two micro-batches; Step 4 tunes.
    batchings = sorted({(B, 1), (b0, m0)}, reverse=True)
    for far in _partners(instance, cm)[:max_partners]:
        for b, m in batchings:
            p = two_tier_problem(cm, origin, far, b, m)
            found = _search(p, deadline, max_evaluations)
            budget_hit = budget_hit or (found is not None and found[2])
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], far, (b, m), found[1])
    elapsed = lambda: time.perf_counter() - t0  # noqa: E731
    if best is None:
        return Result(Status.INFEASIBLE, "route-aware", sense=sense, solve_time_s=elapsed(),
                      message="infeasible: no cut between the origin and one partner fits memory, SLOs and the accuracy budget",
                      stop_reason="no candidate")
    _, far, _, s = best
    # Step 4: batching on the chosen structure. With experts away from their layer's stage the
    # two-tier equations (equal to the cost model, vectorised) are the cheaper scorer; without, the
    # cost model's cached per-layer sums are.
    offloaded = bool(plan_from_solution(instance, origin, far, b0, m0, s, "route-aware").pipelines[0].expert_placement)
    best_plan, best_obj = None, None
    if offloaded:
        best_batch, best_value = None, math.inf
        for b, m in batch_grid(B, 2):
            value = _value(two_tier_problem(cm, origin, far, b, m), s)
            if value < best_value:
                best_batch, best_value = (b, m), value
        grid = [best_batch] if best_batch is not None else []
    else:
        grid = batch_grid(B, 2)
    for b, m in grid:
        plan = plan_from_solution(instance, origin, far, b, m, s, "route-aware")
        ev, violations = evaluate_checked(instance, plan, cm)
        if violations:
            continue
        obj = ev.objective(instance.objective)
        if best_plan is None or is_better(instance.objective, obj, best_obj):
            best_plan, best_obj = plan, obj
    if best_plan is None:
        return Result(Status.INFEASIBLE, "route-aware", sense=sense, solve_time_s=elapsed(),
                      message="infeasible: the chosen structure breaks a limit at every batching", stop_reason="batching")
    return Result(Status.FEASIBLE, "route-aware", objective=best_obj, sense=sense, solve_time_s=elapsed(),
                  solution=best_plan,
                  stop_reason="time budget (the plan may depend on machine speed)" if budget_hit else "local optimum or move cap")
