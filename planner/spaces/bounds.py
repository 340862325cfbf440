"""Bounds on the whole plan space: no plan of an instance does better than :func:`plan_space_bound`.

The plan space is the one :class:`~planner.domain.plan.Plan` expresses: pipelines of contiguous
stages over disjoint devices, routed experts placed and replicated anywhere (expert parallelism)
with token shares, codec ranks at cuts, a group gate on end devices, several pipelines with
request shares, any micro-batching ``b x m <= max_batch``. The bound is a linear relaxation of the
cost model (:mod:`planner.cost`), solved with HiGHS (:mod:`solvers.highs_arrays`):

* Work. Every layer's non-expert block runs somewhere: ``f[l, k]`` is the share of requests whose
  layer ``l`` runs on device class ``k`` (devices of equal hardware and memory form a class; an
  optimal relaxed solution can be spread evenly over a class). Its routed experts' work is spread
  by ``g[l, k]`` (a share of the layer's expert work, in the work units of a reference class),
  held by ``h[l, k]`` (a share of the layer's experts, by count): a device class that holds a share
  ``h`` of the experts does at most ``C_l(h)`` of their work, ``C_l`` the concave curve of the
  routing mass the most popular experts cover. Times come from the cost model's own roofline terms
  at the micro-batch ``b`` (:class:`~planner.cost.compute.LayerTimes`); a class's expert time is
  its least time per unit of reference work, so splitting an expert (each replica reads its
  weights) or moving it to a slower device never looks cheaper than it is.
* Group gates (where the instance prices them) may drop a layer's other experts: a layer's
  expert work and the experts it holds are then at least those of the cheapest subset covering the
  least coverage the accuracy budget allows for that layer gated alone (work: a fractional
  knapsack, cheapest work per routing mass first; count: the most popular first); jointly, the
  layers' drops pay at least a convex lower envelope of their least losses within the budget and
  shed at most the work curve's share; the origin's deficit and every pipeline's weights are net
  of the most the budget lets gates drop.
* Busy time. Per request, a class is busy for its share of prefill plus ``(output - 1) / b``
  decode steps; a class of ``n`` devices has ``n`` periods ``T`` of capacity: ``busy_k <= n_k T``,
  and throughput ``<= output / T``. Links, codecs, embedding and LM head cost nothing here (they
  only add time).
* Memory. ``sum_l f[l, k] (non-expert bytes + KV of one micro-batch) + h[l, k] expert bytes <=
  memory of the class``: a relaxation, since a device holding a layer holds all of it.
* Latency. A request's latency is at least the sum over layers of the non-expert time where they
  run plus each layer's expert makespan (its expert work spread evenly over the devices of every
  class that holds some), plus one round trip to the nearest other device per token when the
  origin cannot hold the model. A single pipeline serves at most ``b * m`` requests per latency
  (the latency loop): ``latency <= b m T``. Several pipelines (replicas on disjoint devices)
  escape that loop but not the busy times: then the bound is the smaller of the busy bound and
  what ``P`` pipelines serve in their loops (``P`` the most replicas the fleet's memory holds): at
  most one holds the origin, with at least the relaxation's latency; every other one sends its
  tokens from the origin to its device nearest the origin and back (that round trip per token, on
  top of the compute), and no two share that device (:func:`_replicas_loop_bound`).

The micro-batch ``b`` is a decision, so the relaxation is solved for every ``b`` (with
``m = floor(max_batch / b)``, the most concurrency) and the best value kept. The bound is valid
for the throughput objective (an upper bound, tokens/s), the latency objective (a lower bound on
request latency, ms: ``b = 1``) and the energy objective (a lower bound, J/token: busy energy at
``b = max_batch``, idle power ignored). SLOs, the accuracy budget and the latency of links only
make plans worse, so they are left out: the bound is loose where they bind, never wrong.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix

from planner.cost.compute import op_time_s
from planner.cost.costmodel import CostModel
from planner.cost.passes import remote_call_probability
from planner.domain.instance import Instance
from planner.domain.units import GB
from solvers.highs_arrays import solve_arrays
from solvers.result import Status

_TINY = 1e-300


@dataclass(frozen=True)
class Bound:
    """A bound on every plan's objective: ``value`` in the objective's units (tokens/s from above, ms
    or J/token from below); ``micro_batch`` the ``b`` that gives it; ``binding`` the relaxation's
    binding part (``busy``, ``latency loop``, ``latency``, ``energy``); ``solve_time_s``."""

    value: float
    objective: str
    micro_batch: int
    binding: str
    solve_time_s: float
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Class:
    devices: tuple[str, ...]
    memory_bytes: float
    busy_power_w: float  # power - idle power


def _classes(cm: CostModel) -> list[_Class]:
    """Devices of equal hardware signature, memory and power, in fleet order."""
    groups: dict = {}
    for d in cm.instance.devices:
        key = (cm.times.hardware_of(d.name), d.memory_bytes, d.power_w, d.idle_power_w)
        groups.setdefault(key, []).append(d)
    return [_Class(tuple(x.name for x in ds), ds[0].memory_bytes, ds[0].power_w - ds[0].idle_power_w)
            for ds in groups.values()]


_MAX_PIECES = 16  # tangent lines kept of each coverage curve


def _coverage_pieces(w: np.ndarray) -> list[tuple[float, float]]:
    """(slope, intercept) of linear pieces of ``C(h)``: the largest share of ``w``'s total that
    ``h * len(w)`` of its entries cover (the largest first), a concave curve from (0, 0) to (1, 1).
    Every piece's line lies above the curve, so keeping some of them (at most ``_MAX_PIECES``,
    spread geometrically over the curve) still bounds it from above."""
    total = float(w.sum())
    n = len(w)
    if total <= 0 or n == 0:
        return [(0.0, 1.0)]
    cum = np.concatenate([[0.0], np.cumsum(np.sort(w)[::-1]) / total])
    keep = sorted({int(round(x)) for x in np.geomspace(1, n, min(n, _MAX_PIECES))} | {1, n})
    pieces = []
    for j in keep:
        i = j - 1
        slope = (cum[i + 1] - cum[i]) * n
        pieces.append((float(slope), float(cum[i] - slope * i / n)))
    return pieces


@dataclass(frozen=True)
class _Gates:
    """What group gates may drop, per MoE layer ``l`` of ``layers`` (the others keep everything):
    ``coverage[l]`` the least routing-mass coverage the accuracy budget allows that layer gated
    alone (:meth:`planner.domain.instance.GroupGateLoss.least_coverage`), ``mass[l]`` its experts'
    routing shares, ``held[l]`` the fewest experts (a share) covering it, ``lines[l]`` its loss
    lines (:func:`_drop_loss_lines`)."""

    layers: tuple[int, ...]
    coverage: dict
    mass: dict
    held: dict
    lines: dict


def _gates(cm: CostModel) -> _Gates | None:
    """:class:`_Gates` of the instance, once per bound; None when it prices no group gate or none may
    drop an expert within the budget."""
    inst = cm.instance
    gate, m = inst.constraints.group_gate_loss, inst.model
    if not gate.known or m.num_experts == 0:
        return None
    budget = inst.constraints.accuracy_loss_budget
    coverage = {l: gate.least_coverage(budget, l, m.num_moe_layers) for l in m.moe_layers}
    layers = tuple(l for l in m.moe_layers if coverage[l] < 1.0)
    if not layers:
        return None
    mass = {l: np.asarray(cm.q[cm.moe_index[l]], dtype=float) / max(m.top_k, 1) for l in layers}
    return _Gates(layers, coverage, mass, {l: _fewest_share(mass[l], coverage[l]) for l in layers},
                  {l: _drop_loss_lines(gate, l, m.num_moe_layers, mass[l]) for l in layers})


def _least_work_share(w: np.ndarray, mass: np.ndarray, c: float) -> float:
    """The least share of ``w``'s total that experts covering ``c`` of ``mass`` can do (a fractional
    knapsack: cheapest work per mass first; at least one expert, which a gate keeps). A gated
    layer's kept experts serve all its tokens, each at least its own work (time grows with tokens)."""
    total = float(w.sum())
    if total <= 0:
        return 1.0
    least = float(w.min())
    if c > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(mass > 0, w / np.where(mass > 0, mass, 1.0), np.inf)
        order = np.argsort(ratio, kind="stable")
        got, work = 0.0, 0.0
        for e in order.tolist():
            if got >= c or not math.isfinite(ratio[e]):
                break
            take = min(1.0, (c - got) / mass[e])
            got += take * mass[e]
            work += take * w[e]
        least = max(least, work)
    return min(1.0, least / total)


def _drop_loss_lines(gate, layer: int, num_moe_layers: int, mass: np.ndarray) -> list[tuple[float, float]]:
    """(slope, intercept) of lines below the least gate loss of ``layer`` as a function of the share
    ``D`` of its experts dropped: dropping ``j`` of them leaves at most the coverage ``1 -`` (the
    ``j`` least popular's mass), so the loss is at least ``L_j``, the least loss up to that coverage;
    the lines are the edges of the lower convex hull of ``(0, 0)`` and the points ``(j / E, L_j)``,
    ``j < E`` (at least one expert is kept), so their maximum lies below every point."""
    E = len(mass)
    dropped = np.cumsum(np.sort(mass))[:-1]  # j = 1 .. E - 1 least popular
    points = [(0.0, 0.0)] + [(j / E, gate.least_loss_up_to(max(0.0, 1.0 - float(x)), layer, num_moe_layers))
                             for j, x in enumerate(dropped.tolist(), start=1)]
    hull: list[tuple[float, float]] = []
    for p in points:  # lower hull, left to right
        while len(hull) >= 2 and ((hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                                  - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])) <= 0:
            hull.pop()
        hull.append(p)
    lines = []
    for (x0, y0), (x1, y1) in zip(hull, hull[1:]):
        slope = (y1 - y0) / (x1 - x0)
        lines.append((slope, y0 - slope * x0))
    return lines


def _fewest_share(mass: np.ndarray, c: float) -> float:
    """The fewest experts (a share of them) whose ``mass`` covers ``c``, at least one."""
    covered = np.cumsum(np.sort(mass)[::-1])
    need = int(np.searchsorted(covered, c - 1e-12)) + 1 if c > 0 else 1
    return min(1.0, max(1, need) / len(mass))


class _Terms:
    """The relaxation's coefficients for every micro-batch in ``[b_lo, b_hi]``, per layer and class:
    busy times at ``b_hi`` (they fall as ``b`` grows), latencies and one micro-batch's KV cache at
    ``b_lo`` (they grow with ``b``), so that they bound every ``b`` of the interval."""

    def __init__(self, cm: CostModel, classes: list[_Class], b_lo: int, b_hi: int | None = None,
                 gates: _Gates | None = None):
        b_hi = b_lo if b_hi is None else b_hi
        m = cm.model
        out = cm.output
        L, K = m.num_layers, len(classes)
        self.L, self.K = L, K
        steps = (out - 1.0) / b_hi  # decode steps per request, in units of one micro-batch step
        reps = [c.devices[0] for c in classes]
        self.ne_busy = np.zeros((L, K))
        self.ne_lat = np.zeros((L, K))
        x_busy, x_lat = [], []
        for k, d in enumerate(reps):
            ne_p, _ = cm.times.layer_times(d, cm.prompt, cm.prompt / 2.0, True)
            ne_hi, _ = cm.times.layer_times(d, float(b_hi), cm.decode_context, False)
            ne_lo, _ = cm.times.layer_times(d, float(b_lo), cm.decode_context, False)
            self.ne_busy[:, k] = ne_p + steps * ne_hi
            self.ne_lat[:, k] = ne_p + (out - 1.0) * ne_lo
            xp = cm.times.expert_matrix(d, cm.prompt)
            x_busy.append(xp + steps * cm.times.expert_matrix(d, float(b_hi)))
            x_lat.append(xp + (out - 1.0) * cm.times.expert_matrix(d, float(b_lo)))
        self.moe = np.array([m.is_moe_layer(l) for l in range(L)])
        E = max(m.num_experts, 1)
        # Work units: the reference class's per-expert times; a class's rate is its least time per unit.
        self.w_busy, self.w_lat = x_busy[0], x_lat[0]  # [L, E]
        self.rho_busy = np.zeros((L, K))
        self.rho_lat = np.zeros((L, K))
        for k in range(K):
            for rho, x, w in ((self.rho_busy, x_busy[k], self.w_busy), (self.rho_lat, x_lat[k], self.w_lat)):
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(w > 0, x / np.maximum(w, _TINY), np.inf)
                rho[:, k] = np.where(self.moe, np.min(ratio, axis=1), 0.0)
        self.W_busy = self.w_busy.sum(axis=1)
        self.W_lat = self.w_lat.sum(axis=1)
        # Group gates (where the instance prices them) may drop a layer's other experts: its expert
        # work and the experts held are then at least those of the cheapest subset that covers the
        # least coverage the accuracy budget allows (:class:`_Gates`; 1: no gate).
        # Jointly, the layers' gate losses share the budget: a layer that drops a share D of its
        # experts (by count) pays at least its loss lines at D (:func:`_drop_loss_lines`) and sheds
        # at most the work curve's share at D (the pieces below) of its expert work.
        self.keep_busy, self.keep_lat, self.keep_held = np.ones(L), np.ones(L), np.ones(L)
        self.drop_lines: list[list[tuple[float, float]]] = [[] for _ in range(L)]
        self.loss_budget = float(cm.instance.constraints.accuracy_loss_budget)
        for l in gates.layers if gates is not None else ():
            mass, c = gates.mass[l], gates.coverage[l]
            self.keep_busy[l] = _least_work_share(self.w_busy[l], mass, c)
            self.keep_lat[l] = _least_work_share(self.w_lat[l], mass, c)
            self.keep_held[l] = gates.held[l]
            self.drop_lines[l] = gates.lines[l]
        self.pieces_busy = [_coverage_pieces(self.w_busy[l]) if self.moe[l] else [] for l in range(L)]
        self.pieces_lat = [_coverage_pieces(self.w_lat[l]) if self.moe[l] else [] for l in range(L)]
        kv = m.kv_bytes_per_token_per_layer * b_lo * (cm.prompt + cm.output)  # one micro-batch's KV per layer
        self.ne_bytes = cm.nonexpert_bytes + kv
        self.ex_bytes = cm.experts_per_layer * cm.expert_bytes  # [L]
        self.edge_bytes = (m.embedding_params + (0 if m.tie_word_embeddings else m.lm_head_params)) * m.dtype_bytes
        self.E = E
        # The LM head (one token per prefill, every sequence per decode step), where the last stage is.
        self.head_busy = np.zeros(K)
        self.head_lat = np.zeros(K)
        for k, d in enumerate(reps):
            dev = cm.devices[d]
            one = float(op_time_s(dev, 2.0 * m.lm_head_params, m.lm_head_params * m.dtype_bytes, m.dtype_bytes))
            at_hi = float(op_time_s(dev, b_hi * 2.0 * m.lm_head_params, m.lm_head_params * m.dtype_bytes, m.dtype_bytes))
            at_lo = float(op_time_s(dev, b_lo * 2.0 * m.lm_head_params, m.lm_head_params * m.dtype_bytes, m.dtype_bytes))
            self.head_busy[k] = one + steps * at_hi
            self.head_lat[k] = one + (out - 1.0) * at_lo
        self.origin_class = next(k for k, c in enumerate(classes) if cm.instance.workload.origin in c.devices)


def _origin_round_trip(cm: CostModel, weights: float | None = None,
                       away: list[float] | None = None) -> tuple[float, float]:
    """(the least round trip (s) from the origin to another device (of ``away``,
    :func:`_round_trips_from_origin`, computed when not given), the least expected number of such
    round trips per pass: 0 when the origin can hold ``weights`` (default: the whole model's; less
    where group gates may drop experts, :func:`_least_weights`), else 1 when a pass's every remote
    call is charged in full (``CostModel(weighted_remote_calls=False)``), else
    :func:`_least_remote_calls`)."""
    inst = cm.instance
    m = inst.model
    origin = inst.device(inst.workload.origin)
    away = _round_trips_from_origin(cm) if away is None else away
    deficit = (m.total_params * m.dtype_bytes if weights is None else weights) - origin.memory_bytes
    if deficit <= 0 or not away:
        least = 0.0
    else:
        least = _least_remote_calls(cm, deficit, len(away)) if cm.weighted_remote_calls else 1.0
    return min(away, default=0.0), least


def _least_remote_calls(cm: CostModel, deficit: float, others: int) -> float:
    """A lower bound on the expected round trips per pass from the origin when ``deficit`` bytes of
    the model cannot stay there and ``others`` devices can take them.

    Either a layer's non-expert block leaves (its pass goes there and back: one round trip), or only
    routed experts do: at least ``n = ceil(deficit / expert bytes)`` of them. A layer whose remote
    devices hold a routing share ``x_d`` each pays the slowest call, made with probability
    ``P(x_d)`` (:func:`planner.cost.passes.remote_call_probability`, at one token: it grows with the
    tokens); ``P`` is increasing and concave with ``P(0) = 0``, so ``sum_layers max_d P(x_d) >=
    sum_layers P(x_layer / others) >= P(min(1, S / others))``, ``S`` the layers' total share, at
    least the sum of the ``n`` smallest shares ``q / top_k`` over all MoE layers."""
    m = cm.model
    if m.num_experts == 0 or m.num_moe_layers == 0 or cm.expert_bytes <= 0:
        return 1.0
    n = math.ceil(deficit / cm.expert_bytes)
    shares = np.sort(np.asarray(cm.q, dtype=float).ravel()) / max(m.top_k, 1)
    if n > shares.size:
        return 1.0
    x = min(1.0, float(shares[:n].sum()) / others)
    return min(1.0, remote_call_probability(x * m.top_k, 1.0, m.top_k, m.num_experts))


def _round_trips_from_origin(cm: CostModel) -> list[float]:
    """Per device other than the origin (that the origin reaches): the least time (s) a token takes
    from the origin to it and back, twice the shorter of the two one-way propagations (what a
    pipeline holding that device as its nearest to the origin pays per token, at least)."""
    inst = cm.instance
    origin = inst.workload.origin
    out = []
    for d in inst.devices:
        if d.name == origin:
            continue
        try:
            out.append(2.0 * min(cm.network.route_terms(origin, d.name)[0], cm.network.route_terms(d.name, origin)[0]))
        except ValueError:
            continue
    return out


def _replicas_loop_bound(latency: float, conc: float, out: float, round_trip_s: float, away: list[float],
                         replicas: int) -> float:
    """The latency loop of several pipelines: each serves at most ``conc`` requests per its latency,
    and they have disjoint devices, so at most one holds the origin. That one's latency is at least
    ``latency`` (the relaxation's, round trips off the origin included as it prices them); every
    other pipeline's tokens go from the origin to its nearest device ``d`` and back, ``away[d]``
    per token (:func:`_round_trips_from_origin`), on top of compute that takes at least ``latency -
    out x round_trip_s`` (the relaxation with every token leaving, at ``round_trip_s`` the least
    round trip, is at most that compute plus ``out x round_trip_s``). So the pipelines serve at
    most ``out x conc x (1 / latency + sum of the replicas - 1 largest 1 / max(latency, out x
    away[d] + compute))`` tokens/s: each other pipeline counted at the device of its own nearest to
    the origin, distinct devices."""
    latency = max(latency, _TINY)
    compute = max(0.0, latency - out * round_trip_s)
    others = sorted((1.0 / max(latency, out * r + compute) for r in away), reverse=True)[:max(replicas - 1, 0)]
    return out * conc * (1.0 / latency + sum(others))


def _remote_round_trips(cm: CostModel, classes: list[_Class]) -> np.ndarray:
    """[K]: the least round trip (s) between a device of class ``k`` and any other device: what a
    token pays, at least, to reach routed experts there from its layer's home elsewhere."""
    out = np.full(len(classes), math.inf)
    names = [d.name for d in cm.instance.devices]
    for k, c in enumerate(classes):
        for a in c.devices[:2]:  # devices of a class are alike; a second one reaches its twins
            for b in names:
                if b != a:
                    try:
                        out[k] = min(out[k], 2.0 * cm.network.route_terms(b, a)[0])
                    except ValueError:
                        continue
    return np.where(np.isfinite(out), out, 0.0)


@dataclass
class _Outcome:
    value: float | None  # None: infeasible
    proven: bool  # False: a dual bound of a time-limited MILP


def _lp(terms: _Terms, classes: list[_Class], *, latency_weight: float, busy_weight: float, period: bool,
        loop_concurrency: float | None, round_trip_s: float, least_leave: float, tokens_out: float,
        single_pipeline: bool = False, integral: bool = True, remote_rtt_s: np.ndarray | None = None,
        time_limit: float | None = None) -> _Outcome:
    """Build and solve one relaxation. Variables: f, g, gl, h, u, s ([L, K] each), tau [L], z [K], v, T.
    ``v``: whether tokens leave the origin (a round trip of ``round_trip_s`` per pass when they do;
    at least ``least_leave``, :func:`_origin_round_trip`).
    ``period``: busy_k <= n_k T (minimise T); otherwise minimise ``latency_weight * latency +
    busy_weight * sum_k power_k busy_k``. ``loop_concurrency``: add latency <= c T.
    ``single_pipeline``: every layer's non-expert block on exactly one device (``f`` binary) and a
    round trip of ``remote_rtt_s[k]`` per token and layer whose experts work on class ``k`` away
    from their layer's home (``u`` binary): a MILP, solved to optimality or, within
    ``time_limit``, to its dual bound; with ``integral`` False its LP relaxation (a weaker bound).
    A solver failure falls back to the LP relaxation."""
    L, K = terms.L, terms.K
    n = np.array([len(c.devices) for c in classes], dtype=float)
    nf = L * K
    F, G, GL, H, U, S = 0, nf, 2 * nf, 3 * nf, 4 * nf, 5 * nf
    TAU = 6 * nf
    Z = TAU + L
    V = Z + K
    TT = V + 1
    DROP = TT + 1  # [L] share of a layer's experts its group gates drop (0 without a gate)
    GLOSS = DROP + L  # [L] its gate loss
    nv = GLOSS + L
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0

    def idx(base, l, k):
        return base + l * K + k

    def add(entries, lower, upper):
        nonlocal r
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        lo.append(lower)
        hi.append(upper)
        r += 1

    moe = terms.moe
    rtt = remote_rtt_s if (single_pipeline and remote_rtt_s is not None) else np.zeros(K)
    for l in range(L):
        add([(idx(F, l, k), 1.0) for k in range(K)], 1.0, 1.0)
        if moe[l]:
            # All of the layer's expert work, every expert held somewhere; with a group gate at
            # least the cheapest subset the accuracy budget allows (its work, its count).
            add([(idx(G, l, k), 1.0) for k in range(K)], float(terms.keep_busy[l]), 1.0)
            add([(idx(GL, l, k), 1.0) for k in range(K)], float(terms.keep_lat[l]), 1.0)
            add([(idx(H, l, k), 1.0) for k in range(K)], float(terms.keep_held[l]), math.inf)
            if terms.keep_held[l] < 1.0:
                add([(idx(H, l, k), 1.0) for k in range(K)] + [(DROP + l, 1.0)], 1.0, math.inf)
                # Dropping D sheds at most C(D) of the work: C lies below each of its pieces.
                for base, pieces in ((G, terms.pieces_busy[l]), (GL, terms.pieces_lat[l])):
                    for slope, icpt in pieces:
                        add([(idx(base, l, k), 1.0) for k in range(K)] + [(DROP + l, slope)], 1.0 - icpt, math.inf)
                for slope, icpt in terms.drop_lines[l]:
                    add([(GLOSS + l, 1.0), (DROP + l, -slope)], icpt, math.inf)
            for k in range(K):
                for slope, icpt in terms.pieces_busy[l]:
                    add([(idx(G, l, k), 1.0), (idx(H, l, k), -slope)], -math.inf, icpt)
                for slope, icpt in terms.pieces_lat[l]:
                    add([(idx(GL, l, k), 1.0), (idx(H, l, k), -slope)], -math.inf, icpt)
                # Expert makespan of the layer: its work on class k spread over the class's devices.
                add([(idx(GL, l, k), terms.rho_lat[l, k] * terms.W_lat[l] / n[k]), (TAU + l, -1.0)], -math.inf, 0.0)
                if rtt[k] > 0:
                    # Expert work on class k while the layer's home is elsewhere: a round trip per pass.
                    add([(idx(GL, l, k), 1.0), (idx(F, l, k), -1.0), (idx(U, l, k), -1.0)], -math.inf, 0.0)
    gated = [l for l in range(L) if moe[l] and terms.keep_held[l] < 1.0]
    if gated:  # the gates' losses within the accuracy budget
        add([(GLOSS + l, 1.0) for l in gated], -math.inf, terms.loss_budget)
    add([(Z + k, 1.0) for k in range(K)], 1.0, 1.0)  # embedding and LM head somewhere
    o = terms.origin_class
    for k in range(K):
        if k != o:
            for l in range(L):
                add([(V, 1.0), (idx(F, l, k), -1.0)], 0.0, math.inf)  # work off the origin: tokens leave it
            add([(V, 1.0), (Z + k, -1.0)], 0.0, math.inf)
    # Stages are contiguous and a device holds one stage: class k's layers form at most n_k runs
    # (s[l, k] >= f[l, k] - f[l - 1, k] marks where one starts).
    for k in range(K):
        for l in range(L):
            add([(idx(S, l, k), 1.0), (idx(F, l, k), -1.0)] + ([(idx(F, l - 1, k), 1.0)] if l else []), 0.0, math.inf)
        add([(idx(S, l, k), 1.0) for l in range(L)], -math.inf, n[k])
    for k in range(K):  # in GB, so that the matrix's coefficients span fewer orders of magnitude
        mem = [(idx(F, l, k), float(terms.ne_bytes[l]) / GB) for l in range(L)]
        mem += [(idx(H, l, k), float(terms.ex_bytes[l]) / GB) for l in range(L) if moe[l]]
        mem.append((Z + k, float(terms.edge_bytes) / GB))
        add(mem, -math.inf, n[k] * classes[k].memory_bytes / GB)
    busy = [[(idx(F, l, k), float(terms.ne_busy[l, k])) for l in range(L)]
            + [(idx(G, l, k), float(terms.rho_busy[l, k] * terms.W_busy[l])) for l in range(L) if moe[l]]
            + [(Z + k, float(terms.head_busy[k]))]
            for k in range(K)]
    latency = ([(idx(F, l, k), float(terms.ne_lat[l, k])) for l in range(L) for k in range(K)]
               + [(TAU + l, 1.0) for l in range(L) if moe[l]]
               + [(idx(U, l, k), float(rtt[k] * tokens_out)) for l in range(L) for k in range(K) if moe[l] and rtt[k] > 0]
               + [(Z + k, float(terms.head_lat[k])) for k in range(K)]
               + [(V, float(round_trip_s * tokens_out))])
    c = np.zeros(nv)
    if period:
        for k in range(K):
            add(busy[k] + [(TT, -n[k])], -math.inf, 0.0)
        if loop_concurrency is not None:
            add(latency + [(TT, -loop_concurrency)], -math.inf, 0.0)
        c[TT] = 1.0
    else:
        for col, v in latency:
            c[col] += latency_weight * v
        for k in range(K):
            for col, v in busy[k]:
                c[col] += busy_weight * classes[k].busy_power_w * v
    upper = np.concatenate([np.ones(3 * nf), np.full(nf, np.inf), np.ones(nf), np.ones(nf), np.full(L, np.inf),
                            np.ones(K), [1.0], [np.inf], 1.0 - terms.keep_held, np.full(L, np.inf)])
    lower = np.zeros(nv)
    lower[V] = least_leave
    integrality = np.zeros(nv)
    if single_pipeline and integral:
        integrality[F:F + nf] = 1
        integrality[U:U + nf] = 1
    A = coo_matrix((vals, (rows, cols)), shape=(r, nv))
    res = solve_arrays(c, A, np.array(lo), np.array(hi), lower, upper, integrality, time_limit=time_limit)
    if res.status == Status.INFEASIBLE:  # not even the relaxation fits memory
        return _Outcome(None, True)
    if res.status == Status.OPTIMAL:
        value, proven = res.dual_bound, True
    elif res.status == Status.TIME_LIMIT and math.isfinite(res.dual_bound):
        value, proven = res.dual_bound, False
    elif integrality.any():
        # No bound from the MILP: its LP relaxation still bounds.
        relaxed = solve_arrays(c, A, np.array(lo), np.array(hi), lower, upper)
        if relaxed.status != Status.OPTIMAL:
            raise RuntimeError(f"the bound's relaxation failed: {relaxed.message}")
        value, proven = relaxed.objective, False
    else:
        raise RuntimeError(f"the bound's relaxation failed: {res.message}")
    return _Outcome(value, proven)


def _least_weights(cm: CostModel, gates: _Gates | None) -> float:
    """The least bytes of weights a pipeline holds: the model's, less the most experts group gates
    may drop within the accuracy budget (per layer at most all but the fewest that cover its least
    coverage, each share dropped paying at least its layer's loss lines: the cheapest drops first)."""
    m = cm.model
    weights = m.total_params * m.dtype_bytes
    if gates is None:
        return weights
    budget = cm.instance.constraints.accuracy_loss_budget
    pieces = []  # (loss per share dropped, share): each layer's loss lines as segments, up to its most droppable
    for l in gates.layers:
        most, lines = 1.0 - gates.held[l], gates.lines[l]
        ends = [(b2 - b1) / (s1 - s2) for (s1, b1), (s2, b2) in zip(lines, lines[1:])] + [math.inf]
        start = 0.0
        for (slope, _), end in zip(lines, ends):
            stop = min(end, most)
            if stop > start:
                pieces.append((slope, stop - start))
            start = max(start, stop)
    share = 0.0
    for rate, width in sorted(pieces):  # convex lines: a layer's segments come in their own order
        take = width if rate <= 0 else min(width, budget / rate)
        share += take
        budget -= take * rate
        if budget <= 0:
            break
    return weights - share * m.num_experts * cm.expert_bytes


def _max_replicas(instance: Instance, weights: float) -> int:
    """The most pipelines the fleet can run at once: each has its own devices (at least one) and
    holds at least ``weights`` bytes (:func:`_least_weights`)."""
    return max(1, min(len(instance.devices), int(instance.total_memory_bytes // max(weights, 1.0))))


def micro_batch_intervals(max_batch: int, exact_up_to: int = 32, ratio: float = 1.25) -> list[tuple[int, int]]:
    """Intervals ``[lo, hi]`` covering ``1 .. max_batch``: single values up to ``exact_up_to``, then
    geometric (each about ``ratio`` times the one before)."""
    if max_batch <= exact_up_to:
        return [(b, b) for b in range(1, max_batch + 1)]
    out = [(b, b) for b in range(1, exact_up_to + 1)]
    lo = exact_up_to + 1
    while lo <= max_batch:
        hi = min(max_batch, max(lo, int(lo * ratio)))
        out.append((lo, hi))
        lo = hi + 1
    return out


def _intervals_until(max_batch: int, deadline: float | None):
    """:func:`micro_batch_intervals`, as (interval, merged): once ``deadline`` has passed, the rest as
    one interval (its relaxation bounds every micro-batch it covers too, more loosely), merged True."""
    intervals = micro_batch_intervals(max_batch)
    for i, (lo, hi) in enumerate(intervals):
        if i and deadline is not None and time.perf_counter() >= deadline:
            yield (lo, intervals[-1][1]), True
            return
        yield (lo, hi), False


def plan_space_bound(instance: Instance, cost_model: CostModel | None = None, *,
                     time_limit: float | None = None) -> Bound | None:
    """The relaxation's bound on the objective of every plan of ``instance`` (see the module
    docstring), or None when not even the relaxation fits the fleet's memory (no plan exists).

    ``time_limit`` (s) is shared by the MILPs of the single-pipeline relaxation; one that runs out of
    time gives its dual bound (still valid, looser), and the micro-batch intervals not reached by
    then are relaxed as one (``detail["merged_after_deadline"]``: valid, looser). The LPs started
    before the deadline run to the end (milliseconds each, up to about 30 ms on DeepSeek-V3)."""
    t0 = time.perf_counter()
    deadline = None if time_limit is None else t0 + time_limit
    cm = cost_model or CostModel(instance)
    classes = _classes(cm)
    B = instance.workload.max_batch
    out = cm.output
    gated = _gates(cm)
    least_weights = _least_weights(cm, gated)
    away = _round_trips_from_origin(cm)
    rtt, least_leave = _origin_round_trip(cm, least_weights, away)
    # A round trip per pass for experts away from their layer's home holds for full-price calls only:
    # weighted, a call happens with a probability that may be small (a few unpopular experts away).
    remote = _remote_round_trips(cm, classes) if not cm.weighted_remote_calls else np.zeros(len(classes))
    kind = instance.objective

    def left(share: float = 1.0):
        return None if deadline is None else max(0.1, (deadline - time.perf_counter()) * share)

    common = dict(round_trip_s=rtt, least_leave=least_leave, tokens_out=out, remote_rtt_s=remote)
    if kind == "latency":
        res = _lp(_Terms(cm, classes, 1, gates=gated), classes, latency_weight=1.0, busy_weight=0.0, period=False,
                  loop_concurrency=None, single_pipeline=True, time_limit=left(), **common)
        if res.value is None:
            return None
        return Bound(res.value * 1e3, kind, 1, "latency", time.perf_counter() - t0,
                     {"round_trip_s": rtt, "proven": res.proven})
    if kind == "energy":
        # Busy energy falls as the micro-batch grows, but a larger one's KV cache may not fit the
        # frugal devices: every interval of micro-batches, the least kept.
        best, merged = None, False
        for (lo, hi), last in _intervals_until(B, deadline):
            merged = merged or last
            res = _lp(_Terms(cm, classes, lo, hi, gates=gated), classes, latency_weight=0.0, busy_weight=1.0, period=False,
                      loop_concurrency=None, **common)
            if res.value is not None and (best is None or res.value < best[0]):
                best = (res.value, lo, res.proven)
        if best is None:
            return None
        return Bound(best[0] / out, kind, best[1], "energy", time.perf_counter() - t0,
                     {"proven": best[2], "merged_after_deadline": merged})
    replicas = _max_replicas(instance, least_weights)
    detail = {"replicas": replicas, "round_trip_s": rtt, "per_micro_batch": {}, "merged_after_deadline": False}
    # Per interval: its relaxation's value (LP), then the MILP where the LP could beat the best MILP so far.
    candidates = []
    for (lo, hi), merged in _intervals_until(B, deadline):
        detail["merged_after_deadline"] = merged
        conc = float(max(b * (B // b) for b in range(lo, hi + 1)))
        terms = _Terms(cm, classes, lo, hi, gates=gated)
        busy = _lp(terms, classes, latency_weight=0.0, busy_weight=0.0, period=True,
                   loop_concurrency=conc if replicas == 1 else None, single_pipeline=replicas == 1, integral=False,
                   **common)
        if busy.value is None:
            continue
        busy_bound = out / max(busy.value, _TINY)
        if replicas == 1:
            candidates.append((busy_bound, lo, hi, conc, terms, "busy time and latency loop"))
            continue
        lat = _lp(terms, classes, latency_weight=1.0, busy_weight=0.0, period=False, loop_concurrency=None,
                  single_pipeline=True, integral=False, **common)
        loop_bound = math.inf if lat.value is None else _replicas_loop_bound(lat.value, conc, out, rtt, away, replicas)
        value, binding = (busy_bound, "busy time") if busy_bound <= loop_bound else (loop_bound, "latency loop")
        candidates.append((value, lo, hi, conc, terms, binding))
    if not candidates:
        return None
    candidates.sort(key=lambda c: -c[0])
    best, proven = None, True
    for n_done, (value, lo, hi, conc, terms, binding) in enumerate(candidates):
        if best is not None and value <= best[0]:
            break  # this and every later relaxation are below a solved one
        if binding == "busy time and latency loop" and (deadline is None or time.perf_counter() < deadline):
            res = _lp(terms, classes, latency_weight=0.0, busy_weight=0.0, period=True, loop_concurrency=conc,
                      single_pipeline=True, time_limit=left(1.0 / (len(candidates) - n_done)), **common)
            value = out / max(res.value, _TINY) if res.value is not None else 0.0
            proven = proven and res.proven
        else:
            proven = proven and binding != "busy time and latency loop"
        detail["per_micro_batch"][f"{lo}" if lo == hi else f"{lo}-{hi}"] = value
        if best is None or value > best[0]:
            best = (value, lo, binding)
    if best is None:
        return None
    detail["proven"] = proven
    return Bound(best[0], kind, best[1], best[2], time.perf_counter() - t0, detail)
