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

import numpy as np

from models.twotier import FAR, NEAR, TwoTierProblem, TwoTierSolution, evaluate, violations
from planner.solve.baselines import batch_grid
from planner.cost.costmodel import TOKEN_ID_BYTES, CostModel, op_time_s
from planner.domain.instance import Instance
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
from solvers.registry import register
from solvers.result import Result, Status


def _route_terms(cm: CostModel, a: str, b: str) -> tuple[float, np.ndarray]:
    """(sum of one-way latencies, 1 / bandwidth of each hop) of the route from ``a`` to ``b``."""
    hops = cm.route_hops(a, b)
    return sum(one_way for _, _, one_way in hops), np.array([1.0 / bw for _, bw, _ in hops])


def two_tier_problem(cm: CostModel, near: str, far: str, micro_batch: int, micro_batches: int) -> TwoTierProblem:
    """The cost model's terms for a split of the model between ``near`` (the origin) and ``far``."""
    inst = cm.instance
    m = cm.model
    L, E = m.num_layers, max(m.num_experts, 1)
    b = float(micro_batch)
    o = cm.output
    # Phase 0: prefill of one request; phase 1: one decode step of a micro-batch.
    phases = [(cm.prompt, cm.prompt / 2.0, True, 1.0), (b, cm.decode_context, False, b)]
    busy_w = np.array([1.0, (o - 1.0) / b])
    lat_w = np.array([1.0, o - 1.0])
    P = len(phases)
    devs = (near, far)
    one_way, inv_bw = _route_terms(cm, near, far)
    J = len(inv_bw)
    hb = m.hidden_bytes_per_token

    exists = np.zeros((L, E), dtype=bool)
    exists[m.moe_layers] = True
    Q = cm.Q  # selection probability of each expert [L, E]; zero rows for dense layers
    ne_lat = np.zeros((2, L, P))
    item_lat = np.zeros((2, L, E, P))
    for ph, (tokens, ctx, prefill, _) in enumerate(phases):
        for side in (NEAR, FAR):
            # The cost model's own (cached) tables: the non-expert block of each layer, each expert.
            ne_lat[side, :, ph] = cm._layer_times(devs[side], tokens, ctx, prefill)[0]
            item_lat[side, :, :, ph] = cm._expert_matrix(devs[side], tokens)
    sent = Q[:, :, None] * np.array([ph[0] for ph in phases])[None, None, :] * hb  # [L, E, P] bytes each way
    item_link_lat = 2.0 * sent * inv_bw.sum()
    item_link_busy = 2.0 * inv_bw[:, None, None] * np.einsum("lep,p->le", sent, busy_w)[None]
    ne_busy = np.einsum("slp,p->sl", ne_lat, busy_w)
    item_busy = np.einsum("slep,p->sle", item_lat, busy_w)

    ends_lat = np.zeros((2, 2, P))
    for ph, (tokens, _, prefill, _) in enumerate(phases):
        lm_tokens = 1.0 if prefill else tokens
        for side in (NEAR, FAR):
            dev = cm.devices[devs[side]]
            ends_lat[0, side, ph] = float(op_time_s(dev, 0.0, tokens * hb, cm.db))
            ends_lat[1, side, ph] = float(op_time_s(dev, lm_tokens * 2.0 * m.lm_head_params, m.lm_head_params * cm.db, cm.db))
    ends_busy = np.einsum("esp,p->es", ends_lat, busy_w)

    codec = inst.constraints.codec
    ranks: list[int | None] = [None, *codec.ranks]
    K = len(ranks)
    cut_lat = np.zeros((K, P))
    cut_busy = np.zeros((2 + J, K))
    cut_mem = np.zeros((2, K))
    cut_loss = np.array([codec.loss(r) for r in ranks])
    for k, r in enumerate(ranks):
        per_token = hb if r is None else r * cm.db
        for ph, (tokens, _, _, _) in enumerate(phases):
            nbytes = tokens * per_token
            t_enc = t_dec = 0.0
            if r is not None:
                flops = tokens * 2.0 * m.hidden_size * r
                t_enc = float(op_time_s(cm.devices[near], flops, m.hidden_size * r * cm.db, cm.db))
                t_dec = float(op_time_s(cm.devices[far], flops, m.hidden_size * r * cm.db, cm.db))
            cut_lat[k, ph] = one_way + nbytes * inv_bw.sum() + t_enc + t_dec
            cut_busy[NEAR, k] += busy_w[ph] * t_enc
            cut_busy[FAR, k] += busy_w[ph] * t_dec
            cut_busy[2:, k] += busy_w[ph] * nbytes * inv_bw
        if r is not None:
            cut_mem[:, k] = m.hidden_size * r * cm.db

    entry_lat = np.array([one_way + tok * TOKEN_ID_BYTES * inv_bw.sum() for tok, _, _, _ in phases])
    exit_tokens = [1.0, b]
    exit_lat = np.array([one_way + t * TOKEN_ID_BYTES * inv_bw.sum() for t in exit_tokens])
    entry_busy = sum(busy_w[ph] * phases[ph][0] * TOKEN_ID_BYTES * inv_bw for ph in range(P))
    exit_busy = sum(busy_w[ph] * exit_tokens[ph] * TOKEN_ID_BYTES * inv_bw for ph in range(P))

    seqs = micro_batch * micro_batches
    ctx = cm.prompt + cm.output
    kv = np.array([seqs * ctx * m.kv_bytes_per_token_per_layer] * L)
    ne_mem = np.stack([cm.nonexpert_bytes + kv] * 2)
    item_mem = np.where(exists, cm.expert_bytes, 0.0)
    ends_mem = np.array([[m.embedding_params * cm.db] * 2, [m.lm_head_params * cm.db] * 2])
    workspace = cm.workspace_bytes
    c = inst.constraints
    return TwoTierProblem(
        ne_lat=ne_lat, ne_busy=ne_busy, item_lat=item_lat, item_busy=item_busy, item_link_lat=item_link_lat,
        item_link_busy=item_link_busy, fixed_lat=np.full(P, 2.0 * one_way), allowed=exists.copy(), exists=exists,
        ends_lat=ends_lat, ends_busy=ends_busy, cut_lat=cut_lat, cut_busy=cut_busy, cut_loss=cut_loss, cut_mem=cut_mem,
        entry_lat=entry_lat, exit_lat=exit_lat, entry_busy=np.asarray(entry_busy), exit_busy=np.asarray(exit_busy),
        ne_mem=ne_mem, item_mem=item_mem, ends_mem=ends_mem,
        head_tied_mem=m.lm_head_params * cm.db if m.tie_word_embeddings else 0.0,
        workspace_mem=np.array([workspace, workspace]),
        capacity=np.array([cm.devices[near].memory_bytes, cm.devices[far].memory_bytes]),
        lat_weight=lat_w, concurrency=float(seqs),
        power_w=np.array([cm.devices[d].power_w for d in devs]), idle_w=np.array([cm.devices[d].idle_power_w for d in devs]),
        loss_budget=c.accuracy_loss_budget, objective=inst.objective,
        max_request_latency=c.latency_slo_s, max_phase_latency=(c.ttft_slo_s, c.tpot_slo_s),
    )


def plan_from_solution(instance: Instance, near: str, far: str, micro_batch: int, micro_batches: int,
                       sol: TwoTierSolution, solver: str) -> Plan:
    m = instance.model
    L, k = m.num_layers, sol.near_layers
    ranks = [None, *instance.constraints.codec.ranks]
    stages, codec = [], ()
    if k > 0:
        stages.append(Stage(near, 0, k))
    if k < L:
        stages.append(Stage(far, k, L))
    if len(stages) == 2:
        codec = (ranks[sol.option],)
    placement = tuple(
        ExpertPlacement(l, e, (far,), (1.0,))
        for l in range(min(k, L)) if m.is_moe_layer(l) for e in range(m.num_experts) if not sol.near_items[l, e]
    )
    return Plan((Pipeline(tuple(stages), codec, micro_batch, micro_batches, 1.0, placement),), instance.name, solver)


def instance_value(instance: Instance, value_period_latency_energy: float) -> float:
    """TwoTier objective (seconds per request, seconds, joules per request) -> instance objective units."""
    o = float(instance.workload.output_tokens)
    v = value_period_latency_energy
    if instance.objective == "throughput":
        return o / v if v > 0 else math.inf
    if instance.objective == "latency":
        return v * 1e3
    return v / o


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


def solution_from_plan(instance: Instance, plan: Plan) -> tuple[str, int, int, TwoTierSolution] | None:
    """(partner, micro-batch, micro-batches, solution) of a plan that lies in the joint space
    (one pipeline: the origin's prefix and/or one partner's suffix, experts of the origin's layers
    on the origin or the partner), or None; used as a warm start."""
    m, origin = instance.model, instance.workload.origin
    if len(plan.pipelines) != 1:
        return None
    pipe = plan.pipelines[0]
    devs = pipe.devices
    if not 1 <= len(devs) <= 2 or (len(devs) == 2 and devs[0] != origin):
        return None
    far = devs[-1] if devs[-1] != origin else None
    if far is None:
        others = [d.name for d in instance.devices if d.name != origin]
        if not others:
            return None
        far = others[0]
    k = pipe.stages[0].end_layer if devs[0] == origin else 0
    near = np.zeros((m.num_layers, max(m.num_experts, 1)), dtype=bool)
    for layer in m.moe_layers:
        if layer < k:
            near[layer, : m.num_experts] = True
    for e in pipe.expert_placement:
        if e.layer >= k or tuple(e.devices) != (far,):
            return None
        near[e.layer, e.expert] = False
    ranks = [None, *instance.constraints.codec.ranks]
    rank = pipe.codec_ranks[0] if pipe.codec_ranks else None
    if rank not in ranks:
        return None
    return far, pipe.micro_batch_size, pipe.num_micro_batches, TwoTierSolution(k, near, ranks.index(rank))


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


def solve_joint(instance: Instance, backend: str, *, time_limit=None, seed=0, rel_gap=None, threads=None,
                initial_solution: Plan | None = None, cost_model: CostModel | None = None, progress=None,
                solver_name: str = "milp", export: str | None = None, explain: bool = True, **_) -> Result:
    t0 = time.perf_counter()
    cm = cost_model or CostModel(instance)
    origin = instance.workload.origin
    sense = "max" if instance.objective == "throughput" else "min"
    deadline = None if time_limit is None else t0 + time_limit
    best = None  # (value, plan, (partner, micro-batch, micro-batches))
    bound = math.inf  # lower bound on the two-tier objective over everything examined
    all_optimal, timed_out, versions = True, False, set()
    solve = _solve_milp if solver_name == "milp" else _solve_cpsat
    # Exact by default: prove optimality, not a 1e-4 gap (HiGHS's default).
    rel_gap = 0.0 if rel_gap is None else rel_gap
    warm = solution_from_plan(instance, initial_solution) if initial_solution is not None else None
    for far in [d.name for d in instance.devices if d.name != origin]:
        for b, mb in batch_grid(instance.workload.max_batch, 2):
            p = two_tier_problem(cm, origin, far, b, mb)
            start = warm[3] if warm is not None and warm[:3] == (far, b, mb) else None
            for case in _cases(p):
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    timed_out, all_optimal = True, False
                    bound = -math.inf
                    continue
                out, sol = solve(p, case, remaining, rel_gap, threads, seed, start, backend, progress)
                versions.add(out.solver_version)
                if progress is not None:
                    progress(f"{solver_name}: partner {far}, batch {b} x {mb}{'' if case is None else f', case {case}'}: "
                             f"{out.status.value}, objective {out.objective:.6g}, bound {out.bound:.6g} "
                             f"({time.perf_counter() - t0:.1f} s)")
                if out.status == Status.INFEASIBLE:
                    continue
                if out.status == Status.ERROR:
                    return Result(Status.ERROR, solver_name, sense=sense, message=out.stop_reason,
                                  solve_time_s=time.perf_counter() - t0)
                if out.status != Status.OPTIMAL:
                    all_optimal = False
                    timed_out = timed_out or out.status == Status.TIME_LIMIT
                bound = min(bound, out.bound if math.isfinite(out.bound) else -math.inf)
                if sol is None:
                    continue
                if violations(p, sol):
                    # Within the solver's tolerances but not the reference's: not a plan we return.
                    continue
                value = evaluate(p, sol).objective(p.objective)
                if best is None or value < best[0]:
                    best = (value, plan_from_solution(instance, origin, far, b, mb, sol, solver_name), (far, b, mb))
    elapsed = time.perf_counter() - t0
    version = ", ".join(sorted(v for v in versions if v))
    if initial_solution is not None:
        warm_value = cm.evaluate(initial_solution).objective(instance.objective)
        if best is None or (warm_value > instance_value(instance, best[0]) if sense == "max" else warm_value < instance_value(instance, best[0])):
            if warm is None:
                # A plan outside the two-tier space (e.g. route-aware's pipeline over several devices)
                # beats the space's optimum: return it, without claiming a bound for the instance.
                space = ("the two-tier space has no feasible plan" if best is None else
                         f"the two-tier space's best is {instance_value(instance, best[0]):.6g}"
                         + (" (proven optimal)" if all_optimal else ""))
                return Result(Status.FEASIBLE, solver_name, objective=warm_value, bound=math.nan, sense=sense,
                              solve_time_s=elapsed, solution=initial_solution, solver_version=version,
                              message=f"returned the warm start, a plan outside the two-tier space: {space}",
                              stop_reason="the warm start beats the two-tier space")
            best = (None, initial_solution, None)
    if best is None:
        status = Status.TIME_LIMIT if timed_out else Status.INFEASIBLE
        if timed_out:
            why = "time limit reached before any plan was found"
        elif explain:
            why = explain_infeasible(instance, cm)
        else:
            why = "infeasible: no split between the origin and one partner fits memory, SLOs and the accuracy budget"
        return Result(status, solver_name, sense=sense, solve_time_s=elapsed, message=why, solver_version=version,
                      stop_reason="all subproblems infeasible" if not timed_out else "time limit")
    plan = best[1]
    if export is not None:
        if solver_name != "milp":
            raise ValueError("--export writes the MILP (.lp or .mps): use --solver milp")
        if best[2] is not None:
            export_subproblem(instance, cm, *best[2], export)
    objective = cm.evaluate(plan).objective(instance.objective)
    # ``bound`` is the least dual bound over every subproblem examined: a bound on the whole space.
    bound_value = instance_value(instance, bound) if math.isfinite(bound) and bound > 0 else math.nan
    status = Status.OPTIMAL if all_optimal else (Status.TIME_LIMIT if timed_out else Status.FEASIBLE)
    return Result(status, solver_name, objective=objective, bound=bound_value, sense=sense, solve_time_s=elapsed,
                  solution=plan, solver_version=version,
                  stop_reason="every subproblem solved to optimality" if all_optimal else "time limit or gap")


def _with_warm_start(instance: Instance, options: dict) -> dict:
    """Unless told otherwise (``warm_start=None`` or an ``initial_solution``), start from the
    route-aware plan: a few milliseconds, and a time-limited solve is then never worse than it."""
    if options.pop("warm_start", "route-aware") == "route-aware" and options.get("initial_solution") is None:
        from planner.solve.route_aware import route_aware  # route_aware builds on this module

        warm = route_aware(instance, seed=options.get("seed", 0), cost_model=options.get("cost_model"))
        options["initial_solution"] = warm.solution
    return options


@register("milp", kind="exact", problem="instance")
def joint_milp(instance: Instance, **options) -> Result:
    """Exact end-cloud split with local experts and codec rank (Pyomo + HiGHS; option backend= any Pyomo solver)."""
    backend = options.pop("backend", "highs")
    return solve_joint(instance, backend, solver_name="milp", **_with_warm_start(instance, options))


@register("cpsat", kind="exact", problem="instance")
def joint_cpsat(instance: Instance, **options) -> Result:
    """Exact end-cloud split with local experts and codec rank (OR-Tools CP-SAT, integer-scaled times)."""
    return solve_joint(instance, "cpsat", solver_name="cpsat", **_with_warm_start(instance, options))
