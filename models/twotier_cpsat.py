"""CP-SAT model of :class:`models.twotier.TwoTierProblem` (the same equations as the MILP).

Integer scaling: every time coefficient is rounded to the nearest multiple of ``time_unit_s``,
chosen so that the sum of all time coefficients is about 2^40 units (so no sum overflows int64);
a busy time is then off by at most half a unit per term it sums, a request latency by the phase
weights times that, the period by the larger of the two (latency over concurrency). Memory is in bytes rounded up per term
and capacities rounded down
(conservative by at most one byte per term); losses are in 1e-12 units rounded up, the budget
rounded down. The solution is re-evaluated exactly with :func:`models.twotier.evaluate`; only the
proof of optimality carries the scaling tolerance ``objective_error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

from models.twotier import FAR, NEAR, TwoTierProblem, TwoTierSolution

LOSS_UNIT = 1e-12


@dataclass
class CpTwoTier:
    model: cp_model.CpModel
    a: list
    x: dict
    z: list
    T: cp_model.IntVar
    objective_unit: float  # seconds (or joules) per objective unit
    time_unit_s: float
    objective_error: float  # largest scaling error of the objective, in seconds (or joules)


def T_bound_s(p: TwoTierProblem) -> float:
    """An upper bound (s) on any busy time or period: everything added up."""
    return float(p.ne_busy.sum() + p.item_busy.sum() + p.item_link_busy.sum() + p.ends_busy.sum() + p.cut_busy.sum()
                 + p.entry_busy.sum() + p.exit_busy.sum() + p.ne_lat.sum() * p.lat_weight.max() + p.item_lat.sum() * p.lat_weight.max())


def _time_unit(p: TwoTierProblem) -> float:
    total = sum(float(np.abs(arr).sum()) for arr in (
        p.ne_lat, p.ne_busy, p.item_lat, p.item_busy, p.item_link_lat, p.item_link_busy, p.fixed_lat,
        p.ends_lat, p.ends_busy, p.cut_lat, p.cut_busy, p.entry_lat, p.exit_lat, p.entry_busy, p.exit_busy))
    total *= max(1.0, float(p.lat_weight.max())) * max(1.0, p.concurrency)
    return max(total, 1e-30) / 2.0**40


def build(p: TwoTierProblem, case: tuple[int, int] | None = None) -> CpTwoTier:
    unit = _time_unit(p)
    q = lambda v: int(round(float(v) / unit))  # noqa: E731
    qb = lambda v: int(math.ceil(float(v)))  # noqa: E731  (bytes, rounded up)
    L, E, K, P = p.num_layers, p.num_items, p.num_options, p.ne_lat.shape[2]
    ex = p.exists
    md = cp_model.CpModel()
    a = [md.new_bool_var(f"a{l}") for l in range(L)]
    x = {(l, e): md.new_bool_var(f"x{l}_{e}") for l in range(L) for e in range(E) if ex[l, e] and p.allowed[l, e]}
    u = [md.new_bool_var(f"u{l}") for l in range(L)]
    z = [md.new_bool_var(f"z{k}") for k in range(K)]
    y = [md.new_bool_var(f"y{k}") for k in range(K)]
    xv = lambda l, e: x.get((l, e), 0)  # noqa: E731
    for l in range(L - 1):
        md.add(a[l] >= a[l + 1])
    for (l, _), var in x.items():
        md.add(var <= a[l])
    for l in range(L):
        for e in range(E):
            if ex[l, e]:
                md.add(u[l] >= a[l] - xv(l, e))
    first, last = a[0], a[L - 1]
    cut = first - last
    md.add(sum(z) == 1)
    for k in range(K):
        md.add(y[k] <= z[k])
        md.add(y[k] <= cut)
        md.add(y[k] >= z[k] + cut - 1)
    md.add(sum(int(math.ceil(p.cut_loss[k] / LOSS_UNIT)) * y[k] for k in range(K)) <= int(math.floor(p.loss_budget / LOSS_UNIT + 1e-9)))

    big = 2**42  # every time sum is below 2^40 units by the choice of unit
    lat = []
    for ph in range(P):
        terms = []
        for l in range(L):
            race = md.new_int_var(0, big, f"race{l}_{ph}")
            md.add(race >= sum(q(p.item_lat[NEAR, l, e, ph]) * xv(l, e) for e in range(E) if ex[l, e]))
            md.add(race >= q(p.fixed_lat[ph]) * u[l] + sum(
                q(p.item_lat[FAR, l, e, ph] + p.item_link_lat[l, e, ph]) * (a[l] - xv(l, e)) for e in range(E) if ex[l, e]))
            far_all = float((ex[l] * p.item_lat[FAR, l, :, ph]).sum())
            terms.append(q(p.ne_lat[NEAR, l, ph]) * a[l] + q(p.ne_lat[FAR, l, ph] + far_all) * (1 - a[l]) + race)
        terms.append(q(p.ends_lat[0, NEAR, ph]) * first + q(p.ends_lat[0, FAR, ph]) * (1 - first))
        terms.append(q(p.ends_lat[1, NEAR, ph]) * last + q(p.ends_lat[1, FAR, ph]) * (1 - last))
        terms.append(sum(q(p.cut_lat[k, ph]) * y[k] for k in range(K)))
        terms.append(q(p.entry_lat[ph]) * (1 - first) + q(p.exit_lat[ph]) * (1 - last))
        lat.append(sum(terms))
    R = sum(int(round(p.lat_weight[ph])) * lat[ph] for ph in range(P)) if np.allclose(p.lat_weight, np.round(p.lat_weight)) else None
    if R is None:
        raise ValueError("phase latency weights must be integers (output tokens)")
    busy_near = (sum(q(p.ne_busy[NEAR, l]) * a[l] for l in range(L))
                 + sum(q(p.item_busy[NEAR, l, e]) * var for (l, e), var in x.items())
                 + q(p.ends_busy[0, NEAR]) * first + q(p.ends_busy[1, NEAR]) * last
                 + sum(q(p.cut_busy[NEAR, k]) * y[k] for k in range(K)))
    busy_far = (sum(q(p.ne_busy[FAR, l]) * (1 - a[l]) for l in range(L))
                + sum(q(p.item_busy[FAR, l, e]) * (1 - xv(l, e)) for l in range(L) for e in range(E) if ex[l, e])
                + q(p.ends_busy[0, FAR]) * (1 - first) + q(p.ends_busy[1, FAR]) * (1 - last)
                + sum(q(p.cut_busy[FAR, k]) * y[k] for k in range(K)))
    T = md.new_int_var(0, big, "T")
    md.add(T >= busy_near)
    md.add(T >= busy_far)
    for j in range(p.num_links):
        md.add(T >= sum(q(p.item_link_busy[j, l, e]) * (a[l] - xv(l, e)) for l in range(L) for e in range(E) if ex[l, e])
               + q(p.entry_busy[j]) * (1 - first) + q(p.exit_busy[j]) * (1 - last)
               + sum(q(p.cut_busy[2 + j, k]) * y[k] for k in range(K)))
    conc = p.concurrency
    if float(conc).is_integer():
        md.add(int(conc) * T >= R)
    else:
        raise ValueError("concurrency must be an integer")
    mem_near = (sum(qb(p.ne_mem[NEAR, l]) * a[l] for l in range(L)) + sum(qb(p.item_mem[l, e]) * var for (l, e), var in x.items())
                + qb(p.ends_mem[0, NEAR] + p.workspace_mem[NEAR]) * first
                + (qb(p.ends_mem[1, NEAR]) - int(math.floor(p.head_tied_mem))) * last
                + sum(qb(p.cut_mem[NEAR, k]) * y[k] for k in range(K)))
    mem_far = (sum(qb(p.ne_mem[FAR, l]) * (1 - a[l]) for l in range(L))
               + sum(qb(p.item_mem[l, e]) * (1 - xv(l, e)) for l in range(L) for e in range(E) if ex[l, e])
               + (qb(p.ends_mem[0, FAR]) - int(math.floor(p.head_tied_mem))) * (1 - first)
               + qb(p.ends_mem[1, FAR] + p.workspace_mem[FAR]) * (1 - last)
               + sum(qb(p.cut_mem[FAR, k]) * y[k] for k in range(K)))
    if np.isfinite(p.capacity[NEAR]):
        md.add(mem_near <= int(math.floor(p.capacity[NEAR])))
    if np.isfinite(p.capacity[FAR]):
        md.add(mem_far <= int(math.floor(p.capacity[FAR])))
    if p.max_period is not None:
        md.add(T <= int(math.floor(p.max_period / unit)))
    if p.max_request_latency is not None:
        md.add(R <= int(math.floor(p.max_request_latency / unit)))
    for ph, capv in enumerate(p.max_phase_latency):
        if capv is not None:
            md.add(lat[ph] <= int(math.floor(capv / unit)))
    if case is not None:
        md.add(first == case[0])
        md.add(last == case[1])
    if p.objective == "throughput":
        md.minimize(T)
        obj_unit = unit
    elif p.objective == "latency":
        md.minimize(R)
        obj_unit = unit
    else:
        if case is None:
            raise ValueError("the energy objective needs a fixed case (which machines are used)")
        idle = case[0] * p.idle_w[NEAR] + (1 - case[1]) * p.idle_w[FAR]
        # Watts scaled to milliwatts (integers): energy unit = unit x 1e-3 J.
        w = lambda v: int(round(v * 1e3))  # noqa: E731
        md.minimize(w(idle) * T + w(p.power_w[NEAR] - p.idle_w[NEAR]) * busy_near + w(p.power_w[FAR] - p.idle_w[FAR]) * busy_far)
        obj_unit = unit * 1e-3
    # Each coefficient is off by at most half a unit. A busy row sums at most n_busy of them; a
    # phase latency at most n_lat (a layer's race counts its longer side); R weights the phases.
    n_busy = L * (E + 1) + 4 + K + 1
    n_lat = L * (2 * E + 3) + 6 + K
    error_busy = 0.5 * unit * n_busy
    error_R = 0.5 * unit * n_lat * float(np.abs(p.lat_weight).sum())
    error_T = max(error_busy, error_R / p.concurrency)
    if p.objective == "throughput":
        error = error_T
    elif p.objective == "latency":
        error = error_R
    else:
        # Watts are rounded to whole milliwatts too: four coefficients (idle and active, two
        # machines), each off by 0.5 mW over at most T_bound_s seconds.
        error = (error_T * float(p.idle_w.sum()) + error_busy * float((p.power_w - p.idle_w).sum())
                 + 4 * 0.5e-3 * T_bound_s(p))
    return CpTwoTier(md, a, x, z, T, obj_unit, unit, error)


def extract(cp: CpTwoTier, solver: cp_model.CpSolver, p: TwoTierProblem) -> TwoTierSolution:
    a = [solver.value(v) for v in cp.a]
    near = np.zeros((p.num_layers, p.num_items), dtype=bool)
    for (l, e), var in cp.x.items():
        near[l, e] = bool(solver.value(var))
    option = int(np.argmax([solver.value(v) for v in cp.z]))
    return TwoTierSolution(int(sum(a)), near, option)


def hints(cp: CpTwoTier, p: TwoTierProblem, s: TwoTierSolution) -> list:
    out = [(v, int(l < s.near_layers)) for l, v in enumerate(cp.a)]
    out += [(var, int(l < s.near_layers and s.near_items[l, e])) for (l, e), var in cp.x.items()]
    out += [(v, int(k == s.option)) for k, v in enumerate(cp.z)]
    return out
