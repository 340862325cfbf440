"""CP-SAT model of :class:`models.chain.ChainPartition` (see that module for the problem).

Formulation over whole stages, which suits CP-SAT's Boolean search better than item variables and
keeps every constraint exact in spite of integer times:

    s[d, j, k]  stage "items j .. k-1 on device d", created only for stages that fit in memory and
                whose time is within the cap (with the entry / exit busy time when j = 0 / k = L)
    c[p, d, j]  cut "a stage on p ends and one on d > p starts at item j" (1 <= j < L), created only
                when its busy time is within the cap

    start          exactly one stage starts at item 0
    boundary j     per device: the stages ending at j on p equal the cuts leaving p at j, and the
                   stages starting at j on d equal the cuts entering d at j

These suffice: summed over devices they say as many stages end at j as start there, so every item
is covered as often as item 0, once; the stages partition the items, one cut joins each pair of
consecutive stages, and a cut only goes from p to d > p. One implied row is added: exactly one
stage ends at item L. (The implied "at most one cut per boundary" and "at most one stage per device"
are left out on purpose: with them CP-SAT's presolve probing grew millions of binary clauses, and a
94-item, 8-device latency case went from 4 s to over 40 s.) Memory and the cap only ever concern one stage, cut, entry or
exit, so they are enforced
by leaving variables out: feasibility is decided with the float data, as :mod:`models.chain` does.

Only the objective is integer. Times are divided by a quantum ``q`` (a power of two, so the division
is exact) with ``q <= T / resolution`` for ``T`` an upper bound on the objective of any solution
(bottleneck: the largest busy time; latency: a sum of the largest terms), and rounded to the
nearest integer: each term is off by at most ``q / 2``. A solution's scaled objective is therefore
within ``error_s`` of its true value, ``q / 2`` for the bottleneck (one term attains the max) and
``(2 min(D, L) - 1) q / 2`` for the latency (at most ``min(D, L)`` stage terms, entry and exit folded
into them, and one cut fewer). An optimum of the scaled model is within ``2 error_s`` of the true
optimum, and ``scaled bound * q - error_s`` is a valid bound on the true optimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from models.chain import ChainPartition, Stage

DEFAULT_RESOLUTION = 1_000_000


@dataclass
class ChainCpModel:
    """The CP-SAT model and its variables; times in the objective are in units of ``time_unit_s``."""

    model: cp_model.CpModel
    time_unit_s: float
    error_s: float
    stage: dict = field(default_factory=dict)  # (d, j, k) -> BoolVar
    cut: dict = field(default_factory=dict)    # (p, d, j) -> BoolVar
    t: cp_model.IntVar | None = None           # bottleneck objective only

    def scaled(self, seconds: float) -> int:
        return int(round(seconds / self.time_unit_s))


def _coefficients(p: ChainPartition) -> tuple[dict, dict]:
    """Objective term (s) of each allowed stage and cut, filtered by memory and the cap."""
    D, L = p.shape
    cap = p.max_bottleneck
    bottleneck = p.objective == "bottleneck"
    P, M = p.compute_prefix, p.memory_prefix
    stage = {}
    for d in range(D):
        for j in range(L):
            for k in range(j + 1, L + 1):
                time = float(P[d, k] - P[d, j])
                busy = max(time, p.entry_busy[d] if j == 0 else 0.0, p.exit_busy[d] if k == L else 0.0)
                if M[d, k] - M[d, j] > p.capacity[d] or busy > cap:
                    continue
                if bottleneck:
                    stage[d, j, k] = float(busy)
                else:
                    stage[d, j, k] = time + (p.entry_latency[d] if j == 0 else 0.0) + (p.exit_latency[d] if k == L else 0.0)
    cost = p.transfer_busy if bottleneck else p.transfer_latency
    cut = {(q, d, j): float(cost[q, d, j - 1]) for j in range(1, L) for q in range(D) for d in range(q + 1, D)
           if p.transfer_busy[q, d, j - 1] <= cap}
    return stage, cut


def _quantum(p: ChainPartition, stage: dict, cut: dict, resolution: int) -> tuple[float, float]:
    """``(q, error_s)``: the time quantum and the bound on one solution's rounding error (s)."""
    D, L = p.shape
    terms = min(D, L)
    if p.objective == "bottleneck":
        top = max([*stage.values(), *cut.values(), 0.0])
    else:
        largest = lambda values: max(values, default=0.0)  # noqa: E731
        top = terms * largest(stage.values()) + (terms - 1) * largest(cut.values())
    q = 2.0 ** math.floor(math.log2(top / resolution)) if top > 0 else 1.0
    return q, (q / 2 if p.objective == "bottleneck" else (2 * terms - 1) * q / 2)


def variables(cm: ChainCpModel, p: ChainPartition, stage: dict, cut: dict) -> None:
    m = cm.model
    cm.stage = {key: m.new_bool_var(f"s{key}") for key in stage}
    cm.cut = {key: m.new_bool_var(f"c{key}") for key in cut}
    if p.objective == "bottleneck":
        cm.t = m.new_int_var(0, max([cm.scaled(v) for v in (*stage.values(), *cut.values())], default=0), "t")


def constraints(cm: ChainCpModel, p: ChainPartition) -> None:
    D, L = p.shape
    m, s, c = cm.model, cm.stage, cm.cut
    m.add_exactly_one([v for (d, j, k), v in s.items() if j == 0])
    m.add_exactly_one([v for (d, j, k), v in s.items() if k == L])
    # At boundary j (1 <= j < L), per device: stages ending / starting there, cuts leaving / entering.
    ending, starting, leaving, entering = ({(d, j): [] for d in range(D) for j in range(1, L)} for _ in range(4))
    for (d, j, k), v in s.items():
        if k < L:
            ending[d, k].append(v)
        if j > 0:
            starting[d, j].append(v)
    for (q, d, j), v in c.items():
        leaving[q, j].append(v)
        entering[d, j].append(v)
    total = cp_model.LinearExpr.sum
    for j in range(1, L):
        for d in range(D):
            m.add(total(ending[d, j]) == total(leaving[d, j]))
            m.add(total(starting[d, j]) == total(entering[d, j]))


def objective(cm: ChainCpModel, p: ChainPartition, stage: dict, cut: dict) -> None:
    D, L = p.shape
    m = cm.model

    def scaled_sum(terms: dict, chosen: dict, keep=lambda key: True):
        keys = [key for key in chosen if keep(key)]
        return cp_model.LinearExpr.weighted_sum([chosen[key] for key in keys], [cm.scaled(terms[key]) for key in keys])

    if p.objective == "latency":
        m.minimize(scaled_sum(stage, cm.stage) + scaled_sum(cut, cm.cut))
        return
    # One row per device (it holds one stage at most) and per boundary (one cut at most) gives the LP
    # bound; the same bounds enforced per variable propagate better (about 1.5x faster on 61 items).
    for d in range(D):
        m.add(cm.t >= scaled_sum(stage, cm.stage, lambda key, d=d: key[0] == d))
    for j in range(1, L):
        m.add(cm.t >= scaled_sum(cut, cm.cut, lambda key, j=j: key[2] == j))
    for terms, chosen in ((stage, cm.stage), (cut, cm.cut)):
        for key, v in chosen.items():
            m.add(cm.t >= cm.scaled(terms[key])).only_enforce_if(v)
    m.minimize(cm.t)


def build(p: ChainPartition, resolution: int = DEFAULT_RESOLUTION) -> ChainCpModel:
    """The model; ``resolution`` sets the quantum (see the module docstring)."""
    stage, cut = _coefficients(p)
    q, error_s = _quantum(p, stage, cut, resolution)
    cm = ChainCpModel(cp_model.CpModel(), q, error_s)
    variables(cm, p, stage, cut)
    constraints(cm, p)
    objective(cm, p, stage, cut)
    return cm


def extract(cm: ChainCpModel, solver: cp_model.CpSolver) -> list[Stage]:
    """Stages of the solver's solution, in item order."""
    return sorted((Stage(*key) for key, v in cm.stage.items() if solver.boolean_value(v)), key=lambda s: s.first)


def warm_start(cm: ChainCpModel, stages) -> list[tuple[cp_model.IntVar, int]]:
    """Hint ``(variable, value)`` pairs for ``stages``: every stage and cut variable (``t`` follows).
    A start over memory or the cap uses a stage or cut the model left out; its hint is then
    infeasible and CP-SAT repairs it instead of rejecting it."""
    chosen = {Stage(*map(int, s)) for s in stages}
    ordered = sorted(chosen, key=lambda s: s.first)
    cuts = {(s.device, t.device, t.first) for s, t in zip(ordered, ordered[1:])}
    return ([(v, int(key in chosen)) for key, v in cm.stage.items()]
            + [(v, int(key in cuts)) for key, v in cm.cut.items()])
