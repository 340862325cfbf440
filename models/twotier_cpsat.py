"""CP-SAT model of :class:`models.twotier.TwoTierProblem` (the same equations as the MILP).

Integer scaling: every time coefficient is rounded to the nearest multiple of ``time_unit_s``,
chosen so that the sum of all time coefficients is about 2^40 units (so no sum overflows int64);
a busy time is then off by at most half a unit per term it sums, a request latency by the phase
weights times that, the period by the larger of the two (latency over concurrency). Memory is in bytes rounded up per term
and capacities rounded down
(conservative by at most one byte per term); losses are in 1e-12 units rounded up, the budget
rounded down. The solution is re-evaluated exactly with :func:`models.twotier.evaluate`; only the
proof of optimality carries the scaling tolerance ``objective_error``.

Split into variables, expressions (latency, busy time, memory), constraints by family and the
objective; :func:`build` assembles them.
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


# Every time sum is below 2^40 units by the choice of unit (:func:`_time_unit`): a safe upper bound
# for the integer variables (races and the period).
_BIG = 2**42


@dataclass(frozen=True)
class _Scale:
    """Seconds to the model's integer time units (``unit`` seconds each)."""

    unit: float

    def t(self, seconds) -> int:
        """A time coefficient, rounded to the nearest unit."""
        return int(round(float(seconds) / self.unit))

    def cap(self, seconds: float) -> int:
        """A time limit, rounded down (so a solution within it is within the limit in seconds)."""
        return int(math.floor(seconds / self.unit))


def _bytes_up(nbytes) -> int:
    """A memory coefficient in whole bytes, rounded up (capacities are rounded down)."""
    return int(math.ceil(float(nbytes)))


# ----- variables -------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Variables:
    """The model's variables (the decisions of :mod:`models.twotier`), created in this order, and
    the expressions of the machines used at the two ends."""

    a: list                 # [L] bool: layer l is near (the near layers form a prefix)
    x: dict                 # (l, e) -> bool: item e of layer l is served near; only items that exist and are allowed
    u: list                 # [L] bool: near layer l serves some item far (and pays the round trip fixed_lat)
    z: list                 # [K] bool: the cut option
    y: list                 # [K] bool: z[k] and there is a cut
    race: list              # [P][L] int, time units: layer l's near/far race in phase ph (the longer side)
    T: cp_model.IntVar      # int, time units: the period
    first: cp_model.IntVar  # a[0]: the first layer (and the embedding) is near
    last: cp_model.IntVar   # a[L-1]: the last layer (and the head) is near
    cut: cp_model.LinearExpr  # first - last: 1 when the model is split between the machines

    def xv(self, l: int, e: int):
        """x[l, e], or 0 for an item that cannot be near (absent or not allowed)."""
        return self.x.get((l, e), 0)


def _variables(md: cp_model.CpModel, p: TwoTierProblem) -> _Variables:
    """Every variable, up front: the model numbers them in creation order (constraints create none)."""
    L, E, K, P = p.num_layers, p.num_items, p.num_options, p.ne_lat.shape[2]
    ex = p.exists
    a = [md.new_bool_var(f"a{l}") for l in range(L)]
    x = {(l, e): md.new_bool_var(f"x{l}_{e}") for l in range(L) for e in range(E) if ex[l, e] and p.allowed[l, e]}
    u = [md.new_bool_var(f"u{l}") for l in range(L)]
    z = [md.new_bool_var(f"z{k}") for k in range(K)]
    y = [md.new_bool_var(f"y{k}") for k in range(K)]
    race = [[md.new_int_var(0, _BIG, f"race{l}_{ph}") for l in range(L)] for ph in range(P)]
    T = md.new_int_var(0, _BIG, "T")
    return _Variables(a, x, u, z, y, race, T, a[0], a[L - 1], a[0] - a[L - 1])


# ----- expressions (no model changes) ----------------------------------------------------------

def _phase_latency(p: TwoTierProblem, v: _Variables, sc: _Scale, ph: int):
    """Latency of phase ph (time units): every layer on its side plus its race, the ends, the cut
    and the origin's entry and exit when the first or last layer is far."""
    L = p.num_layers
    terms = []
    for l in range(L):
        # A far layer serves all its items far.
        far_all = float((p.exists[l] * p.item_lat[FAR, l, :, ph]).sum())
        terms.append(sc.t(p.ne_lat[NEAR, l, ph]) * v.a[l] + sc.t(p.ne_lat[FAR, l, ph] + far_all) * (1 - v.a[l]) + v.race[ph][l])
    terms.append(sc.t(p.ends_lat[0, NEAR, ph]) * v.first + sc.t(p.ends_lat[0, FAR, ph]) * (1 - v.first))
    terms.append(sc.t(p.ends_lat[1, NEAR, ph]) * v.last + sc.t(p.ends_lat[1, FAR, ph]) * (1 - v.last))
    terms.append(sum(sc.t(p.cut_lat[k, ph]) * v.y[k] for k in range(p.num_options)))
    terms.append(sc.t(p.entry_lat[ph]) * (1 - v.first) + sc.t(p.exit_lat[ph]) * (1 - v.last))
    return sum(terms)


def _request_latency(p: TwoTierProblem, lat: list):
    """R = sum_ph lat_weight[ph] * lat[ph] (time units); CP-SAT needs the weights to be integers."""
    if not np.allclose(p.lat_weight, np.round(p.lat_weight)):
        raise ValueError("phase latency weights must be integers (output tokens)")
    return sum(int(round(p.lat_weight[ph])) * lat[ph] for ph in range(len(lat)))


def _busy(p: TwoTierProblem, v: _Variables, sc: _Scale) -> tuple:
    """(near, far) busy time per request (time units)."""
    L, E, K = p.num_layers, p.num_items, p.num_options
    ex = p.exists
    near = (sum(sc.t(p.ne_busy[NEAR, l]) * v.a[l] for l in range(L))
            + sum(sc.t(p.item_busy[NEAR, l, e]) * var for (l, e), var in v.x.items())
            + sc.t(p.ends_busy[0, NEAR]) * v.first + sc.t(p.ends_busy[1, NEAR]) * v.last
            + sum(sc.t(p.cut_busy[NEAR, k]) * v.y[k] for k in range(K)))
    far = (sum(sc.t(p.ne_busy[FAR, l]) * (1 - v.a[l]) for l in range(L))
           + sum(sc.t(p.item_busy[FAR, l, e]) * (1 - v.xv(l, e)) for l in range(L) for e in range(E) if ex[l, e])
           + sc.t(p.ends_busy[0, FAR]) * (1 - v.first) + sc.t(p.ends_busy[1, FAR]) * (1 - v.last)
           + sum(sc.t(p.cut_busy[FAR, k]) * v.y[k] for k in range(K)))
    return near, far


def _link_busy(p: TwoTierProblem, v: _Variables, sc: _Scale, j: int):
    """Busy time per request of link j (time units): far items' traffic, entry and exit, the cut."""
    L, E, K = p.num_layers, p.num_items, p.num_options
    ex = p.exists
    return (sum(sc.t(p.item_link_busy[j, l, e]) * (v.a[l] - v.xv(l, e)) for l in range(L) for e in range(E) if ex[l, e])
            + sc.t(p.entry_busy[j]) * (1 - v.first) + sc.t(p.exit_busy[j]) * (1 - v.last)
            + sum(sc.t(p.cut_busy[2 + j, k]) * v.y[k] for k in range(K)))


def _memory(p: TwoTierProblem, v: _Variables) -> tuple:
    """(near, far) memory (bytes, each term rounded up); one machine holding both ends of a model
    with tied embeddings saves the head's copy."""
    L, E, K = p.num_layers, p.num_items, p.num_options
    ex = p.exists
    tied = int(math.floor(p.head_tied_mem))
    near = (sum(_bytes_up(p.ne_mem[NEAR, l]) * v.a[l] for l in range(L))
            + sum(_bytes_up(p.item_mem[l, e]) * var for (l, e), var in v.x.items())
            + _bytes_up(p.ends_mem[0, NEAR] + p.workspace_mem[NEAR]) * v.first
            + (_bytes_up(p.ends_mem[1, NEAR]) - tied) * v.last
            + sum(_bytes_up(p.cut_mem[NEAR, k]) * v.y[k] for k in range(K)))
    far = (sum(_bytes_up(p.ne_mem[FAR, l]) * (1 - v.a[l]) for l in range(L))
           + sum(_bytes_up(p.item_mem[l, e]) * (1 - v.xv(l, e)) for l in range(L) for e in range(E) if ex[l, e])
           + (_bytes_up(p.ends_mem[0, FAR]) - tied) * (1 - v.first)
           + _bytes_up(p.ends_mem[1, FAR] + p.workspace_mem[FAR]) * (1 - v.last)
           + sum(_bytes_up(p.cut_mem[FAR, k]) * v.y[k] for k in range(K)))
    return near, far


# ----- constraints -----------------------------------------------------------------------------

def _structure_constraints(md: cp_model.CpModel, p: TwoTierProblem, v: _Variables) -> None:
    """The near layers form a prefix; an item is near only on a near layer; u flags a near layer
    with a far item; one cut option, and y[k] = z[k] AND cut (linearised)."""
    L, E, K = p.num_layers, p.num_items, p.num_options
    for l in range(L - 1):
        md.add(v.a[l] >= v.a[l + 1])
    for (l, _), var in v.x.items():
        md.add(var <= v.a[l])
    for l in range(L):
        for e in range(E):
            if p.exists[l, e]:
                md.add(v.u[l] >= v.a[l] - v.xv(l, e))
    md.add(sum(v.z) == 1)
    for k in range(K):
        md.add(v.y[k] <= v.z[k])
        md.add(v.y[k] <= v.cut)
        md.add(v.y[k] >= v.z[k] + v.cut - 1)


def _accuracy_constraint(md: cp_model.CpModel, p: TwoTierProblem, v: _Variables) -> None:
    """The cut option's loss within the budget (losses in LOSS_UNIT, rounded up; the budget down)."""
    K = p.num_options
    md.add(sum(int(math.ceil(p.cut_loss[k] / LOSS_UNIT)) * v.y[k] for k in range(K))
           <= int(math.floor(p.loss_budget / LOSS_UNIT + 1e-9)))


def _race_constraints(md: cp_model.CpModel, p: TwoTierProblem, v: _Variables, sc: _Scale) -> None:
    """A near layer waits for the longer of its near items and its far ones (the round trip plus
    the far items and their traffic): race[ph][l] is at least either side."""
    L, E, P = p.num_layers, p.num_items, p.ne_lat.shape[2]
    ex = p.exists
    for ph in range(P):
        for l in range(L):
            race = v.race[ph][l]
            md.add(race >= sum(sc.t(p.item_lat[NEAR, l, e, ph]) * v.xv(l, e) for e in range(E) if ex[l, e]))
            md.add(race >= sc.t(p.fixed_lat[ph]) * v.u[l] + sum(
                sc.t(p.item_lat[FAR, l, e, ph] + p.item_link_lat[l, e, ph]) * (v.a[l] - v.xv(l, e)) for e in range(E) if ex[l, e]))


def _period_constraints(md: cp_model.CpModel, p: TwoTierProblem, v: _Variables, sc: _Scale, busy: tuple, R) -> None:
    """The period T is at least every resource's busy time per request (near, far, each link) and
    the request latency over the requests in flight."""
    busy_near, busy_far = busy
    md.add(v.T >= busy_near)
    md.add(v.T >= busy_far)
    for j in range(p.num_links):
        md.add(v.T >= _link_busy(p, v, sc, j))
    conc = p.concurrency
    if float(conc).is_integer():
        md.add(int(conc) * v.T >= R)
    else:
        raise ValueError("concurrency must be an integer")


def _memory_constraints(md: cp_model.CpModel, p: TwoTierProblem, v: _Variables) -> None:
    """Each machine's memory within its capacity (rounded down to whole bytes); none if unlimited."""
    mem_near, mem_far = _memory(p, v)
    if np.isfinite(p.capacity[NEAR]):
        md.add(mem_near <= int(math.floor(p.capacity[NEAR])))
    if np.isfinite(p.capacity[FAR]):
        md.add(mem_far <= int(math.floor(p.capacity[FAR])))


def _cap_constraints(md: cp_model.CpModel, p: TwoTierProblem, v: _Variables, sc: _Scale, R, lat: list) -> None:
    """The optional caps: on the period (a throughput floor), the request latency and each phase's
    latency (the SLOs)."""
    if p.max_period is not None:
        md.add(v.T <= sc.cap(p.max_period))
    if p.max_request_latency is not None:
        md.add(R <= sc.cap(p.max_request_latency))
    for ph, capv in enumerate(p.max_phase_latency):
        if capv is not None:
            md.add(lat[ph] <= sc.cap(capv))


def _case_constraints(md: cp_model.CpModel, v: _Variables, case: tuple[int, int] | None) -> None:
    """Fix which machines are used, (a[0], a[L-1]), when a case is given."""
    if case is not None:
        md.add(v.first == case[0])
        md.add(v.last == case[1])


# ----- objective -------------------------------------------------------------------------------

def _objective(md: cp_model.CpModel, p: TwoTierProblem, v: _Variables, sc: _Scale, case: tuple[int, int] | None,
               busy: tuple, R) -> float:
    """Minimise the period, the request latency or the energy per request; returns the objective's
    unit (seconds or joules per objective unit)."""
    if p.objective == "throughput":
        md.minimize(v.T)
        return sc.unit
    if p.objective == "latency":
        md.minimize(R)
        return sc.unit
    if case is None:
        raise ValueError("the energy objective needs a fixed case (which machines are used)")
    busy_near, busy_far = busy
    idle = case[0] * p.idle_w[NEAR] + (1 - case[1]) * p.idle_w[FAR]
    # Watts scaled to milliwatts (integers): energy unit = unit x 1e-3 J.
    w = lambda watts: int(round(watts * 1e3))  # noqa: E731
    md.minimize(w(idle) * v.T + w(p.power_w[NEAR] - p.idle_w[NEAR]) * busy_near + w(p.power_w[FAR] - p.idle_w[FAR]) * busy_far)
    return sc.unit * 1e-3


def _objective_error(p: TwoTierProblem, unit: float) -> float:
    """The largest error the integer scaling can put on the objective (seconds or joules)."""
    L, E, K = p.num_layers, p.num_items, p.num_options
    # Each coefficient is off by at most half a unit. A busy row sums at most n_busy of them; a
    # phase latency at most n_lat (a layer's race counts its longer side); R weights the phases.
    n_busy = L * (E + 1) + 4 + K + 1
    n_lat = L * (2 * E + 3) + 6 + K
    error_busy = 0.5 * unit * n_busy
    error_R = 0.5 * unit * n_lat * float(np.abs(p.lat_weight).sum())
    error_T = max(error_busy, error_R / p.concurrency)
    if p.objective == "throughput":
        return error_T
    if p.objective == "latency":
        return error_R
    # Watts are rounded to whole milliwatts too: four coefficients (idle and active, two
    # machines), each off by 0.5 mW over at most T_bound_s seconds.
    return (error_T * float(p.idle_w.sum()) + error_busy * float((p.power_w - p.idle_w).sum())
            + 4 * 0.5e-3 * T_bound_s(p))


def build(p: TwoTierProblem, case: tuple[int, int] | None = None) -> CpTwoTier:
    """The CP-SAT model of ``p``; ``case`` optionally fixes ``(a[0], a[L-1])`` (which machines are
    used; the energy objective needs one)."""
    sc = _Scale(_time_unit(p))
    md = cp_model.CpModel()
    v = _variables(md, p)
    _structure_constraints(md, p, v)
    _accuracy_constraint(md, p, v)
    _race_constraints(md, p, v, sc)
    lat = [_phase_latency(p, v, sc, ph) for ph in range(p.ne_lat.shape[2])]
    R = _request_latency(p, lat)
    busy = _busy(p, v, sc)
    _period_constraints(md, p, v, sc, busy, R)
    _memory_constraints(md, p, v)
    _cap_constraints(md, p, v, sc, R, lat)
    _case_constraints(md, v, case)
    obj_unit = _objective(md, p, v, sc, case, busy, R)
    return CpTwoTier(md, v.a, v.x, v.z, v.T, obj_unit, sc.unit, _objective_error(p, sc.unit))


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
