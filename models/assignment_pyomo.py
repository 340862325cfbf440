"""Pyomo (MILP) formulation of :class:`models.assignment.ReplicatedAssignment`.

Exact: the model's objective is the problem's objective (no scaling). Variables exist only for
candidate triples (``mask`` True), so the candidate constraint holds by construction.

Variables:
    y[g, i, b]  binary      a replica of item (g, i) on bin b
    s[g, i, b]  in [0, 1]   share of the item's load served on bin b ("bottleneck" only)
    z[g]        >= 0        bottleneck of group g: the largest speed-normalised bin load ("bottleneck" only)
Constraints ("bottleneck"):
    shares      sum_b s = 1;  s <= y
    replicas    1 <= sum_b y <= max_replicas
    slots       sum_i y[g, i, b] <= slots[b]
    memory      sum_{g, i} weight[i, b] / capacity[b] * y <= 1      (rows scaled to 1; skipped where capacity is inf)
    bottleneck  z[g] >= sum_i load[g, i] * s[g, i, b] / speed[b]
    item cut    z[g] >= load[g, i] / (sum of the max_replicas fastest candidate speeds of (g, i)): the item
                is served by at most that many bins, so one of them takes at least that time; valid,
                and it tightens the LP relaxation where the fractional y would spread an item thinly.
Constraints ("cost"): each item exactly once (sum_b y = 1), slots, memory; shares are y.
Objective:
    "bottleneck": sum_g z[g] + traffic_weight * sum traffic * load * s
    "cost":       sum cost * y
"""

from __future__ import annotations

import numpy as np
import pyomo.environ as pyo

from models.assignment import AssignmentSolution, ReplicatedAssignment, bin_loads, normalise_shares


def candidates(p: ReplicatedAssignment) -> list[tuple[int, int, int]]:
    """Candidate triples ``(g, i, b)`` in index order."""
    return [tuple(int(v) for v in t) for t in zip(*np.nonzero(p.mask))]


def variables(m: pyo.ConcreteModel, p: ReplicatedAssignment) -> None:
    G, I, B = p.shape
    m.C = pyo.Set(initialize=candidates(p), dimen=3, ordered=True)
    m.GI = pyo.Set(initialize=[(g, i) for g in range(G) for i in range(I)], dimen=2, ordered=True)
    m.groups = pyo.RangeSet(0, G - 1)
    m.bins = pyo.RangeSet(0, B - 1)
    m.y = pyo.Var(m.C, domain=pyo.Binary)
    if p.objective == "bottleneck":
        m.s = pyo.Var(m.C, bounds=(0.0, 1.0))
        m.z = pyo.Var(m.groups, domain=pyo.NonNegativeReals)


def _bins_of(m, g, i):
    return [b for b in m.bins if (g, i, b) in m.C]


def constraints(m: pyo.ConcreteModel, p: ReplicatedAssignment) -> None:
    G, I, B = p.shape
    by_item = {(g, i): _bins_of(m, g, i) for g, i in m.GI}
    if p.objective == "cost":
        m.assign = pyo.Constraint(m.GI, rule=lambda m, g, i: sum(m.y[g, i, b] for b in by_item[g, i]) == 1)
    else:
        m.share_sum = pyo.Constraint(m.GI, rule=lambda m, g, i: sum(m.s[g, i, b] for b in by_item[g, i]) == 1)
        m.share_on_replica = pyo.Constraint(m.C, rule=lambda m, g, i, b: m.s[g, i, b] <= m.y[g, i, b])
        m.replicas = pyo.Constraint(m.GI, rule=lambda m, g, i: pyo.inequality(
            1, sum(m.y[g, i, b] for b in by_item[g, i]), int(p.max_replicas[g, i])))
        m.bottleneck = pyo.Constraint(m.groups, m.bins, rule=lambda m, g, b: _bottleneck_row(m, p, g, b))
        m.item_cut = pyo.Constraint(m.GI, rule=lambda m, g, i: _item_cut(m, p, by_item[g, i], g, i))

    def slots_rule(m, g, b):
        ys = [m.y[g, i, b] for i in range(I) if (g, i, b) in m.C]
        if len(ys) <= p.slots[b]:
            return pyo.Constraint.Skip
        return sum(ys) <= int(p.slots[b])

    def memory_rule(m, b):
        if not np.isfinite(p.capacity[b]):
            return pyo.Constraint.Skip
        terms = [(p.weight[i, b], m.y[g, i, b]) for g, i, bb in m.C if bb == b and p.weight[i, b] > 0]
        if not terms:
            return pyo.Constraint.Skip
        if p.capacity[b] == 0:
            return sum(y for _, y in terms) == 0
        return sum(w / p.capacity[b] * y for w, y in terms) <= 1

    m.slots = pyo.Constraint(m.groups, m.bins, rule=slots_rule)
    m.memory = pyo.Constraint(m.bins, rule=memory_rule)


def _bottleneck_row(m, p, g, b):
    terms = [p.load[g, i] / p.speed[b] * m.s[g, i, b] for i in range(p.shape[1])
             if (g, i, b) in m.C and p.load[g, i] > 0]
    if not terms:
        return pyo.Constraint.Skip
    return m.z[g] >= sum(terms)


def _item_cut(m, p, bins, g, i):
    if p.load[g, i] <= 0:
        return pyo.Constraint.Skip
    fastest = sorted((p.speed[b] for b in bins), reverse=True)[: int(p.max_replicas[g, i])]
    return m.z[g] >= p.load[g, i] / sum(fastest)


def objective(m: pyo.ConcreteModel, p: ReplicatedAssignment) -> None:
    if p.objective == "cost":
        m.obj = pyo.Objective(expr=sum(p.cost[g, i, b] * m.y[g, i, b] for g, i, b in m.C), sense=pyo.minimize)
        return
    traffic = sum(p.traffic[g, i, b] * p.load[g, i] * m.s[g, i, b] for g, i, b in m.C
                  if p.traffic[g, i, b] * p.load[g, i] > 0)
    m.obj = pyo.Objective(expr=sum(m.z[g] for g in m.groups) + p.traffic_weight * traffic, sense=pyo.minimize)


def build(p: ReplicatedAssignment) -> pyo.ConcreteModel:
    """The MILP of ``p``. Every item must have a candidate bin (check before building)."""
    m = pyo.ConcreteModel(name="replicated_assignment")
    variables(m, p)
    constraints(m, p)
    objective(m, p)
    return m


def extract(m: pyo.ConcreteModel, p: ReplicatedAssignment) -> AssignmentSolution:
    """The solution held by the model's variables, cleaned of solver round-off: y rounded, shares
    clipped to [0, 1], zero off replicas, and renormalised to sum to 1 per item."""
    G, I, B = p.shape
    y = np.zeros((G, I, B), dtype=bool)
    s = np.zeros((G, I, B))
    for g, i, b in m.C:
        y[g, i, b] = (m.y[g, i, b].value or 0.0) > 0.5
        if p.objective == "bottleneck":
            s[g, i, b] = min(max(m.s[g, i, b].value or 0.0, 0.0), 1.0)
    if p.objective == "cost":
        return AssignmentSolution(y, y.astype(float))
    return AssignmentSolution(y, normalise_shares(y, s))


def warm_start(m: pyo.ConcreteModel, p: ReplicatedAssignment, sol: AssignmentSolution) -> None:
    """Load ``sol`` into the variables (all of them: HiGHS takes a complete MIP start)."""
    for g, i, b in m.C:
        m.y[g, i, b].set_value(float(sol.replicas[g, i, b]))
        if p.objective == "bottleneck":
            m.s[g, i, b].set_value(float(sol.shares[g, i, b]))
    if p.objective == "bottleneck":
        z = bin_loads(p, sol).max(axis=1)
        for g in m.groups:
            m.z[g].set_value(float(z[g]))
