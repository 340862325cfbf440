"""CP-SAT formulation of :class:`models.assignment.ReplicatedAssignment`, on integers.

Scaling (CP-SAT needs integer coefficients):

* Shares are whole units: ``q[g, i, b]`` in ``0..U`` with ``U = SHARE_UNITS`` and ``sum_b q = U``; the
  share is ``q / U``. Items that cannot be split (``max_replicas`` 1 or a single candidate bin) have
  ``q = U * y``.
* "bottleneck": each coefficient ``load[g, i] / speed[b]`` and ``traffic_weight * traffic * load`` is
  multiplied by ``S = COEF_SCALE / (largest of them)`` and rounded, so the largest is ``COEF_SCALE``
  (10^6). The integer objective divided by ``S * U`` approximates the true objective.
* "cost": costs times ``S = COEF_SCALE / max |cost|``, rounded; when every cost is already an integer
  of at most ``COEF_SCALE`` in size, ``S = 1`` and the model is exact.
* Memory: when every finite-capacity bin's weights are integers (bytes usually are) the memory rows are
  exact with capacity floored. Otherwise weights are scaled so the largest is 10^9, rounded up, and
  capacities rounded down: conservative, so it can only reject solutions within about 1e-9 of a
  capacity, never accept one that breaks it.

Error bound (``tolerance``), for the true objective ``f`` of the extracted solution:

    f(CP-SAT optimum) <= true optimum + share_error + 2 * rounding_error

* ``rounding_error`` bounds ``|integer objective / (S U) - f|`` for any integer-model solution: each
  rounded coefficient is off by <= 1/2, and a bin's integer load sums at most ``n`` items' ``q``, ``n =
  min(I, max slots)``, while the traffic sum has ``G * I * U`` units of ``q`` in all. So
  ``rounding_error = (G * n + G * I * [traffic used]) / (2 S)``; for "cost" it is ``G * I / (2 S)``
  (0 when exact).
* ``share_error`` bounds the loss from whole-unit shares. For fixed replicas the optimal shares of a
  group solve an LP with ``I + B`` rows, so a basic optimum splits at most ``B - 1`` items; rounding
  their shares to units (largest remainder, sum kept) moves each share by < ``1/U`` and at most
  ``max_replicas`` shares per item. So ``share_error = (1/U) * sum_g (sum of the B - 1 largest w[g, i]
  over splittable items)`` with ``w[g, i] = load[g, i] * (1 / slowest candidate speed + traffic_weight *
  max_replicas * largest candidate traffic)``. Zero when no item can be split; 0 for "cost".

The objective reported for a solution is recomputed exactly with ``objective_value``; the bound in
original units is ``integer bound / (S U) - share_error - rounding_error`` (conservative: a true
lower bound on the optimum), floored at the smallest possible objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from ortools.sat.python import cp_model

from models.assignment import AssignmentSolution, ReplicatedAssignment

SHARE_UNITS = 1000
COEF_SCALE = 10**6
MEMORY_SCALE = 10**9


@dataclass(frozen=True)
class Scaling:
    """How the integer model maps to the problem: objective = integer objective / ``objective_scale``.

    ``share_units``: U. ``coef_scale``: S. ``share_error``, ``rounding_error``: see the module docstring.
    ``tolerance``: how far the CP-SAT optimum's true objective can exceed the true optimum.
    ``bound_slack``: what to subtract from a scaled integer bound to get a true bound.
    ``memory_exact``: the memory rows are exact (else conservative).
    """

    share_units: int
    coef_scale: float
    share_error: float
    rounding_error: float
    memory_exact: bool

    @property
    def objective_scale(self) -> float:
        return self.coef_scale * self.share_units

    @property
    def tolerance(self) -> float:
        return self.share_error + 2.0 * self.rounding_error

    @property
    def bound_slack(self) -> float:
        return self.share_error + self.rounding_error


class AssignmentCpModel(cp_model.CpModel):
    """A CpModel that keeps its variables (``y``, ``q``, ``z``: dicts by index) and its ``scaling``."""

    def __init__(self):
        super().__init__()
        self.y: dict[tuple[int, int, int], cp_model.IntVar] = {}
        self.q: dict[tuple[int, int, int], cp_model.LinearExprT] = {}
        self.z: dict[int, cp_model.IntVar] = {}
        self.scaling: Scaling | None = None


def _splittable(p: ReplicatedAssignment) -> np.ndarray:
    """[G, I] True where an item can have two or more replicas."""
    return (p.objective == "bottleneck") & (p.max_replicas >= 2) & (p.mask.sum(axis=2) >= 2)


def scaling(p: ReplicatedAssignment) -> Scaling:
    G, I, B = p.shape
    if p.objective == "cost":
        c = np.abs(p.cost[p.mask])
        largest = float(c.max()) if c.size else 0.0
        integral = bool(np.all(c == np.round(c))) and largest <= COEF_SCALE
        scale = 1.0 if integral or largest == 0 else COEF_SCALE / largest
        return Scaling(1, scale, 0.0, 0.0 if integral else G * I / (2 * scale), _memory_exact(p))
    time_coef = (p.load[:, :, None] / p.speed[None, None, :])[p.mask]
    traffic_coef = (p.traffic_weight * p.traffic * p.load[:, :, None])[p.mask]
    largest = max(float(time_coef.max(initial=0.0)), float(traffic_coef.max(initial=0.0)))
    scale = COEF_SCALE / largest if largest > 0 else 1.0
    n = min(I, int(p.slots.max(initial=0)))
    uses_traffic = bool(np.any(traffic_coef > 0))
    rounding = (G * n + (G * I if uses_traffic else 0)) / (2 * scale)
    slowest = np.where(p.mask, p.speed[None, None, :], np.inf).min(axis=2)
    top_traffic = np.where(p.mask, p.traffic, 0.0).max(axis=2)
    w = p.load * (1.0 / slowest + p.traffic_weight * p.max_replicas * top_traffic)
    w = np.where(_splittable(p), w, 0.0)
    share = sum(float(np.sort(w[g])[::-1][: max(B - 1, 0)].sum()) for g in range(G)) / SHARE_UNITS
    return Scaling(SHARE_UNITS, scale, share, rounding, _memory_exact(p))


def _memory_exact(p: ReplicatedAssignment) -> bool:
    finite = np.isfinite(p.capacity)
    w = p.weight[:, finite]
    return bool(np.all(w == np.round(w)) and w.sum() * p.shape[0] < 2**62)


def _memory_rows(p: ReplicatedAssignment) -> tuple[np.ndarray, np.ndarray]:
    """Integer weights [I, B] and capacities [B] (capacities of inf bins left as -1: no row)."""
    finite = np.isfinite(p.capacity)
    weight = np.zeros(p.weight.shape, dtype=np.int64)
    cap = np.full(p.capacity.shape, -1, dtype=np.int64)
    if not finite.any():
        return weight, cap
    if _memory_exact(p):
        weight[:, finite] = p.weight[:, finite].astype(np.int64)
        cap[finite] = np.floor(np.minimum(p.capacity[finite], 2.0**62)).astype(np.int64)
        return weight, cap
    largest = float(p.weight[:, finite].max())
    scale = MEMORY_SCALE / largest if largest > 0 else 1.0
    weight[:, finite] = np.ceil(p.weight[:, finite] * scale).astype(np.int64)
    cap[finite] = np.floor(np.minimum(p.capacity[finite] * scale, 2.0**62)).astype(np.int64)
    return weight, cap


def variables(m: AssignmentCpModel, p: ReplicatedAssignment) -> None:
    G, I, B = p.shape
    U = m.scaling.share_units
    split = _splittable(p)
    for g, i, b in zip(*np.nonzero(p.mask)):
        key = (int(g), int(i), int(b))
        m.y[key] = m.new_bool_var(f"y[{g},{i},{b}]")
        if p.objective == "bottleneck":
            m.q[key] = m.new_int_var(0, U, f"q[{g},{i},{b}]") if split[g, i] else U * m.y[key]
    if p.objective == "bottleneck":
        coef = _time_coefficients(m, p)
        for g in range(G):
            top = max((sum(int(coef[g, i, b]) for i in range(I)) * U for b in range(B)), default=0)
            m.z[g] = m.new_int_var(0, top, f"z[{g}]")


def _time_coefficients(m: AssignmentCpModel, p: ReplicatedAssignment) -> np.ndarray:
    return np.round(m.scaling.coef_scale * p.load[:, :, None] / p.speed[None, None, :] * p.mask).astype(np.int64)


def constraints(m: AssignmentCpModel, p: ReplicatedAssignment) -> None:
    G, I, B = p.shape
    U = m.scaling.share_units
    for g in range(G):
        for i in range(I):
            ys = [m.y[g, i, b] for b in range(B) if (g, i, b) in m.y]
            if p.objective == "cost":
                m.add_exactly_one(ys)
                continue
            m.add(sum(ys) >= 1)
            if int(p.max_replicas[g, i]) < len(ys):
                m.add(sum(ys) <= int(p.max_replicas[g, i]))
            if _splittable(p)[g, i]:
                qs = [(m.q[g, i, b], m.y[g, i, b]) for b in range(B) if (g, i, b) in m.y]
                m.add(sum(q for q, _ in qs) == U)
                for q, y in qs:
                    m.add(q <= U * y)
        for b in range(B):
            ys = [m.y[g, i, b] for i in range(I) if (g, i, b) in m.y]
            if len(ys) > p.slots[b]:
                m.add(sum(ys) <= int(p.slots[b]))
    weight, cap = _memory_rows(p)
    for b in range(B):
        if cap[b] < 0:
            continue
        terms = [int(weight[i, b]) * y for (g, i, bb), y in m.y.items() if bb == b and weight[i, b] > 0]
        if terms:
            m.add(sum(terms) <= int(cap[b]))
    if p.objective == "bottleneck":
        coef = _time_coefficients(m, p)
        for g in range(G):
            for b in range(B):
                terms = [int(coef[g, i, b]) * m.q[g, i, b] for i in range(I) if (g, i, b) in m.q and coef[g, i, b] > 0]
                if terms:
                    m.add(m.z[g] >= sum(terms))


def objective(m: AssignmentCpModel, p: ReplicatedAssignment) -> None:
    S = m.scaling.coef_scale
    if p.objective == "cost":
        m.minimize(sum(int(round(S * p.cost[key])) * y for key, y in m.y.items()))
        return
    traffic = {key: int(round(S * p.traffic_weight * p.traffic[key] * p.load[key[:2]])) for key in m.q}
    m.minimize(sum(m.z.values()) + sum(t * m.q[key] for key, t in traffic.items() if t > 0))


def build(p: ReplicatedAssignment) -> AssignmentCpModel:
    """The integer model of ``p``. Every item must have a candidate bin (check before building)."""
    m = AssignmentCpModel()
    m.scaling = scaling(p)
    variables(m, p)
    constraints(m, p)
    objective(m, p)
    return m


def extract(m: AssignmentCpModel, solver: cp_model.CpSolver, p: ReplicatedAssignment) -> AssignmentSolution:
    """The incumbent held by ``solver`` as a solution of ``p`` (shares = q / U)."""
    G, I, B = p.shape
    y = np.zeros((G, I, B), dtype=bool)
    q = np.zeros((G, I, B), dtype=np.int64)
    for key, var in m.y.items():
        y[key] = solver.boolean_value(var)
        if p.objective == "bottleneck":
            q[key] = solver.value(m.q[key])
    if p.objective == "cost":
        return AssignmentSolution(y, y.astype(float))
    return AssignmentSolution(y, q / m.scaling.share_units)


def unit_shares(shares: np.ndarray, units: int) -> np.ndarray:
    """Shares [G, I, B] rounded to whole units summing to ``units`` per item (largest remainder)."""
    exact = np.clip(shares, 0.0, 1.0) * units
    q = np.floor(exact).astype(np.int64)
    left = units - q.sum(axis=2)
    order = np.argsort(-(exact - q), axis=2, kind="stable")
    G, I, _ = shares.shape
    for g in range(G):
        for i in range(I):
            q[g, i, order[g, i, : max(int(left[g, i]), 0)]] += 1
    return q


def warm_start(m: AssignmentCpModel, p: ReplicatedAssignment, sol: AssignmentSolution) -> list[tuple[cp_model.IntVar, int]]:
    """Hint pairs for ``solve_cpsat(hint=...)``: replicas, unit shares and the groups' bottlenecks."""
    hint = [(var, int(bool(sol.replicas[key]))) for key, var in m.y.items()]
    if p.objective == "cost":
        return hint
    U = m.scaling.share_units
    q = unit_shares(np.where(sol.replicas, sol.shares, 0.0), U)
    for key, var in m.q.items():
        if isinstance(var, cp_model.IntVar):
            hint.append((var, int(q[key])))
    coef = _time_coefficients(m, p)
    for g, var in m.z.items():
        hint.append((var, int(max((coef[g, :, b] * q[g, :, b]).sum() for b in range(p.shape[2])))))
    return hint


def objective_bound(m: AssignmentCpModel, p: ReplicatedAssignment, integer_bound: float) -> float:
    """A true lower bound on the optimum of ``p`` from CP-SAT's bound on the integer model."""
    if math.isnan(integer_bound):
        return math.nan
    bound = integer_bound / m.scaling.objective_scale - m.scaling.bound_slack
    if p.objective == "bottleneck":
        return max(bound, 0.0)
    return max(bound, float(np.where(p.mask, p.cost, np.inf).min(axis=2).sum()))

