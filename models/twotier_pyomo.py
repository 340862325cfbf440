"""Pyomo MILP of :class:`models.twotier.TwoTierProblem` (see that module for the equations).

Split into variables, constraints and objective; ``build`` assembles them. ``case`` optionally
fixes ``(a[0], a[L-1])``: which machines are used (the energy objective is linear only then).
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo

from models.twotier import FAR, NEAR, TwoTierProblem, TwoTierSolution


def variables(m: pyo.ConcreteModel, p: TwoTierProblem) -> None:
    L, E, K, P = p.num_layers, p.num_items, p.num_options, p.ne_lat.shape[2]
    m.L, m.E, m.K, m.P = pyo.RangeSet(0, L - 1), pyo.RangeSet(0, E - 1), pyo.RangeSet(0, K - 1), pyo.RangeSet(0, P - 1)
    m.R_links = pyo.RangeSet(0, p.num_links - 1) if p.num_links else pyo.Set(initialize=[])
    m.a = pyo.Var(m.L, domain=pyo.Binary)
    m.x = pyo.Var(m.L, m.E, domain=pyo.Binary)
    m.u = pyo.Var(m.L, domain=pyo.Binary)
    m.z = pyo.Var(m.K, domain=pyo.Binary)
    m.y = pyo.Var(m.K, bounds=(0, 1))
    m.race = pyo.Var(m.L, m.P, domain=pyo.NonNegativeReals)
    m.T = pyo.Var(domain=pyo.NonNegativeReals)
    for l in range(L):
        for e in range(E):
            if not (p.exists[l, e] and p.allowed[l, e]):
                m.x[l, e].fix(0)


def _expressions(m: pyo.ConcreteModel, p: TwoTierProblem) -> None:
    L = p.num_layers
    first, last = m.a[0], m.a[L - 1]
    m.cut = pyo.Expression(expr=first - last)
    ex = p.exists

    def lat(m, ph):
        total = 0
        for l in range(L):
            far_all = float((ex[l] * p.item_lat[FAR, l, :, ph]).sum())
            total += m.a[l] * p.ne_lat[NEAR, l, ph] + (1 - m.a[l]) * (p.ne_lat[FAR, l, ph] + far_all) + m.race[l, ph]
        total += first * p.ends_lat[0, NEAR, ph] + (1 - first) * p.ends_lat[0, FAR, ph]
        total += last * p.ends_lat[1, NEAR, ph] + (1 - last) * p.ends_lat[1, FAR, ph]
        total += sum(m.y[k] * p.cut_lat[k, ph] for k in m.K)
        total += (1 - first) * p.entry_lat[ph] + (1 - last) * p.exit_lat[ph]
        return total

    m.lat = pyo.Expression(m.P, rule=lat)
    m.request_latency = pyo.Expression(expr=sum(p.lat_weight[ph] * m.lat[ph] for ph in m.P))
    away = lambda l, e: m.a[l] - m.x[l, e]  # noqa: E731  (1 when a near layer serves item e far)
    near = (sum(m.a[l] * p.ne_busy[NEAR, l] for l in m.L)
            + sum(m.x[l, e] * p.item_busy[NEAR, l, e] for l in m.L for e in m.E if ex[l, e])
            + first * p.ends_busy[0, NEAR] + last * p.ends_busy[1, NEAR]
            + sum(m.y[k] * p.cut_busy[NEAR, k] for k in m.K))
    far = (sum((1 - m.a[l]) * p.ne_busy[FAR, l] for l in m.L)
           + sum((1 - m.x[l, e]) * p.item_busy[FAR, l, e] for l in m.L for e in m.E if ex[l, e])
           + (1 - first) * p.ends_busy[0, FAR] + (1 - last) * p.ends_busy[1, FAR]
           + sum(m.y[k] * p.cut_busy[FAR, k] for k in m.K))
    m.busy_near = pyo.Expression(expr=near)
    m.busy_far = pyo.Expression(expr=far)
    m.busy_link = pyo.Expression(m.R_links, rule=lambda m, j: (
        sum(away(l, e) * p.item_link_busy[j, l, e] for l in m.L for e in m.E if ex[l, e])
        + (1 - first) * p.entry_busy[j] + (1 - last) * p.exit_busy[j]
        + sum(m.y[k] * p.cut_busy[2 + j, k] for k in m.K)))
    m.mem_near = pyo.Expression(expr=(
        sum(m.a[l] * p.ne_mem[NEAR, l] for l in m.L) + sum(m.x[l, e] * p.item_mem[l, e] for l in m.L for e in m.E if ex[l, e])
        + first * (p.ends_mem[0, NEAR] + p.workspace_mem[NEAR]) + last * (p.ends_mem[1, NEAR] - p.head_tied_mem)
        + sum(m.y[k] * p.cut_mem[NEAR, k] for k in m.K)))
    m.mem_far = pyo.Expression(expr=(
        sum((1 - m.a[l]) * p.ne_mem[FAR, l] for l in m.L)
        + sum((1 - m.x[l, e]) * p.item_mem[l, e] for l in m.L for e in m.E if ex[l, e])
        + (1 - first) * (p.ends_mem[0, FAR] - p.head_tied_mem) + (1 - last) * (p.ends_mem[1, FAR] + p.workspace_mem[FAR])
        + sum(m.y[k] * p.cut_mem[FAR, k] for k in m.K)))


def constraints(m: pyo.ConcreteModel, p: TwoTierProblem, case: tuple[int, int] | None = None) -> None:
    L = p.num_layers
    ex = p.exists
    _expressions(m, p)
    m.prefix = pyo.Constraint(pyo.RangeSet(0, L - 2) if L > 1 else pyo.Set(initialize=[]),
                              rule=lambda m, l: m.a[l] >= m.a[l + 1])
    m.item_near = pyo.Constraint(m.L, m.E, rule=lambda m, l, e: m.x[l, e] <= m.a[l] if ex[l, e] else pyo.Constraint.Skip)
    m.uses_far = pyo.Constraint(m.L, m.E, rule=lambda m, l, e: m.u[l] >= m.a[l] - m.x[l, e] if ex[l, e] else pyo.Constraint.Skip)
    m.race_near = pyo.Constraint(m.L, m.P, rule=lambda m, l, ph: m.race[l, ph] >= sum(
        m.x[l, e] * p.item_lat[NEAR, l, e, ph] for e in m.E if ex[l, e]))
    m.race_far = pyo.Constraint(m.L, m.P, rule=lambda m, l, ph: m.race[l, ph] >= m.u[l] * p.fixed_lat[ph] + sum(
        (m.a[l] - m.x[l, e]) * (p.item_lat[FAR, l, e, ph] + p.item_link_lat[l, e, ph]) for e in m.E if ex[l, e]))
    m.one_option = pyo.Constraint(expr=sum(m.z[k] for k in m.K) == 1)
    m.y_le_z = pyo.Constraint(m.K, rule=lambda m, k: m.y[k] <= m.z[k])
    m.y_le_cut = pyo.Constraint(m.K, rule=lambda m, k: m.y[k] <= m.cut)
    m.y_ge = pyo.Constraint(m.K, rule=lambda m, k: m.y[k] >= m.z[k] + m.cut - 1)
    m.loss = pyo.Constraint(expr=sum(m.y[k] * p.cut_loss[k] for k in m.K) <= p.loss_budget)
    # Memory rows stay in bytes: HiGHS warns about their large bounds, but scaling them to GB made
    # the OLMoE instance stall at the root (optimal in 37 s in bytes, no bound in 120 s in GB).
    if np.isfinite(p.capacity[NEAR]):
        m.cap_near = pyo.Constraint(expr=m.mem_near <= p.capacity[NEAR])
    if np.isfinite(p.capacity[FAR]):
        m.cap_far = pyo.Constraint(expr=m.mem_far <= p.capacity[FAR])
    m.period_near = pyo.Constraint(expr=m.T >= m.busy_near)
    m.period_far = pyo.Constraint(expr=m.T >= m.busy_far)
    m.period_link = pyo.Constraint(m.R_links, rule=lambda m, j: m.T >= m.busy_link[j])
    m.period_loop = pyo.Constraint(expr=p.concurrency * m.T >= m.request_latency)
    if p.max_period is not None:
        m.period_cap = pyo.Constraint(expr=m.T <= p.max_period)
    if p.max_request_latency is not None:
        m.latency_cap = pyo.Constraint(expr=m.request_latency <= p.max_request_latency)
    for ph, cap in enumerate(p.max_phase_latency):
        if cap is not None:
            setattr(m, f"phase_cap_{ph}", pyo.Constraint(expr=m.lat[ph] <= cap))
    if case is not None:
        m.a[0].fix(case[0])
        m.a[L - 1].fix(case[1])


# The objective is stated in microseconds (or millijoules): in seconds it is often ~1e-3, where a
# MIP solver's absolute tolerances (~1e-6) would end the search 0.1% short of the optimum.
OBJECTIVE_SCALE = {"throughput": 1e6, "latency": 1e6, "energy": 1e3}


def objective(m: pyo.ConcreteModel, p: TwoTierProblem, case: tuple[int, int] | None = None) -> None:
    """Minimise the objective times ``OBJECTIVE_SCALE[p.objective]`` (kept on ``m.objective_scale``)."""
    scale = OBJECTIVE_SCALE[p.objective]
    m.objective_scale = scale
    if p.objective == "throughput":
        m.obj = pyo.Objective(expr=scale * m.T, sense=pyo.minimize)
    elif p.objective == "latency":
        m.obj = pyo.Objective(expr=scale * m.request_latency, sense=pyo.minimize)
    else:
        if case is None:
            raise ValueError("the energy objective needs a fixed case (which machines are used)")
        idle = case[0] * p.idle_w[NEAR] + (1 - case[1]) * p.idle_w[FAR]
        m.obj = pyo.Objective(expr=scale * (idle * m.T + (p.power_w[NEAR] - p.idle_w[NEAR]) * m.busy_near
                                            + (p.power_w[FAR] - p.idle_w[FAR]) * m.busy_far), sense=pyo.minimize)


def build(p: TwoTierProblem, case: tuple[int, int] | None = None) -> pyo.ConcreteModel:
    m = pyo.ConcreteModel(name="two-tier split")
    variables(m, p)
    constraints(m, p, case)
    objective(m, p, case)
    return m


def extract(m: pyo.ConcreteModel, p: TwoTierProblem) -> TwoTierSolution:
    a = [round(pyo.value(m.a[l])) for l in range(p.num_layers)]
    near_items = np.array([[round(pyo.value(m.x[l, e])) == 1 for e in range(p.num_items)] for l in range(p.num_layers)],
                          dtype=bool).reshape(p.num_layers, p.num_items)
    option = int(np.argmax([pyo.value(m.z[k]) for k in range(p.num_options)]))
    return TwoTierSolution(int(sum(a)), near_items, option)


def warm_start(m: pyo.ConcreteModel, p: TwoTierProblem, s: TwoTierSolution) -> None:
    """Set initial values from ``s`` (HiGHS uses them as a MIP start when the solver is asked to)."""
    for l in range(p.num_layers):
        if not m.a[l].fixed:
            m.a[l].set_value(1 if l < s.near_layers else 0)
        for e in range(p.num_items):
            if not m.x[l, e].fixed:
                m.x[l, e].set_value(1 if (l < s.near_layers and s.near_items[l, e]) else 0)
    for k in range(p.num_options):
        m.z[k].set_value(1 if k == s.option else 0)
