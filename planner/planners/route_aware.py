"""Route-aware pipeline scheduling (the EC2MoE scheduler), a fast heuristic.

Two spaces, and the better plan of the two:

* the joint end-cloud space of :mod:`planner.planners.exact` (the origin keeps a prefix of layers and a
  choice of local experts; one partner runs the rest; one codec option at the cut), so ``moeplan
  compare`` measures the heuristic's gap against ``milp``'s exact optimum directly (Steps 1-4);
* pipelines over several devices (Step 5): the cut(s) and stage-to-device mapping along the path
  of :func:`planner.spaces.chain.default_path` (origin, then end, edge, cloud devices, memory
  descending), experts at home, a codec rank at the origin's cut. This is the space of ``dp`` plus
  the codec; it is what holds a model that no pair of devices can (DeepSeek-V3 on 40 devices).

Steps 1-3 run for each candidate partner (one per distinct card and route, best routes first;
partners whose memory together with the origin's cannot hold the weights are skipped):

* Step 1, every cut and codec at once: with every expert of the origin's layers kept local, the
  latency, busy time and memory of each side are prefix / suffix sums over layers, so all ``L + 1``
  cut points x ``K`` codec options are scored in one vectorised pass (O(L K)).
* Step 2, hardware-aware local expert selection: where the origin's memory cannot hold all experts
  of its layers, keep the experts that cover the most expected routing mass (popularity) and serve
  the rest from the partner, filling the memory left after the non-expert weights; scored exactly.
* Step 3, local search: from the best candidate, score every neighbour at once (the cut moved by
  one layer, other codec options, the four most popular away experts brought back, the four least
  popular local ones sent away) with the vectorised exact evaluator, take the best, repeat until
  no move improves or the move cap is reached. On the best partner and batching, where experts
  leave the origin, Step 3 again from starts that send them away evenly over the layers
  (:func:`_spread_away`).
* Step 4: tune micro-batching on the best structure (the two-tier equations score offloaded
  structures, the cost model the others). It runs after Step 7: for throughput a structure whose
  batching ceiling (:func:`planner.spaces.batching.throughput_ceiling`, a bound over every
  batching) stays below Step 7's best plan keeps the batching it was found at.
* Step 5 (more than two devices, or no pair fits): per batching, a min-max DP over the path (the
  least bottleneck busy time, :func:`solvers.dp.best_stages`); while the latency loop binds
  (``R / (b m)`` above the bottleneck), the least-latency DP under the cap ``R / (b m)``, which
  lowers the request period each round; then every codec rank at the origin's cut and at each cut
  between two tiers (:func:`_codec_cuts`), one cut at a time, scored with the cost model; first at
  ``(max_batch / 2) x 2``, then with as many micro-batches as stages.
  Step 4 runs on the better of the two structures (on both when they are within 10 %). On
  fleets of three or more Step 5 runs first, and a partner whose first two-tier structure trails
  its pipeline by more than 30 % is not searched at its second batching.
* Step 6 (only with ``constraints.accuracy_tradeoff`` > 0): the codec ranks of the chosen plan
  with the least accuracy loss whose objective is within the trade-off of the plan's
  (:func:`planner.spaces.codec_choice.prefer_accuracy`; at most 64 rank combinations per pipeline).

Then, on the best plan so far:

* Step 7 (before Step 4, against the structures' objectives as found), expert parallelism: pipelines
  whose routed experts are spread (and replicated) over a group of devices (the edge and cloud
  devices, and the cloud devices alone): EPLB's placement on each group, then the speed- and
  memory-aware greedy placement (:mod:`solvers.placement`) on the best group; the better structure's
  batching tuned when it comes within 10 % of the best. A structure whose remote round trips alone
  keep it below the best plan so far is not priced (:func:`_cannot_reach`: a lower bound,
  :func:`planner.cost.passes.round_trip_floor`), nor an EPLB placement that overflows a device
  before it runs (the least it can put there).
* Step 8: the whole model on one device, one of each kind that holds it; for latency and energy
  also ``dp``'s exact chain along the default path; for throughput, per kind of device, a pipeline
  over the fewest twins that hold the model (:func:`_compact_candidates`).
* Step 9 (throughput): the candidates copied over the devices they leave free (several pipelines
  with request shares); then the devices still idle grouped into more pipelines
  (:func:`_fill_leftovers`).
* Step 10 (with a group-gate loss in the instance): the origin's layers that send experts away
  served by the group gate from its local experts instead, all at once and each alone; and (every
  instance) each codec rank at each of :func:`_codec_cuts` of a one-pipeline plan, at its batching;
  then (:func:`_spill_variants`) the last cut moved earlier, the last device's memory freed by
  sending experts it holds on to devices the plan leaves idle.
* Step 11: local search (``local-search``) from the best plan, a fixed seed and a move cap:
  ``lns_moves``, fewer on plans with many placement entries (:data:`STEP11_WORK`), none above
  :data:`STEP11_MAX_ENTRIES`, again from each improvement in rounds twice as long (at most
  :data:`STEP11_ROUND_MOVES` moves, :data:`STEP11_ROUNDS` rounds) until a round finds nothing; on
  small models (:data:`SMALL_PLAN`) rounds of :data:`SMALL_PLAN_MOVES` moves, each from the last
  improvement, until one finds nothing (at most :data:`SMALL_PLAN_ROUNDS`). The rounds share one
  scorer (:mod:`planner.planners.neighbourhood`).

Deterministic: Step 3 stops at a local optimum or after ``max_evaluations`` scored moves per
partner and batching; the time budget is only a safety net: ``time_limit`` when given (it may
raise or lower the budget), else ``time_budget_s`` (default 30 s plus 10 ms per device, so that
Step 5 on a fleet of thousands is not cut short). ``stop_reason`` says when it was hit (then the
plan may depend on the machine's speed; the CLI prints it too).

Complexity per partner and batching: O(L K) for Step 1, O(L^2 E) for Step 2 (every cut scored
exactly, vectorised), O(moves x L E) for Step 3; Step 5: O(L^2 D + L D^2) per DP, a few DPs per
batching (``D`` devices on the path). No randomness; ``seed`` is accepted for the common signature.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from models.chain import evaluate as chain_evaluate
from models.twotier import FAR, NEAR, TwoTierProblem, TwoTierSolution, evaluate, evaluate_many, violations
from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better, is_within
from planner.cost.validator import evaluate_checked
from planner.domain.instance import Instance
from planner.domain.plan import ExpertPlacement, GroupGate, Pipeline, Plan, Stage
from planner.planners.neighbourhood import Scorer, improve, plan_key
from planner.planners.outcome import collector_paused
from planner.spaces.batching import batch_grid, full_batching_sweep, throughput_ceiling
from planner.spaces.chain import TIER_RANK, chain_problem, chain_terms, default_path, plan_from_stages, trim_path
from planner.spaces.codec_choice import prefer_accuracy
from planner.spaces.expert_parallel import expert_parallel_pipeline, layout_round_trip_floor
from planner.spaces.replicas import device_kinds, fill_with_replicas, pipeline_devices, with_request_shares
from planner.spaces.twotier import instance_value, partner_candidates, plan_from_solution, two_tier_problem
from solvers import dp, registry
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
            # The four most popular away experts, the four least popular local ones (ties: index order).
            for cells, sign, bring in ((away, -1.0, True), (home, 1.0, False)):
                order = np.argsort(sign * mass[cells[:, 0], cells[:, 1]], kind="stable")[:4]
                for l, e in cells[order]:
                    near = s.near_items.copy()
                    near[l, e] = bring
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


_SPREAD_CUTS = (3, 8)  # Step 3, continued: cuts this far below / above the best one
_SPREAD_STEPS = 7  # Step 3, continued: amounts sent away, from what memory needs to what the partner holds
_LOOP_ROUNDS = 4  # Step 5: latency-loop rounds per batching
_CLOSE = 0.10  # Step 4 tunes both structures when they are this close
_FAR_BEHIND = 0.30  # a two-tier structure this far behind Step 5's pipeline skips its partner's other batching
_SHALLOW = 3  # Step 5: pipelines at most this deep skip the hill-climb on micro-batches
_STAGE_ROUNDS = 6  # Step 5: hill-climbing moves on the number of micro-batches


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


def _even_order(p: TwoTierProblem) -> tuple[np.ndarray, np.ndarray]:
    """Every expert (cells [n, 2] of (layer, expert)) and an order to send them away evenly: each
    layer's least popular first, then each layer's second least popular, and so on."""
    cells = np.argwhere(p.exists)
    m = _mass(p)[cells[:, 0], cells[:, 1]]
    by_layer = np.lexsort((m, cells[:, 0]))  # per layer, least popular first
    rank = np.empty(len(cells), dtype=np.intp)
    rank[by_layer] = np.arange(len(cells)) - np.searchsorted(cells[by_layer, 0], cells[by_layer, 0])
    return cells, np.lexsort((cells[:, 0], m, rank))


def _spread_away(cm: CostModel, origin: str, best, deadline: float, max_evaluations: int):
    """Step 3, continued, on the best partner and batching only: Step 2 sends away as few experts
    as the origin's memory needs, the least popular first, and Step 3's single-expert moves stop
    at a local optimum near that. A layer's local experts run in parallel with its remote ones, so
    sending experts away evenly over the layers (each layer's least popular first), in amounts
    from what memory needs up to what the partner can hold, at the cuts from ``_SPREAD_CUTS[0]``
    below the best cut to ``_SPREAD_CUTS[1]`` above, may start a better local search (on
    a100-l4-t4-cluster: 323.6 -> 334.9 tokens/s; milp 346.1). Only where the best structure sends
    experts away. ``best`` or a better one."""
    value, far, (b, m), sol = best
    p = two_tier_problem(cm, origin, far, b, m)
    k0 = sol.near_layers
    if not (p.exists[:k0] & ~sol.near_items[:k0]).any():
        return best  # the origin keeps every expert of its layers: memory does not bind there
    _, ranking, deficit = _all_cuts(p)
    cells, order = _even_order(p)
    ks, nears = [], []
    for k in range(max(1, k0 - _SPREAD_CUTS[0]), min(p.num_layers, k0 + _SPREAD_CUTS[1]) + 1):
        if not np.isfinite(deficit[k]):
            continue
        # Bytes the partner can take on top of its own part (the formulation's own memory terms).
        option = int(np.argmin(ranking[k]))
        keep_all = p.exists.copy()
        keep_all[k:] = False
        far_used = float(evaluate(p, TwoTierSolution(k, keep_all, option)).memory[FAR])
        slack, need = float(p.capacity[FAR]) - far_used, max(float(deficit[k]), 0.0)
        if slack <= need:
            continue
        mine = order[cells[order, 0] < k]  # the origin's experts at cut k, in sending order
        freed = np.cumsum(p.item_mem[cells[mine, 0], cells[mine, 1]])
        for away in np.linspace(need, slack, _SPREAD_STEPS)[1:]:
            near = p.exists.copy()
            near[k:] = False
            drop = cells[mine[:int(np.searchsorted(freed, away)) + 1]]
            near[drop[:, 0], drop[:, 1]] = False
            ks.append(k)
            nears.append(near)
    if not ks:
        return best
    ks = np.array(ks)
    options = np.argmin(ranking[ks], axis=1)
    values = evaluate_many(p, ks, np.stack(nears), options)
    i = int(np.argmin(values))
    if not math.isfinite(float(values[i])):
        return best
    s, v, _ = _local_search(p, TwoTierSolution(int(ks[i]), nears[i], int(options[i])), float(values[i]), deadline,
                            max_evaluations)
    return (v, far, (b, m), s) if v < value else best


def _pipeline_stages(instance: Instance, cm: CostModel, path: list[str], b: int, m: int):
    """Step 5 on one batching: (terms, chain stages, depth of the least-bottleneck pipeline) of a pipeline over ``path`` with every expert
    at home and no codec, or None. Throughput: the least bottleneck (one min-max DP), then, while
    the latency loop binds (``R / (b m)`` above the bottleneck), the least latency under the cap
    ``R / (b m)`` (a shorter pipeline with busier stages); each round lowers ``max(B, R / (b m))``."""
    terms = chain_terms(cm, path, b, m)
    if instance.objective == "latency":
        stages = dp.best_stages(chain_problem(terms, "latency"), "latency")
        return terms, stages, len(stages) if stages else 0
    problem = chain_problem(terms, "throughput")
    # Any least-bottleneck solution first; the least-latency one among them only when latency matters.
    stages = dp.best_stages(problem, "bottleneck", tie_break=False)
    if stages is None:
        return None
    conc = terms.concurrency
    depth = len(stages)  # the least-bottleneck pipeline's depth, before the latency loop shortens it
    bn, lat = chain_evaluate(problem, stages)
    slo = instance.constraints.latency_slo_s
    if lat / conc <= bn and slo is not None and lat > slo:
        # The loop does not bind but the SLO does: the least latency at the same bottleneck.
        stages = dp.best_stages(problem, "latency", bn)
        bn, lat = chain_evaluate(problem, stages)
    for _ in range(_LOOP_ROUNDS):
        if lat / conc <= bn:
            break
        other = dp.best_stages(problem, "latency", lat / conc)
        if other is None:
            break
        bn2, lat2 = chain_evaluate(problem, other)
        if max(bn2, lat2 / conc) >= max(bn, lat / conc) * (1 - 1e-12):
            break
        stages, bn, lat = other, bn2, lat2
    return terms, stages, depth


def _codec_cuts(instance: Instance, pipe: Pipeline) -> list[int]:
    """The cuts of ``pipe`` where a codec may pay: the origin's (when it runs the first stage) and
    every cut between two tiers (end / edge / cloud: the slow links of a fleet)."""
    stages = pipe.stages
    tier = [instance.device(s.device).tier for s in stages]
    return [c for c in range(len(stages) - 1)
            if (c == 0 and stages[0].device == instance.workload.origin) or tier[c] != tier[c + 1]]


def _with_codecs(instance: Instance, plan: Plan) -> list[Plan]:
    """``plan`` and each allowed codec rank at one of its :func:`_codec_cuts` (one cut at a time)."""
    pipe = plan.pipelines[0]
    out = [plan]
    for c in _codec_cuts(instance, pipe):
        for r in instance.constraints.codec.ranks:
            ranks = [None] * (len(pipe.stages) - 1)
            ranks[c] = r
            out.append(replace(plan, pipelines=(replace(pipe, codec_ranks=tuple(ranks)),)))
    return out


def _paths(instance: Instance) -> list[list[str]]:
    """Step 5's device orders: ``dp``'s default (origin, then end, edge, cloud devices, larger memory
    first) and the same tiers with smaller memory first (on DeepSeek-V3 over H100 + L40S the second
    is 38 % better: the largest devices end the pipeline with the LM head), each with at most
    ``num_layers`` twins of a kind (:func:`planner.spaces.chain.trim_path`: the same optimum)."""
    first = default_path(instance)
    origin = instance.workload.origin
    rest = sorted((d for d in instance.devices if d.name != origin),
                  key=lambda d: (TIER_RANK.get(d.tier, len(TIER_RANK)), d.memory_bytes, d.name))
    second = [origin] + [d.name for d in rest]
    return [trim_path(instance, p) for p in ([first] if second == first else [first, second])]


def _pipeline_candidate(instance: Instance, cm: CostModel, b: int, m: int, deadline: float):
    """Step 5: the best (objective, plan) over pipelines of several devices, or None. Both paths at
    batching ``(b, m)``; then, on the better path, as many micro-batches as it has stages. After
    ``deadline`` nothing more is tried once a plan is found."""
    if instance.objective == "energy":
        return None
    best, best_path, stage_count = None, None, 0
    for path in _paths(instance):
        if best is not None and time.perf_counter() >= deadline:
            return best
        found = _pipeline_plan(instance, cm, path, b, m)
        if found is not None and (best is None or is_better(instance.objective, found[0], best[0])):
            best, best_path, stage_count = found[:2], path, found[2]
    # Micro-batches: a deep pipeline stays busy with about as many micro-batches as stages, but
    # smaller micro-batches read the weights more often. Hill-climb on m (b = max_batch // m) over
    # the powers of two and the stage count found, from the best so far.
    if best is None or stage_count <= _SHALLOW:
        return best  # a short pipeline: Step 4's batching sweep is enough
    B = instance.workload.max_batch
    grid = sorted({2 ** k for k in range(B.bit_length()) if 2 ** k <= B} | {m} | ({stage_count} if stage_count <= B else set()))
    values = {m: best[0]}
    at = m
    for _ in range(_STAGE_ROUNDS):
        i = grid.index(at)
        steps = [grid[j] for j in (i + 1, i - 1) if 0 <= j < len(grid) and grid[j] not in values]
        if stage_count in grid and stage_count not in values:
            steps.insert(0, stage_count)
        moved = False
        for nm in steps:
            if time.perf_counter() >= deadline:
                return best
            found = _pipeline_plan(instance, cm, best_path, max(1, B // nm), nm)
            values[nm] = found[0] if found is not None else None
            if found is not None and is_better(instance.objective, found[0], best[0]):
                best, at, stage_count, moved = found[:2], nm, found[2], True
                break
        if not moved:
            break
    return best


def _pipeline_plan(instance: Instance, cm: CostModel, path: list[str], b: int, m: int):
    """(objective, plan, depth) of Step 5 on one path and batching, the best codec option, or None;
    depth: the stage count of the plan or of the least-bottleneck pipeline, if deeper."""
    found = _pipeline_stages(instance, cm, path, b, m)
    if found is None or found[1] is None:
        return None
    terms, stages, depth = found
    best = None
    for cand in _with_codecs(instance, plan_from_stages(instance, terms, stages, "route-aware")):
        ev, broken = evaluate_checked(instance, cand, cm)
        if broken:
            continue
        obj = ev.objective(instance.objective)
        if best is None or is_better(instance.objective, obj, best[0]):
            best = (obj, cand, max(len(stages), depth))
    return best


def _tune_batching(instance: Instance, cm: CostModel, plan: Plan, sizes: list[int] | None = None):
    """Step 4 for a fixed structure: the best valid (objective, plan) over the whole batching grid
    (:func:`planner.spaces.batching.full_batching_sweep`) and the plan's own batching, or None."""
    best, obj = full_batching_sweep(instance, cm, plan, sizes=sizes)
    return None if best is None else (obj, best)


def _coarse_sizes(max_batch: int) -> list[int]:
    """Micro-batch sizes for structures that are costly to price (thousands of placed experts):
    the powers of two and the sizes that fill the batch with 1 to 4 micro-batches."""
    return sorted({2 ** k for k in range(max_batch.bit_length()) if 2 ** k <= max_batch}
                  | {max(1, max_batch // m) for m in range(1, 5)})


def _expert_groups(instance: Instance) -> list[list[str]]:
    """Step 7's device groups for expert parallelism: the edge and cloud devices (where EPLB deploys),
    and the cloud devices alone, in ``default_path`` order; distinct, two devices or more."""
    path = default_path(instance)
    groups = [[n for n in path if instance.device(n).tier != "end"], [n for n in path if instance.device(n).tier == "cloud"]]
    out = []
    for g in groups:
        if len(g) >= 2 and g not in out:
            out.append(g)
    return out


_EP_SCREEN = 0.10  # Step 7 tunes an expert-parallel structure's batching when it is this close to the best so far


_OUT_OF_REACH = "its remote round trips alone keep it below the best plan so far"


def _cannot_reach(instance: Instance, cm: CostModel, floor, group: list[str], reference: float | None) -> bool:
    """Whether no batching of an expert-parallel pipeline over ``group`` can reach ``reference``
    (then Step 7 does not price it); ``floor()`` gives its round-trip floor at one token
    (:func:`planner.cost.passes.round_trip_floor`, or from the layout's arrays,
    :func:`planner.spaces.expert_parallel.layout_round_trip_floor`), asked only when needed. A
    decode step takes at least the remote experts' round trips, a request at least ``output - 1``
    steps, and at most ``max_batch`` requests are in flight: throughput <= ``max_batch x output /
    ((output - 1) x floor)``, latency >= ``(output - 1) x floor``. For throughput only when the
    devices outside the group cannot hold the model's weights (so no other pipeline can run beside
    it, Step 9). Energy: never."""
    kind, w = instance.objective, instance.workload
    if reference is None or kind == "energy" or w.output_tokens <= 1:
        return False
    if kind == "throughput":
        m = instance.model
        inside = set(group)
        if sum(d.memory_bytes for d in instance.devices if d.name not in inside) >= m.total_params * m.dtype_bytes:
            return False
    floor = floor() * (w.output_tokens - 1)
    if floor <= 0:
        return False
    if kind == "latency":
        return floor * 1e3 > reference
    return w.max_batch * w.output_tokens / floor < reference


def _screen_plan(instance: Instance, pipe: Pipeline) -> Plan:
    """The plan Step 7 screens an expert-parallel ``pipe`` in: for throughput at one batch of
    ``max_batch``, a screening size anyway (its own 1 x 1 serves the least: every resource's busy
    time per token is largest there, see the batching ceiling; the final tune still tries it), else
    at its own 1 x 1 (the least latency)."""
    if instance.objective == "throughput":
        pipe = replace(pipe, micro_batch_size=instance.workload.max_batch, num_micro_batches=1)
    return Plan((pipe,), instance.name, "route-aware")


def _expert_parallel_candidates(instance: Instance, cm: CostModel, deadline: float,
                                reference: float | None) -> list[tuple[float, Plan]]:
    """Step 7: pipelines whose experts are spread over a group of devices. Every group first gets
    EPLB's placement (cheap), scored at full concurrency (one batch and two micro-batches); the
    best group then also gets the speed- and memory-aware greedy placement, and the better of its
    two structures has its batching tuned when it comes within ``_EP_SCREEN`` of ``reference`` (the
    best objective so far) or beats it."""
    m = instance.model
    kind = instance.objective
    if m.num_experts == 0 or m.num_moe_layers == 0:
        return []
    B = instance.workload.max_batch
    screen_sizes = sorted({B, max(1, B // 2)})

    def screen(group: list[str]):
        """The floor check on a layout's arrays, before its pipeline is built: ``_OUT_OF_REACH`` or None."""
        def check(stages, replicas, shares) -> str | None:
            floor = lambda: layout_round_trip_floor(instance, cm, group, stages, replicas, shares)  # noqa: E731
            return _OUT_OF_REACH if _cannot_reach(instance, cm, floor, group, reference) else None
        return check

    screened = []  # (objective, plan, group)
    for group in _expert_groups(instance):
        if screened and time.perf_counter() >= deadline:
            break
        for redundant in (1, 0):
            pipe, why, _ = expert_parallel_pipeline(instance, cm, group, placement="eplb", redundant=redundant,
                                                    screen=screen(group))
            if why == _OUT_OF_REACH:
                break
            found = None if pipe is None else _tune_batching(instance, cm, _screen_plan(instance, pipe), screen_sizes)
            if found is not None:
                screened.append((*found, group))
                break
    best_group = None
    if screened:
        best_group = min(screened, key=lambda c: -c[0] if kind == "throughput" else c[0])[2]
    for group in ([best_group] if best_group else _expert_groups(instance)[:1]):
        pipe, _, _ = expert_parallel_pipeline(instance, cm, group, placement="greedy-placement", screen=screen(group))
        found = None if pipe is None else _tune_batching(instance, cm, _screen_plan(instance, pipe), screen_sizes)
        if found is not None:
            screened.append((*found, group))
    if not screened:
        return []
    out = [(obj, plan) for obj, plan, _ in screened]
    obj, plan, _ = min(screened, key=lambda c: -c[0] if kind == "throughput" else c[0])
    if reference is None or is_within(kind, obj, reference, _EP_SCREEN):
        sizes = _coarse_sizes(B) if len(plan.pipelines[0].expert_placement) > 512 else None
        tuned = _tune_batching(instance, cm, plan, sizes)
        if tuned is not None:
            out.append(tuned)
    return out


def _single_device_candidates(instance: Instance, cm: CostModel) -> list[tuple[float, Plan]]:
    """Step 8: the whole model on one device, one device of each kind that can hold it."""
    seen, out = set(), []
    m = instance.model
    need = m.total_params * m.dtype_bytes
    for d in instance.devices:
        key = (cm.times.hardware_of(d.name), d.memory_bytes)
        if d.memory_bytes < need or key in seen:
            continue
        seen.add(key)
        plan = Plan((Pipeline((Stage(d.name, 0, m.num_layers),)),), instance.name, "route-aware")
        found = _tune_batching(instance, cm, plan)
        if found is not None:
            out.append(found)
    return out


def _chain_candidates(instance: Instance, cm: CostModel) -> list[tuple[float, Plan]]:
    """Step 8, latency and energy: ``dp``'s plan, exact over its chain of stages along the default
    path (Step 5's DPs aim at throughput's bottleneck and the latency loop)."""
    found = registry.get("dp", problem="instance").func(instance, cost_model=cm)
    if found.solution is None:
        return []
    plan = replace(found.solution, solver="route-aware")
    ev, bad = evaluate_checked(instance, plan, cm)
    return [] if bad else [(ev.objective(instance.objective), plan)]


_COMPACT_EXTRA = 2  # Step 8, continued: twins tried beyond the fewest whose memory holds the weights


def _compact_candidates(instance: Instance, cm: CostModel) -> list[tuple[float, Plan]]:
    """Step 8, continued (throughput): per kind of device other than the origin (same hardware,
    memory and power) with twins enough to hold the model, a pipeline over the fewest of them that
    hold it (Step 5's DPs on that path at one batch and at as many micro-batches as twins, then the
    whole batching grid), for Step 9 to copy over the others or to fill what other copies leave
    (none when no kind has twins for two copies):
    Step 5's pipeline spans as many devices as lower its bottleneck, and its latency loop then binds
    (Mixtral-8x7B over 12 H100: one 12-stage pipeline 652.5 tokens/s, six two-H100 copies 1922.5).
    Where the fewest do not fit (KV cache, workspace), up to ``_COMPACT_EXTRA`` more are tried."""
    m = instance.model
    weights = m.total_params * m.dtype_bytes
    origin = instance.workload.origin
    out = []
    kinds = [(names, max(2, math.ceil(weights / instance.device(names[0]).memory_bytes)))  # one device alone: Step 8
             for names in device_kinds(cm, [d.name for d in instance.devices if d.name != origin]).values()]
    if not any(len(names) >= 2 * least for names, least in kinds):
        return []  # no kind holds two copies: none leaves another kind's devices free for one
    for names, least in kinds:
        for k in range(least, min(least + _COMPACT_EXTRA, len(names)) + 1):
            found = _group_pipeline(instance, cm, names[:k])
            if found is not None:
                out.append(found)
                break
    return out


def _group_pipeline(instance: Instance, cm: CostModel, path: list[str]) -> tuple[float, Plan] | None:
    """(objective, one-pipeline plan) over ``path``, or None: Step 5's DPs at one batch and at as
    many micro-batches as devices, the better one's batching then swept over the whole grid."""
    B = instance.workload.max_batch
    found = None
    for b, mb in sorted({(B, 1), (max(1, B // len(path)), min(len(path), B))}, reverse=True):
        f = _pipeline_plan(instance, cm, path, b, mb)
        if f is not None and (found is None or f[0] > found[0]):
            found = f[:2]
    if found is None:
        return None
    tuned = _tune_batching(instance, cm, found[1])
    return tuned if tuned is not None and tuned[0] > found[0] else found


def _with_replicas(instance: Instance, cm: CostModel, candidates: list[tuple[float, Plan]]):
    """Step 9 (throughput): candidates copied over the devices they leave free (several pipelines),
    taken best first, and again most throughput per device first (a deep pipeline over many GPUs
    may serve less than as many one-GPU copies); the better fill, or None."""
    singles = [c for c in candidates if len(c[1].pipelines) == 1]
    by_value = sorted(singles, key=lambda c: -c[0])
    by_device = sorted(singles, key=lambda c: -c[0] / len(pipeline_devices(c[1].pipelines[0])))
    best = None
    for order in (by_value, by_device):
        plan = fill_with_replicas(instance, cm, [p for _, p in order])
        if plan is None:
            continue
        ev, bad = evaluate_checked(instance, plan, cm)
        if not bad and (best is None or ev.objective("throughput") > best[0]):
            best = (ev.objective("throughput"), plan)
        if by_device == by_value:
            break
    return best


def _fill_leftovers(instance: Instance, cm: CostModel, plan: Plan) -> tuple[float, Plan] | None:
    """Step 9, continued: the devices a plan leaves idle (but the origin), largest memory first, in
    groups that just hold the model's weights, the KV cache of ``max_batch`` sequences and a
    workspace per device (up to ``_COMPACT_EXTRA`` devices more where its DPs find no
    pipeline), each group one more pipeline (:func:`_group_pipeline`, the group in
    ``default_path`` order); request shares in proportion to each pipeline's requests/s alone, as
    Step 9's. The plan with them when valid and better, else None (Mixtral-8x7B over 40 devices:
    H100 pairs and L40S triples leave an H100 and two L40S)."""
    m, w = instance.model, instance.workload
    weights = m.total_params * m.dtype_bytes
    kv = m.kv_bytes_per_token_per_layer * m.num_layers * w.max_batch * (w.prompt_tokens + w.output_tokens)
    used = {d for p in plan.pipelines for d in pipeline_devices(p)}
    order = {name: i for i, name in enumerate(default_path(instance))}
    free = [d for d in sorted(instance.devices, key=lambda d: (-d.memory_bytes, order[d.name]))
            if d.name not in used and d.name != w.origin]
    extra, start = [], 0
    while start < len(free):
        held, end = 0.0, start
        while end < len(free) and held < weights + kv + cm.workspace_bytes * (end - start):
            held += free[end].memory_bytes
            end += 1
        if held < weights + kv + cm.workspace_bytes * (end - start):
            break  # what is left cannot hold another copy
        pipe = None
        for more in range(_COMPACT_EXTRA + 1):
            if end + more > len(free):
                break
            found = _group_pipeline(instance, cm, sorted((d.name for d in free[start:end + more]), key=order.__getitem__))
            if found is not None:
                pipe = found[1].pipelines[0]
                end += more
                break
        if pipe is None:
            break
        extra.append(pipe)
        start = end
    if not extra:
        return None
    pipes = [replace(p, request_share=1.0) for p in plan.pipelines] + extra
    rates = [cm.evaluate(Plan((p,), instance.name, plan.solver)).requests_per_s for p in pipes]
    out = with_request_shares(instance, pipes, rates, plan.solver)
    if out is None:
        return None
    ev, bad = evaluate_checked(instance, out, cm)
    if bad or ev.objective("throughput") <= cm.evaluate(plan).objective("throughput"):
        return None
    return ev.objective("throughput"), out


def _gate_variants(instance: Instance, cm: CostModel, plan: Plan) -> list[tuple[float, Plan]]:
    """Step 10 (EC2MoE's group gate): where the origin's stage sends experts of its layers away,
    variants that serve those layers from the origin's local experts instead (the away experts
    dropped), every such layer at once and each alone; the valid ones, scored."""
    if not instance.constraints.group_gate_loss.known or len(plan.pipelines) != 1:
        return []
    pipe = plan.pipelines[0]
    origin = instance.workload.origin
    stage = next((st for st in pipe.stages if st.device == origin), None)
    if stage is None:
        return []
    away = sorted({e.layer for e in pipe.expert_placement if stage.first_layer <= e.layer < stage.end_layer
                   and origin not in e.devices and e.devices})
    out = []
    for layers in ([tuple(away)] if len(away) > 1 else []) + [(layer,) for layer in away]:
        placement = tuple(ExpertPlacement(e.layer, e.expert, (), ()) if e.layer in layers and origin not in e.devices else e
                          for e in pipe.expert_placement)
        cand = replace(plan, pipelines=(replace(pipe, expert_placement=placement,
                                                group_gate=(GroupGate(origin, tuple(layers)),)),))
        ev, bad = evaluate_checked(instance, cand, cm)
        if not bad:
            out.append((ev.objective(instance.objective), cand))
    return out


def _codec_variants(instance: Instance, cm: CostModel, plan: Plan) -> list[tuple[float, Plan]]:
    """Step 10, continued: the one-pipeline ``plan`` with each allowed codec rank at one of its
    :func:`_codec_cuts`, its batching kept (Step 5 tried them at its own batching); the valid ones, scored."""
    if len(plan.pipelines) != 1 or len(plan.pipelines[0].stages) < 2:
        return []
    out = []
    for cand in _with_codecs(instance, plan)[1:]:
        if cand.pipelines[0].codec_ranks == plan.pipelines[0].codec_ranks:
            continue
        ev, bad = evaluate_checked(instance, cand, cm)
        if not bad:
            out.append((ev.objective(instance.objective), cand))
    return out


_SPILL_PROBES = 8  # Step 10, continued: cuts probed over the range before refining around the best


def _spill_variants(instance: Instance, cm: CostModel, plan: Plan) -> list[tuple[float, Plan]]:
    """Step 10, continued (a one-pipeline plan whose last stage's device also holds experts of the
    layers before it, and devices the plan leaves idle): the last cut moved earlier, the memory the
    last device then lacks freed by sending experts it holds on to the idle devices (nearest to the
    layer's stage device first, as many as each holds): the least popular of the earlier layers'
    first, then of its own layers'. The partner of a two-tier plan is often full; idle GPUs beside it
    let it run more layers (a100-l4-t4-cluster: 345.3 -> 382.0 tokens/s before Step 11). The cuts:
    :data:`_SPILL_PROBES` spread over the range, then each cut between the best probe's
    neighbours. The valid ones, scored."""
    if len(plan.pipelines) != 1 or len(plan.pipelines[0].stages) < 2 or not plan.pipelines[0].expert_placement:
        return []
    pipe = plan.pipelines[0]
    prev, last = pipe.stages[-2], pipe.stages[-1]
    used = set(pipe.devices) | pipe.expert_devices()
    component = instance.component_of  # only idle devices the network connects to the last stage's
    idle = [x for x in instance.devices if x.name not in used and component.get(x.name) == component.get(last.device)]
    if not idle or not any(e.devices == (last.device,) and e.layer < last.first_layer for e in pipe.expert_placement):
        return []
    cuts = list(range(last.first_layer - 1, prev.first_layer, -1))  # the last stage grows, one layer at a time
    if not cuts:
        return []
    scored: dict[int, tuple[float, Plan] | None] = {}

    def at(cut: int):
        if cut not in scored:
            scored[cut] = _spilled(instance, cm, plan, cut, idle)
        return scored[cut]

    step = max(1, -(-len(cuts) // _SPILL_PROBES))
    probes = cuts[::step]
    for cut in probes:
        at(cut)
    found = [(v[0], c) for c, v in scored.items() if v is not None]
    if found:
        best_cut = min(found, key=lambda f: (-f[0] if instance.objective == "throughput" else f[0], -f[1]))[1]
        for cut in range(best_cut - step + 1, best_cut + step):
            if cut in cuts:
                at(cut)
    return [v for _, v in sorted(scored.items(), reverse=True) if v is not None]


def _spilled(instance: Instance, cm: CostModel, plan: Plan, cut: int, idle: list) -> tuple[float, Plan] | None:
    """:func:`_spill_variants`'s plan for one cut, scored, or None (not enough idle memory, or invalid)."""
    pipe = plan.pipelines[0]
    prev, last = pipe.stages[-2], pipe.stages[-1]
    d = last.device
    stages = (*pipe.stages[:-2], Stage(prev.device, prev.first_layer, cut), Stage(d, cut, last.end_layer))
    kept = tuple(e for e in pipe.expert_placement if not (e.layer >= cut and e.devices == (d,)))
    moved = replace(pipe, stages=stages, expert_placement=kept)
    over = cm.memory_bytes(replace(plan, pipelines=(moved,))).get(d, 0.0) - instance.device(d).memory_bytes
    if over <= 0:
        return None  # the plain cut: Steps 1-5 priced it
    net = cm.network

    def nearest(home: str) -> list:
        return sorted(idle, key=lambda x: (net.route_terms(home, x.name)[0] + net.route_terms(x.name, home)[0],
                                           -x.memory_bytes, x.name))

    room = {x.name: int(x.memory_bytes // max(cm.expert_bytes, 1.0)) for x in idle}
    placed = {(e.layer, e.expert) for e in kept}
    own = [(layer, e) for layer in range(cut, last.end_layer) if instance.model.is_moe_layer(layer)
           for e in range(instance.model.num_experts) if (layer, e) not in placed]
    held = [(e.layer, e.expert) for e in kept if e.devices == (d,)]
    sent: dict = {}
    for group, home in ((held, prev.device), (own, d)):
        order = nearest(home)
        for key in sorted(group, key=lambda k: (cm.Q[k[0], k[1]], k)):
            if over <= 0:
                break
            to = next((x.name for x in order if room[x.name] > 0), None)
            if to is None:
                return None
            room[to] -= 1
            sent[key] = to
            over -= cm.expert_bytes
    if over > 0:
        return None
    placement = tuple(ExpertPlacement(e.layer, e.expert, (sent[(e.layer, e.expert)],), (1.0,))
                      if (e.layer, e.expert) in sent else e for e in kept)
    placement += tuple(ExpertPlacement(layer, e, (sent[(layer, e)],), (1.0,)) for layer, e in own if (layer, e) in sent)
    cand = replace(plan, pipelines=(replace(moved, expert_placement=tuple(sorted(placement, key=lambda e: (e.layer, e.expert)))),))
    ev, bad = evaluate_checked(instance, cand, cm)
    return None if bad else (ev.objective(instance.objective), cand)


def _two_tier_as_found(instance: Instance, cm: CostModel, best):
    """The two-tier structure ``best`` at the batching it was found at: (objective, plan) or None."""
    _, far, (b, m), s = best
    plan = plan_from_solution(instance, instance.workload.origin, far, b, m, s, "route-aware")
    ev, broken = evaluate_checked(instance, plan, cm)
    return None if broken else (ev.objective(instance.objective), plan)


def _two_tier_batching(instance: Instance, cm: CostModel, best, b0: int, m0: int):
    """Step 4 for the two-tier structure ``best`` = (value, partner, batching, solution)."""
    origin = instance.workload.origin
    _, far, _, s = best
    plan = plan_from_solution(instance, origin, far, b0, m0, s, "route-aware")
    if not plan.pipelines[0].expert_placement:
        return _tune_batching(instance, cm, plan)
    # With experts away from their layer's stage the two-tier equations (equal to the cost model,
    # vectorised) are the cheaper scorer.
    best_batch, best_value = None, math.inf
    for b, m in batch_grid(instance.workload.max_batch, 2):
        value = _value(two_tier_problem(cm, origin, far, b, m), s)
        if value < best_value:
            best_batch, best_value = (b, m), value
    if best_batch is None:
        return None
    plan = plan_from_solution(instance, origin, far, *best_batch, s, "route-aware")
    ev, broken = evaluate_checked(instance, plan, cm)
    return None if broken else (ev.objective(instance.objective), plan)


# Step 11 scores at most this many placement entries in all (a move re-scores the whole plan), and
# makes at least 4 moves: 24 on a plan of 2,000 entries. A plan of more than STEP11_MAX_ENTRIES
# (DeepSeek-V3 over a GPU group: 15,000) skips it: there 4 moves cost 50 ms of a 330 ms solve and
# gained nothing on the shipped and scale-suite instances (local-search can follow, on its own clock).
STEP11_WORK = 50_000
STEP11_MAX_ENTRIES = 10_000
# A plan of a model this small (layers, and placement entries) is scored in about 0.1 ms: Step 11
# then makes at least SMALL_PLAN_MOVES moves (24 missed a 35 % better energy plan that 100 found on
# a 2-layer model). Real models have 16 layers or more and keep ``lns_moves``.
SMALL_PLAN = (8, 64)
SMALL_PLAN_MOVES = 200
SMALL_PLAN_ROUNDS = 6  # rounds of SMALL_PLAN_MOVES, each from the last improvement, while one improves
# Other plans: rounds from the last improvement while one improves, at most STEP11_ROUNDS, the first
# of the move cap and each after an improving one twice as long (at most STEP11_ROUND_MOVES, and
# within STEP11_WORK): a plan that local moves improve gets searched further, one they do not (the
# first round finds nothing) costs what it did.
STEP11_ROUNDS = 12
STEP11_ROUND_MOVES = 384


def _step11_moves(plan: Plan, lns_moves: int, num_layers: int) -> int:
    """Step 11's move cap: ``lns_moves``; more on small plans, fewer on plans whose every score is
    costly (a count of work, not a clock, so that the plan does not depend on the machine)."""
    if not lns_moves:
        return 0
    entries = sum(len(p.expert_placement) for p in plan.pipelines)
    if num_layers <= SMALL_PLAN[0] and entries <= SMALL_PLAN[1]:
        return max(lns_moves, SMALL_PLAN_MOVES)
    if entries > STEP11_MAX_ENTRIES:
        return 0
    return min(lns_moves, _work_cap(plan))


def _work_cap(plan: Plan) -> int:
    """The most moves Step 11 makes in one round on ``plan``: :data:`STEP11_WORK` placement entries
    scored in all, at least 4."""
    return max(4, STEP11_WORK // max(sum(len(p.expert_placement) for p in plan.pipelines), 1))


_BUDGET_STOP = "time budget (the plan may depend on machine speed; raise it with time_limit)"


@register("route-aware", kind="heuristic", problem="instance")
@collector_paused
def route_aware(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None,
                time_budget_s: float | None = None, max_partners: int = 4, max_evaluations: int = 200, lns_moves: int = 24,
                replicas: bool = True, **_) -> Result:
    """EC2MoE-style route-aware scheduler: cut, local experts, codec rank, batching (heuristic)."""
    t0 = time.perf_counter()
    if time_budget_s is None:
        time_budget_s = 30.0 + 0.01 * len(instance.devices)
    # ``time_limit`` is the budget when given (it may raise or lower the default safety net).
    budget = time_budget_s if time_limit is None else float(time_limit)
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
    weights = instance.model.total_params * instance.model.dtype_bytes
    here = instance.device(origin).memory_bytes
    stopped = []  # non-empty once a step was skipped or cut short for the budget

    def out_of_time() -> bool:
        if time.perf_counter() >= deadline:
            stopped.append(True)
            return True
        return False

    # Step 5 first when there are more than two devices: a pipeline far ahead of a partner's first
    # two-tier structure spares that partner's other batching.
    piped = _pipeline_candidate(instance, cm, b0, m0, deadline) if len(instance.devices) > 2 else None
    for far in _partners(instance, cm)[:max_partners]:
        if here + instance.device(far).memory_bytes < weights:
            continue  # the pair cannot hold the weights: no cut can fit
        if (best is not None or piped is not None) and out_of_time():
            budget_hit = True
            break
        for b, m in batchings:
            if (best is not None or piped is not None) and out_of_time():
                budget_hit = True
                break
            p = two_tier_problem(cm, origin, far, b, m)
            found = _search(p, deadline, max_evaluations)
            budget_hit = budget_hit or (found is not None and found[2])
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], far, (b, m), found[1])
            if found is not None and piped is not None and not is_within(
                    instance.objective, instance_value(instance, found[0]), piped[0], _FAR_BEHIND):
                break
    if best is not None and best[3].near_layers > 0 and not out_of_time():
        best = _spread_away(cm, origin, best, deadline, max_evaluations)  # Step 3, continued
    elapsed = lambda: time.perf_counter() - t0  # noqa: E731
    if best is None and piped is None and len(instance.devices) <= 2:
        piped = _pipeline_candidate(instance, cm, b0, m0, deadline)
    # Step 4 (batching) for the better structure, and for both when they are within 10 %. Out of
    # time, the structures keep the batching they were found at.
    tune = not out_of_time()
    budget_hit = budget_hit or not tune
    two_tier_value = instance_value(instance, best[0]) if best is not None else None
    use_pipe = piped is not None and (two_tier_value is None or is_within(instance.objective, piped[0], two_tier_value, _CLOSE))
    use_two_tier = best is not None and (piped is None or is_within(instance.objective, two_tier_value, piped[0], _CLOSE))
    kind = instance.objective
    # Step 7 (expert parallelism) before Step 4, against the structures' objectives as found; a
    # structure whose batching ceiling stays below its best plan is then not tuned (throughput).
    expert_parallel = []
    if tune:
        found_values = ([two_tier_value] if use_two_tier else []) + ([piped[0]] if use_pipe else [])
        reference = (max(found_values) if kind == "throughput" else min(found_values)) if found_values else None
        expert_parallel = _expert_parallel_candidates(instance, cm, deadline, reference)  # Step 7
        out_of_time()  # records a Step 7 the deadline cut short
    to_beat = max((c[0] for c in expert_parallel), default=None) if kind == "throughput" else None

    def worth_tuning(plan: Plan) -> bool:
        """Whether some batching of ``plan``'s structure may beat Step 7's best plan."""
        return tune and (to_beat is None or throughput_ceiling(instance, cm, plan) >= to_beat * (1 - 1e-9))

    chosen = None
    if use_two_tier:
        chosen = None if tune and to_beat is None else _two_tier_as_found(instance, cm, best)
        if tune and (chosen is None or worth_tuning(chosen[1])):
            chosen = _two_tier_batching(instance, cm, best, b0, m0)
    if use_pipe:
        found = _tune_batching(instance, cm, piped[1]) if worth_tuning(piped[1]) else piped
        if found is not None and (chosen is None or is_better(instance.objective, found[0], chosen[0])):
            chosen = found
    candidates = [chosen] if chosen is not None else []
    if chosen is not None and chosen[1].pipelines[0].expert_placement and worth_tuning(chosen[1]):
        # Step 4 over the whole grid for an offloading structure (the two-tier equations tried two shapes).
        swept = _tune_batching(instance, cm, chosen[1])
        if swept is not None and is_better(kind, swept[0], chosen[0]):
            candidates = [swept]
    candidates += expert_parallel
    if not out_of_time():
        candidates += _single_device_candidates(instance, cm)                   # Step 8
        if kind != "throughput":
            candidates += _chain_candidates(instance, cm)                       # Step 8, continued
    if replicas and kind == "throughput" and not out_of_time():
        candidates += _compact_candidates(instance, cm)                         # Step 8, continued
    if replicas and kind == "throughput" and candidates and not out_of_time():
        replicated = _with_replicas(instance, cm, candidates)                  # Step 9
        if replicated is not None:
            candidates.append(replicated)
            filled = _fill_leftovers(instance, cm, replicated[1])              # Step 9, continued
            if filled is not None:
                candidates.append(filled)
    if not candidates:
        return Result(Status.INFEASIBLE, "route-aware", sense=sense, solve_time_s=elapsed(),
                      message="infeasible: no cut between the origin and one partner, no pipeline over the fleet, no "
                              "expert-parallel group and no single device fits memory, SLOs and the accuracy budget",
                      stop_reason="no candidate")
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i][0] if kind == "throughput" else candidates[i][0], i))
    best_obj, best_plan = candidates[order[0]]
    for found in _gate_variants(instance, cm, best_plan) + _codec_variants(instance, cm, best_plan):  # Step 10
        if is_better(kind, found[0], best_obj):
            best_obj, best_plan = found
    for found in [] if out_of_time() else _spill_variants(instance, cm, best_plan):  # Step 10, continued
        if is_better(kind, found[0], best_obj):
            best_obj, best_plan = found
    moves = _step11_moves(best_plan, lns_moves, instance.model.num_layers)
    small = moves > lns_moves
    # Step 11's scores are shared by its rounds; the start is known valid, at its objective.
    scorer = Scorer(instance, cm)
    scorer.cache[plan_key(best_plan)] = (best_obj, "")
    for _ in range(SMALL_PLAN_ROUNDS if small else STEP11_ROUNDS):
        if not moves or out_of_time():
            break
        # Step 11: a deterministic local improvement (a fixed number of moves, a fixed seed); on a
        # small model again from each improved plan until a round finds nothing, so that
        # local-search with this seed and at most as many moves cannot improve the plan returned.
        improved = improve(instance, best_plan, cost_model=cm, max_moves=moves, seed=seed, scorer=scorer)
        if not is_better(kind, improved.objective, best_obj):
            break
        best_obj, best_plan = improved.objective, improved.plan
        if best_plan.solver != "route-aware":
            best_plan = replace(best_plan, solver="route-aware")
        if not small:  # an improving round earns a longer one, within the work cap
            moves = min(2 * moves, STEP11_ROUND_MOVES, _work_cap(best_plan))
    if instance.constraints.accuracy_tradeoff > 0:
        # Step 6: the most accurate codec ranks within the trade-off of the plan's objective.
        def score(plan: Plan) -> float | None:
            ev, bad = evaluate_checked(instance, plan, cm)
            return None if ev is None or bad else float(ev.objective(instance.objective))

        best_plan, best_obj = prefer_accuracy(best_plan, instance, score)
    return Result(Status.FEASIBLE, "route-aware", objective=best_obj, sense=sense, solve_time_s=elapsed(),
                  solution=best_plan,
                  stop_reason=_BUDGET_STOP if budget_hit or stopped else "local optimum or move cap")
