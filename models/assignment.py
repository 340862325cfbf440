"""Assignment with replication: items in groups to bins, each item split over its replicas.

Generic form of expert placement (items = experts, groups = layers, bins = devices) with no MoE
words. Shapes: ``G`` groups, ``I`` items per group, ``B`` bins.

Decision: ``y[g, i, b]`` in {0, 1} (a replica of item ``i`` of group ``g`` on bin ``b``) and
``s[g, i, b]`` in [0, 1] (share of that item's load served there), with ``sum_b s = 1`` and
``s <= y``.

Constraints:
    replicas      1 <= sum_b y[g, i, b] <= max_replicas[g, i]
    candidates    y[g, i, b] = 0 where not mask[g, i, b]
    slots         sum_i y[g, i, b] <= slots[b]                      (per group, as EPLB's slots per GPU)
    memory        sum_{g, i} weight[i, b] * y[g, i, b] <= capacity[b]   (bytes, over all groups)

Objectives (``objective``):
    "bottleneck": minimise  sum_g max_b (sum_i load[g, i] * s[g, i, b] / speed[b])
                            + traffic_weight * sum_{g, i, b} traffic[g, i, b] * load[g, i] * s[g, i, b]
                  (groups run one after another, so their bottlenecks add up; with G = 1 this is the
                  classic makespan)
    "cost":       minimise  sum_{g, i, b} cost[g, i, b] * y[g, i, b] with every item assigned exactly
                  once (max_replicas is ignored: it is taken as 1; shares are then y)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OBJECTIVES = ("bottleneck", "cost")


@dataclass(frozen=True)
class ReplicatedAssignment:
    """Problem data. Arrays are float64 / bool; see the module docstring for their meaning.

    load:          [G, I]    work of each item (e.g. tokens per step), >= 0
    speed:         [B]       relative speed of each bin (> 0): load x takes x / speed time units
    slots:         [B]       replicas a bin may hold per group (int >= 0)
    weight:        [I, B]    memory of one replica of item i on bin b (bytes, >= 0)
    capacity:      [B]       memory of each bin (bytes)
    mask:          [G, I, B] candidate bins (True = allowed)
    max_replicas:  [G, I]    replication limit (int >= 1)
    traffic:       [G, I, B] cost per unit of load served on bin b (>= 0), weighted by traffic_weight
    cost:          [G, I, B] assignment cost, used by objective "cost"
    """

    load: np.ndarray
    speed: np.ndarray
    slots: np.ndarray
    weight: np.ndarray
    capacity: np.ndarray
    mask: np.ndarray
    max_replicas: np.ndarray
    traffic: np.ndarray
    cost: np.ndarray
    traffic_weight: float = 0.0
    objective: str = "bottleneck"
    names: dict = field(default_factory=dict, compare=False)  # optional labels: "bins", "items", "groups"

    @property
    def shape(self) -> tuple[int, int, int]:
        g, i = self.load.shape
        return g, i, self.speed.shape[0]

    @classmethod
    def build(cls, load, speed, *, slots=None, weight=None, capacity=None, mask=None, max_replicas=1,
              traffic=None, cost=None, traffic_weight=0.0, objective="bottleneck", names=None) -> ReplicatedAssignment:
        """Fill defaults (no memory limit, every bin a candidate, I slots per bin, no traffic) and check shapes."""
        load = np.atleast_2d(np.asarray(load, dtype=float))
        speed = np.asarray(speed, dtype=float)
        G, I = load.shape
        B = speed.shape[0]
        slots = np.full(B, I, dtype=int) if slots is None else np.broadcast_to(np.asarray(slots, dtype=int), (B,)).copy()
        weight = np.zeros((I, B)) if weight is None else np.broadcast_to(np.asarray(weight, dtype=float), (I, B)).copy()
        capacity = np.full(B, np.inf) if capacity is None else np.broadcast_to(np.asarray(capacity, dtype=float), (B,)).copy()
        mask = np.ones((G, I, B), dtype=bool) if mask is None else np.broadcast_to(np.asarray(mask, dtype=bool), (G, I, B)).copy()
        max_replicas = np.broadcast_to(np.asarray(max_replicas, dtype=int), (G, I)).copy()
        traffic = np.zeros((G, I, B)) if traffic is None else np.broadcast_to(np.asarray(traffic, dtype=float), (G, I, B)).copy()
        cost = np.zeros((G, I, B)) if cost is None else np.broadcast_to(np.asarray(cost, dtype=float), (G, I, B)).copy()
        problem = cls(load, speed, slots, weight, capacity, mask, max_replicas, traffic, cost, float(traffic_weight),
                      objective, dict(names or {}))
        problem.check()
        return problem

    def check(self) -> None:
        """Raise ``ValueError`` naming the first array whose shape or values are wrong."""
        G, I, B = self.shape
        expect = {"slots": (B,), "weight": (I, B), "capacity": (B,), "mask": (G, I, B), "max_replicas": (G, I),
                  "traffic": (G, I, B), "cost": (G, I, B)}
        for name, shape in expect.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if np.any(self.load < 0) or not np.all(np.isfinite(self.load)):
            raise ValueError("load must be finite and >= 0")
        if np.any(self.speed <= 0) or not np.all(np.isfinite(self.speed)):
            raise ValueError("speed must be finite and > 0")
        if np.any(self.slots < 0) or np.any(self.weight < 0) or np.any(self.capacity < 0):
            raise ValueError("slots, weight and capacity must be >= 0")
        if np.any(self.max_replicas < 1):
            raise ValueError("max_replicas must be >= 1")
        if np.any(self.traffic < 0) or self.traffic_weight < 0:
            raise ValueError("traffic and traffic_weight must be >= 0")


@dataclass(frozen=True)
class AssignmentSolution:
    """replicas: [G, I, B] bool; shares: [G, I, B] float, rows summing to 1 over bins."""

    replicas: np.ndarray
    shares: np.ndarray


def bin_loads(problem: ReplicatedAssignment, sol: AssignmentSolution) -> np.ndarray:
    """Speed-normalised load of each bin in each group, shape [G, B]."""
    return np.einsum("gi,gib->gb", problem.load, sol.shares) / problem.speed[None, :]


def objective_value(problem: ReplicatedAssignment, sol: AssignmentSolution) -> float:
    if problem.objective == "cost":
        return float(np.sum(problem.cost * sol.replicas))
    value = float(bin_loads(problem, sol).max(axis=1).sum())
    if problem.traffic_weight > 0:
        value += problem.traffic_weight * float(np.sum(problem.traffic * problem.load[:, :, None] * sol.shares))
    return value


def violations(problem: ReplicatedAssignment, sol: AssignmentSolution, tol: float = 1e-6) -> list[str]:
    """Every constraint the solution breaks (empty: feasible)."""
    out = []
    G, I, B = problem.shape
    y = np.asarray(sol.replicas, dtype=bool)
    s = np.asarray(sol.shares, dtype=float)
    if y.shape != (G, I, B) or s.shape != (G, I, B):
        return [f"solution arrays must have shape {(G, I, B)}"]
    count = np.count_nonzero(y, axis=2)
    limit = np.ones_like(problem.max_replicas) if problem.objective == "cost" else problem.max_replicas
    for g, i in zip(*np.nonzero(count < 1)):
        out.append(f"item ({g}, {i}) has no replica")
    for g, i in zip(*np.nonzero(count > limit)):
        out.append(f"item ({g}, {i}) has {count[g, i]} replicas, limit {limit[g, i]}")
    if not problem.mask.all():
        for g, i, b in zip(*np.nonzero(y & ~problem.mask)):
            out.append(f"item ({g}, {i}) on bin {b} is not a candidate")
    if s.min() < -tol or s.max() > 1 + tol or np.where(y, 0.0, s).max() > tol:
        out.append("shares must lie in [0, 1] and be 0 where there is no replica")
    bad = np.abs(s.sum(axis=2) - 1.0) > tol
    for g, i in zip(*np.nonzero(bad)):
        out.append(f"shares of item ({g}, {i}) sum to {s[g, i].sum():.6f}, not 1")
    per_group = np.count_nonzero(y, axis=1)
    for g, b in zip(*np.nonzero(per_group > problem.slots[None, :])):
        out.append(f"bin {b} holds {per_group[g, b]} replicas in group {g}, slots {problem.slots[b]}")
    if np.isfinite(problem.capacity).any() and problem.weight.any():
        used = (problem.weight * np.count_nonzero(y, axis=0)).sum(axis=0)  # replicas of each item per bin, weighed
        for b in np.nonzero(used > problem.capacity * (1 + tol) + tol)[0]:
            out.append(f"bin {b} needs {used[b]:.6g} memory, capacity {problem.capacity[b]:.6g}")
    return out


def normalise_shares(replicas: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Shares [G, I, B] cleaned of solver round-off: clipped to [0, 1], zero off replicas, summing to 1
    per item; an item whose shares all vanish is split evenly over its replicas."""
    s = np.where(replicas, np.clip(shares, 0.0, 1.0), 0.0)
    total = s.sum(axis=2, keepdims=True)
    even = replicas / np.maximum(replicas.sum(axis=2, keepdims=True), 1)
    return np.where(total > 0, s / np.where(total > 0, total, 1.0), even)
