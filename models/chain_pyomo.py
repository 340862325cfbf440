"""Pyomo MILP of :class:`models.chain.ChainPartition` (see that module for the problem).

Formulation: a unit flow through the items. ``x[d, l]`` in {0, 1} says item ``l`` runs on device
``d``; between items ``l`` and ``l + 1`` the flow either stays on its device or moves forward along
the cut ``c[d, e, l]`` (``d < e``, ``0 <= l < L - 1``):

    one[l]         sum_d x[d, l] = 1
    leave[d, l]    sum_{e > d} c[d, e, l] <= x[d, l]
    flow[d, l]     x[d, l] - sum_{e > d} c[d, e, l] = x[d, l + 1] - sum_{p < d} c[p, d, l]

Both sides of ``flow`` are the flow that stays on ``d`` from ``l`` to ``l + 1``, so ``x`` traces one
path in the DAG of states ``(item, device)`` whose device never decreases: every device holds one
contiguous block at most and the devices of consecutive stages strictly increase, which is the
ordered chain partition; no start variables or pairwise precedence rows are needed. ``leave`` is
the flow that stays being >= 0; without it a cut could pass through a device that holds neither
item (``c[p, d, l] = c[d, e, l] = 1`` with ``x[d, .] = 0``), a detour cheaper than ``c[p, e, l]``
whenever the cut costs break the triangle inequality. ``c`` is
continuous in [0, 1]: given binary ``x`` the flow equations leave it exactly one value, 1 on the cut
actually taken and 0 elsewhere. Without memory and cap the constraint matrix is that of a shortest
path in a DAG (totally unimodular), so the LP relaxation of the latency objective is then exact;
memory rows and the bottleneck rows below are what branching has to close.

    memory[d]      sum_l memory[d, l] x[d, l] <= capacity[d]            (rows with finite capacity)
    stage[d]       sum_l compute[d, l] x[d, l] <= t                      (one stage per device at most)
    cut[l]         sum_{d < e} transfer_busy[d, e, l] c[d, e, l] <= t    (one cut per boundary at most)
    entry, exit    sum_d entry_busy[d] x[d, 0] <= t,  sum_d exit_busy[d] x[d, L-1] <= t
    cap            t <= max_bottleneck

Aggregating the cuts of one boundary in one row is both smaller and tighter than a row per cut.
Objectives: ``min t`` (bottleneck) or ``min`` the latency ``sum compute x + sum transfer_latency c
+ entry_latency x[., 0] + exit_latency x[., L-1]``; with the latency objective and no cap the rows
on ``t`` are left out.

Scaling: times are divided by a power of two near the largest time coefficient, and each memory
row by a power of two near its capacity, so coefficients are O(1) for the solver's absolute
tolerances while the scaling itself is exact in floating point (``m.time_unit_s`` converts back).
"""

from __future__ import annotations

import math

import numpy as np
import pyomo.environ as pyo

from models.chain import ChainPartition, Stage, evaluate, stages_from_devices


def _power_of_two(value: float) -> float:
    """The power of two nearest ``value`` (1 for zero or inf)."""
    return 2.0 ** round(math.log2(value)) if 0 < value < math.inf else 1.0


def _needs_t(p: ChainPartition) -> bool:
    return p.objective == "bottleneck" or math.isfinite(p.max_bottleneck)


def variables(m: pyo.ConcreteModel, p: ChainPartition) -> None:
    D, L = p.shape
    m.D, m.L = pyo.RangeSet(0, D - 1), pyo.RangeSet(0, L - 1)
    m.CUTS = pyo.Set(dimen=3, initialize=[(d, e, l) for l in range(L - 1) for d in range(D) for e in range(d + 1, D)])
    m.x = pyo.Var(m.D, m.L, domain=pyo.Binary)
    m.c = pyo.Var(m.CUTS, bounds=(0, 1))
    times = [p.compute, p.transfer_busy, p.transfer_latency, p.entry_busy, p.entry_latency, p.exit_busy, p.exit_latency]
    m.time_unit_s = _power_of_two(max(float(a.max()) for a in times))
    cap = p.max_bottleneck / m.time_unit_s if math.isfinite(p.max_bottleneck) else None
    m.t = pyo.Var(bounds=(0, cap))


def constraints(m: pyo.ConcreteModel, p: ChainPartition) -> None:
    D, L = p.shape
    u = m.time_unit_s
    out = lambda d, l: sum(m.c[d, e, l] for e in range(d + 1, D))  # noqa: E731
    into = lambda d, l: sum(m.c[q, d, l] for q in range(d))  # noqa: E731
    boundaries = pyo.RangeSet(0, L - 2) if L > 1 else pyo.Set(initialize=[])
    m.one = pyo.Constraint(m.L, rule=lambda m, l: sum(m.x[d, l] for d in m.D) == 1)
    m.leave = pyo.Constraint(m.D, boundaries, rule=lambda m, d, l: out(d, l) <= m.x[d, l] if d < D - 1 else pyo.Constraint.Skip)
    m.flow = pyo.Constraint(m.D, boundaries, rule=lambda m, d, l: m.x[d, l] - out(d, l) == m.x[d, l + 1] - into(d, l))

    def memory(m, d):
        if not math.isfinite(p.capacity[d]):
            return pyo.Constraint.Skip
        unit = _power_of_two(p.capacity[d]) if p.capacity[d] > 0 else _power_of_two(float(p.memory[d].max()))
        return sum(float(p.memory[d, l] / unit) * m.x[d, l] for l in m.L) <= float(p.capacity[d] / unit)

    m.memory = pyo.Constraint(m.D, rule=memory)
    if not _needs_t(p):
        return
    m.stage = pyo.Constraint(m.D, rule=lambda m, d: sum(float(p.compute[d, l] / u) * m.x[d, l] for l in m.L) <= m.t)
    m.cut = pyo.Constraint(boundaries, rule=lambda m, l: sum(
        float(p.transfer_busy[d, e, l] / u) * m.c[d, e, l] for d in range(D) for e in range(d + 1, D)) <= m.t)
    m.entry = pyo.Constraint(expr=sum(float(p.entry_busy[d] / u) * m.x[d, 0] for d in m.D) <= m.t)
    m.exit = pyo.Constraint(expr=sum(float(p.exit_busy[d] / u) * m.x[d, L - 1] for d in m.D) <= m.t)


def objective(m: pyo.ConcreteModel, p: ChainPartition) -> None:
    """Objective in units of ``m.time_unit_s``."""
    D, L = p.shape
    u = m.time_unit_s
    if p.objective == "bottleneck":
        m.obj = pyo.Objective(expr=m.t, sense=pyo.minimize)
        return
    m.obj = pyo.Objective(sense=pyo.minimize, expr=(
        sum(float(p.compute[d, l] / u) * m.x[d, l] for d in m.D for l in m.L)
        + sum(float(p.transfer_latency[d, e, l] / u) * m.c[d, e, l] for d, e, l in m.CUTS)
        + sum(float(p.entry_latency[d] / u) * m.x[d, 0] + float(p.exit_latency[d] / u) * m.x[d, L - 1] for d in m.D)))


def build(p: ChainPartition) -> pyo.ConcreteModel:
    m = pyo.ConcreteModel(name="chain partition")
    variables(m, p)
    constraints(m, p)
    objective(m, p)
    return m


def extract(m: pyo.ConcreteModel, p: ChainPartition) -> list[Stage]:
    """Stages from the values of ``x`` (the device of item l is the one with the largest x[., l])."""
    D, L = p.shape
    x = np.array([[pyo.value(m.x[d, l]) for l in range(L)] for d in range(D)], dtype=float)
    return stages_from_devices(np.argmax(x, axis=0))


def warm_start(m: pyo.ConcreteModel, p: ChainPartition, stages) -> None:
    """Set every variable from ``stages`` (HiGHS takes them as a MIP start when asked to)."""
    stages = [Stage(*map(int, s)) for s in stages]
    for d, l in m.x:
        m.x[d, l].set_value(0)
    for d, a, e in stages:
        for l in range(a, e):
            m.x[d, l].set_value(1)
    for key in m.c:
        m.c[key].set_value(0)
    for s, t in zip(stages, stages[1:]):
        m.c[s.device, t.device, s.end - 1].set_value(1)
    bottleneck, _ = evaluate(p, stages)
    m.t.set_value(min(bottleneck / m.time_unit_s, m.t.ub if m.t.ub is not None else math.inf))
