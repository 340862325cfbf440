"""Exact pipeline stage partitioning of the whole model over an ordered device path (solver ``dp``).

Space: one pipeline; stages are contiguous layer ranges on devices taken in the order of a *path*
(any device may be skipped, none used twice); every routed expert stays on its layer's stage device
and every cut is sent uncompressed (experts and codecs belong to ``milp`` / ``route-aware``); the
batching is one of ``batch_grid(max_batch, len(path))``.

Path: the origin first, then the other devices ordered by tier (end, edge, cloud), then memory
descending, then name (the order of the ``proportional`` baseline); option ``path=[names]`` gives
another one (every name a device of the instance, none twice; the origin need not be on it). The
optimum is exact for the path given; another order can be better (DeepSeek-V3 on 16 H100 + 16 L40S:
the default order ends on an L40S holding the LM head, 696 tokens/s; L40S first, 958 tokens/s).

For each ``(b, m)`` of the grid a :class:`models.chain.ChainPartition` (items = layers, devices = the
path) is built from the cost model's own terms (``o`` = output tokens, per request):

* per layer ``l`` on device ``d``: prefill time ``pre`` and decode-step time ``dec`` of the non-expert
  block plus all routed experts (``CostModel._layer_times`` for both phases), the embedding folded
  into layer 0 and the LM head into layer ``L - 1`` (on whatever device holds them). Busy time
  ``pre + (o - 1) / b x dec``; latency ``pre + (o - 1) x dec``.
* memory ``[d, l]``: non-expert bytes + all experts + KV cache of ``b x m`` sequences of
  ``prompt + output`` tokens (+ embedding on layer 0, LM head on layer ``L - 1``); capacity ``[d]``:
  the device's memory minus the per-stage prefill workspace (with the validator's 1e-9 tolerance).
  Tied embeddings: one stage holding both layer 0 and layer ``L - 1`` stores the table once. With
  ``L = 1`` that is every stage and the head is simply left out; with ``L > 1`` the DP counts it
  (exact for every plan of two or more stages, conservative for single-stage plans) and the
  ``len(path)`` single-stage plans are scored separately with the exact memory.
* a cut from ``d`` to ``e``: ``CostModel.transfer`` of the hidden state (``prompt`` tokens in prefill,
  ``b`` in decode): latency ``lat_pre + (o - 1) x lat_dec``; busy per link of the route
  ``busy_pre + (o - 1) / b x busy_dec``, the chain's one busy figure being the largest over the route.
* entry / exit: the token ids from the origin to the first stage (``prompt``, then ``b`` per step) and
  from the last stage back (1, then ``b``), the same way.

Busy and latency weigh the decode time differently (``(o - 1) / b`` against ``o - 1``) but a chain
partition has one stage-time array, used both for the busy cap and in the latency. So:

* latency objective: stage time = latency weights; the request latency ``R = TTFT + (o - 1) TPOT`` is
  a sum over stages, cuts, entry and exit, i.e. exactly the chain's ``latency`` objective.
* throughput objective: stage time = busy weights, and the rest of the latency,
  ``X_d(j, k) = (o - 1)(1 - 1/b) x (decode time of layers j .. k-1 on d)``, is moved onto the cut,
  entry and exit terms by telescoping prefix sums ``X_d[k]`` (a potential): a cut at boundary ``k``
  from ``d`` to ``e`` carries ``X_d[k] - X_e[k] - h_d + h_e``, the entry to ``d`` carries ``h_d``, the
  exit from ``d`` carries ``X_d[L] - h_d``, so every partition's chain latency is again ``R``. The
  offsets ``h`` are the least solution of the difference constraints that keep every term >= 0 (a
  longest-path pass along the path); when no such ``h`` exists (rare: a later device much slower
  than an earlier one on the first layers) some cut latencies stay negative, which the DP (a
  shortest path in a DAG) handles exactly; the problem then bypasses ``ChainPartition.check``'s
  ``>= 0`` rule for those latencies only.

Throughput, exactly, by the cap trick. requests/s = ``1 / max(B, R / (b m))`` with ``B`` the largest busy
time (stages, cuts, entry, exit), so the optimum is ``T* = min over plans of max(B, R / (b m))``:

    T* = min T such that g(T) <= b m T (and g(T) <= the latency SLO),
    g(T) = least latency over plans whose every stage / cut / entry / exit busy time is <= T

(one latency DP with the cap ``T``). ``g`` is a non-increasing step function that only changes at
the busy values of single terms, and ``b m T`` is increasing, so feasibility is monotone in ``T``.
With ``V`` the sorted distinct term values (every stage ``[j, k)`` on every device, every cut,
entry and exit) at or above the least bottleneck, bisection finds the first feasible ``V[i]`` with
``O(log |V|)`` DPs. The optimum is then either ``V[i]`` (the busy time binds; the plan is the
least-latency plan under the cap ``V[i]``) or the crossing point ``g(V[i-1]) / (b m)`` in
``(V[i-1], V[i])`` (the latency loop binds; the plan is the least-latency plan under ``V[i-1]``): the
smaller of the two is ``T*`` (if no ``V[i]`` is feasible, ``T* = g(inf) / (b m)``).

Route caveat: the chain problem has one busy figure per cut (and per entry and exit), the cost
model one per physical link, summing every transfer that crosses it. They coincide when each link
carries one transfer of the plan only: consecutive stage devices joined by links that no other cut,
the entry or the exit uses. They differ e.g. on a single-cut plan ``origin -> X``, whose cut and
whose exit (the sampled token back) share the link. The chain figure is then a lower bound on the
link's busy time, so the DP optimum is an upper bound on the throughput (latency and memory are
exact). The Result's objective is always the cost model's evaluation of the returned plan; its
``bound`` is the DP optimum over the grid; status is OPTIMAL when the two agree to 1e-9 (always for
the latency objective; for throughput whenever no shared link is the bottleneck of the chosen plan),
FEASIBLE otherwise. TTFT / TPOT SLOs (two more sums) are not in the chain problem: plans are checked
against them (validator) afterwards and the best valid one is returned, OPTIMAL only if it reaches
the bound. The request latency SLO is exact (``g(T) <= SLO`` above; ``R <= SLO`` for latency).

Cost per grid point: ``O(log(D L^2))`` DP runs of ``O(L^2 D + L D^2)`` each (DeepSeek-V3 on 32 GPUs,
13 batchings: about 2 s). ``time_limit`` is checked between batchings (status TIME_LIMIT, no bound).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from models.chain import ChainPartition
from models.chain import Stage as ChainStage
from models.chain import evaluate as chain_evaluate
from planner.cost.compute import op_time_s
from planner.cost.costmodel import CostModel
from planner.cost.passes import TOKEN_ID_BYTES
from planner.domain.instance import Instance
from planner.domain.plan import Pipeline, Plan, Stage
from solvers import dp

TIER_RANK = {"end": 0, "edge": 1, "cloud": 2}
MEMORY_TOL = 1e-9  # the validator's relative memory tolerance
AGREE_TOL = 1e-9   # DP optimum vs the cost model's evaluation: OPTIMAL when within this


def default_path(instance: Instance) -> list[str]:
    """The origin, then the other devices by tier (end, edge, cloud), memory descending, name."""
    origin = instance.workload.origin
    rest = sorted((d for d in instance.devices if d.name != origin),
                  key=lambda d: (TIER_RANK.get(d.tier, len(TIER_RANK)), -d.memory_bytes, d.name))
    return [origin] + [d.name for d in rest]


def trim_path(instance: Instance, path: list[str]) -> list[str]:
    """``path`` with at most ``num_layers`` devices of each run of twins (:attr:`Instance.twins`,
    consecutive on the path): a pipeline has at most one stage per layer, and any plan over the
    whole path maps, twin for twin, onto one over the trimmed path with the same figures, so the
    DP's optimum is the same (DeepSeek-V3 on 1,000 devices: 123 instead of 1,000). Twins that are
    not consecutive on the path are all kept."""
    twins = instance.twins
    keep = instance.model.num_layers
    positions: dict[int, list[int]] = {}
    for i, name in enumerate(path):
        if name in twins:
            positions.setdefault(twins[name], []).append(i)
    drop = set()
    for at in positions.values():
        if len(at) > keep and at[-1] - at[0] + 1 == len(at):
            drop.update(at[keep:])
    return [name for i, name in enumerate(path) if i not in drop] if drop else list(path)


def check_path(instance: Instance, path) -> list[str]:
    if path is None:
        return default_path(instance)
    if isinstance(path, str) or not all(isinstance(p, str) for p in path) or not len(path):
        raise ValueError(f"path must be a non-empty list of device names, got {path!r}")
    path = list(path)
    unknown = [p for p in path if p not in instance.device_index]
    if unknown:
        raise ValueError(f"path names unknown devices {unknown}; devices: {sorted(instance.device_index)}")
    if len(set(path)) != len(path):
        raise ValueError(f"path lists a device twice: {path}")
    return path


@dataclass(frozen=True)
class ChainTerms:
    """The cost model's terms of a plan over ``path`` with batching ``(b, m)``, per request (s, bytes).

    busy, latency, memory: [D, L]; capacity: [D]; cut_busy, cut_latency: [D, D] (from row to column);
    entry_* / exit_*: [D]; decode_extra: [D, L] = latency - busy weights of the decode part;
    tied_head_bytes: LM head bytes a single stage holding every layer does not store (tied embeddings).
    """

    path: tuple[str, ...]
    micro_batch_size: int
    num_micro_batches: int
    busy: np.ndarray
    latency: np.ndarray
    decode_extra: np.ndarray
    memory: np.ndarray
    capacity: np.ndarray
    workspace_bytes: float
    cut_busy: np.ndarray
    cut_latency: np.ndarray
    entry_busy: np.ndarray
    entry_latency: np.ndarray
    exit_busy: np.ndarray
    exit_latency: np.ndarray
    tied_head_bytes: float

    @property
    def concurrency(self) -> float:
        return float(self.micro_batch_size * self.num_micro_batches)


def _route_matrices(cm: CostModel, path: list[str], both_directions: bool = False) -> tuple[np.ndarray, ...]:
    """Route terms of ``path`` (:meth:`CostModel.route_terms`), independent of the batching, cached
    on the cost model: one-way latency, sum and max of 1 / bandwidth, each [D, D] (row to column:
    the upper triangle, or every ordered pair with ``both_directions``; zeros elsewhere) and [D]
    from the origin to each device and from each device back."""
    key = ("chain routes", tuple(path), both_directions)
    hit = cm.instance_cache.get(key)
    if hit is None:
        D = len(path)
        origin = cm.instance.workload.origin
        cut = np.zeros((3, D, D))
        for i in range(D):
            for j in range(D) if both_directions else range(i + 1, D):
                if j != i:
                    cut[:, i, j] = cm.network.route_terms(path[i], path[j])
        entry = np.array([cm.network.route_terms(origin, n) for n in path]).T.reshape(3, D)
        exit_ = np.array([cm.network.route_terms(n, origin) for n in path]).T.reshape(3, D)
        hit = cm.instance_cache[key] = (cut, entry, exit_)
    return hit


def _transfer(terms: np.ndarray, bytes_prefill: float, bytes_decode: float, w_busy: float, w_lat: float):
    """(busy of the busiest link per request, latency per request) of sending once in prefill and
    ``o - 1`` times in decode over routes with ``terms`` = (one-way, sum 1/bw, max 1/bw) (any shape)."""
    one_way, inv_sum, inv_max = terms
    busy = (bytes_prefill + w_busy * bytes_decode) * inv_max
    return busy, (1.0 + w_lat) * one_way + (bytes_prefill + w_lat * bytes_decode) * inv_sum


def chain_terms(cm: CostModel, path: list[str], micro_batch: int, micro_batches: int, *,
                both_directions: bool = False) -> ChainTerms:
    """The coefficients of the chain problem for ``path`` and batching ``(micro_batch, micro_batches)``.
    Cuts are priced forward along the path (``cut_*[d, e]`` for ``d < e``), or for every ordered
    pair with ``both_directions`` (for searches that visit the devices in any order)."""
    m, db = cm.model, cm.db
    L, D = m.num_layers, len(path)
    b = float(micro_batch)
    o = cm.output
    w_busy, w_lat = (o - 1.0) / b, o - 1.0
    hb = m.hidden_bytes_per_token
    lm = m.lm_head_params
    pre = np.zeros((D, L))
    dec = np.zeros((D, L))
    done: dict[str, int] = {}  # devices of the same hardware have the same rows
    for i, name in enumerate(path):
        twin = done.setdefault(cm.times.hardware_of(name), i)
        if twin != i:
            pre[i], dec[i] = pre[twin], dec[twin]
            continue
        dev = cm.devices[name]
        ne, ex = cm.times.layer_times(name, cm.prompt, cm.prompt / 2.0, True)
        pre[i] = ne + ex
        ne, ex = cm.times.layer_times(name, b, cm.decode_context, False)
        dec[i] = ne + ex
        pre[i, 0] += float(op_time_s(dev, 0.0, cm.prompt * hb, db))           # embedding
        dec[i, 0] += float(op_time_s(dev, 0.0, b * hb, db))
        pre[i, L - 1] += float(op_time_s(dev, 1.0 * 2.0 * lm, lm * db, db))  # LM head, last position
        dec[i, L - 1] += float(op_time_s(dev, b * 2.0 * lm, lm * db, db))
    busy = pre + w_busy * dec
    latency = pre + w_lat * dec
    decode_extra = (w_lat - w_busy) * dec

    seqs = micro_batch * micro_batches
    ctx = cm.prompt + cm.output
    workspace = cm.workspace_bytes
    experts = cm.experts_per_layer
    per_layer = cm.nonexpert_bytes + seqs * ctx * m.kv_bytes_per_token_per_layer + experts * cm.expert_bytes
    memory = np.tile(per_layer, (D, 1))
    memory[:, 0] += m.embedding_params * db
    tied_head = 0.0
    if not (m.tie_word_embeddings and L == 1):
        memory[:, L - 1] += lm * db
        tied_head = lm * db if m.tie_word_embeddings else 0.0
    capacity = np.array([max(0.0, cm.devices[n].memory_bytes * (1 + MEMORY_TOL) - workspace) for n in path])

    routes_cut, routes_in, routes_out = _route_matrices(cm, path, both_directions)
    cut_busy, cut_latency = _transfer(routes_cut, cm.prompt * hb, b * hb, w_busy, w_lat)
    entry_busy, entry_latency = _transfer(routes_in, cm.prompt * TOKEN_ID_BYTES, b * TOKEN_ID_BYTES, w_busy, w_lat)
    exit_busy, exit_latency = _transfer(routes_out, 1.0 * TOKEN_ID_BYTES, b * TOKEN_ID_BYTES, w_busy, w_lat)
    return ChainTerms(
        path=tuple(path), micro_batch_size=int(micro_batch), num_micro_batches=int(micro_batches),
        busy=busy, latency=latency, decode_extra=decode_extra, memory=memory, capacity=capacity,
        workspace_bytes=float(workspace), cut_busy=cut_busy, cut_latency=cut_latency,
        entry_busy=entry_busy, entry_latency=entry_latency, exit_busy=exit_busy, exit_latency=exit_latency,
        tied_head_bytes=float(tied_head),
    )


def chain_problem(terms: ChainTerms, objective: str) -> ChainPartition:
    """The chain partition of ``terms`` whose ``latency`` is the request latency R of every partition.

    ``objective="latency"``: stage time = latency weights. ``"throughput"``: stage time = busy weights
    (the cap filters busy times) and the rest of R moved onto cut / entry / exit latencies (module
    docstring). Either way ``transfer_busy`` / ``entry_busy`` / ``exit_busy`` are the busy figures."""
    D, L = terms.busy.shape
    names = {"devices": list(terms.path), "items": [f"layer {l}" for l in range(L)]}
    cut_busy = np.repeat(terms.cut_busy[:, :, None], L, axis=2)
    cut_lat = np.repeat(terms.cut_latency[:, :, None], L, axis=2)
    common = dict(memory=terms.memory, capacity=terms.capacity, transfer_busy=cut_busy, entry_busy=terms.entry_busy,
                  exit_busy=terms.exit_busy, objective="latency", names=names)
    if objective == "latency":
        return ChainPartition.build(terms.latency, transfer_latency=cut_lat, entry_latency=terms.entry_latency,
                                    exit_latency=terms.exit_latency, **common)
    X = np.concatenate([np.zeros((D, 1)), np.cumsum(terms.decode_extra, axis=1)], axis=1)  # [D, L + 1]
    # Least offsets h with: entry + h >= 0 and cut + X_d[k] - X_e[k] - h_d + h_e >= 0 (d < e, 0 < k < L).
    h = -terms.entry_latency.copy()
    if L > 1:
        for e in range(1, D):
            need = np.max(X[e, 1:L][None, :] - X[:e, 1:L], axis=1) - terms.cut_latency[:e, e]
            h[e] = max(h[e], float(np.max(h[:e] + need)))
    cut_lat[:, :, : L - 1] += (X[:, None, 1:L] - X[None, :, 1:L]) - h[:, None, None] + h[None, :, None]
    entry_lat = terms.entry_latency + h
    exit_lat = terms.exit_latency + X[:, L] - h
    forward = np.triu(np.ones((D, D), dtype=bool), k=1)
    cut_lat = np.where(forward[:, :, None], cut_lat, 0.0)  # entries d >= e are never used
    # Values a rounding error below zero (the potential makes them exactly 0) are set to 0.
    scale = max(float(np.abs(cut_lat).max()), float(np.abs(entry_lat).max()), float(np.abs(exit_lat).max()), 1e-300)
    cut_lat, entry_lat, exit_lat = (np.where((a < 0) & (a >= -1e-12 * scale), 0.0, a) for a in (cut_lat, entry_lat, exit_lat))
    problem = ChainPartition.build(terms.busy, transfer_latency=np.maximum(cut_lat, 0.0),
                                   entry_latency=np.maximum(entry_lat, 0.0), exit_latency=np.maximum(exit_lat, 0.0),
                                   **common)
    if (cut_lat < 0).any() or (entry_lat < 0).any() or (exit_lat < 0).any():
        # No non-negative potential exists: keep the exact signed cut latencies (see the module docstring).
        problem = dataclasses.replace(problem, transfer_latency=cut_lat, entry_latency=entry_lat, exit_latency=exit_lat)
    return problem


@dataclass(frozen=True)
class ChainOptimum:
    """The DP's optimum at one grid point: stages (path indices), the chain's figures and the objective
    value in seconds (request period ``max(B, R / (b m))`` or request latency ``R``)."""

    stages: tuple[ChainStage, ...]
    bottleneck_s: float
    latency_s: float
    value_s: float
    dp_runs: int


def _single_stage_candidates(problem: ChainPartition, terms: ChainTerms) -> list[list[ChainStage]]:
    """Single-stage plans that fit only because a tied LM head is not stored twice."""
    if terms.tied_head_bytes <= 0:
        return []
    D, L = problem.shape
    M = problem.memory_prefix
    return [[ChainStage(d, 0, L)] for d in range(D)
            if M[d, L] > problem.capacity[d] and M[d, L] - terms.tied_head_bytes <= problem.capacity[d]]


def best_latency(problem: ChainPartition, terms: ChainTerms, slo: float = math.inf) -> ChainOptimum | None:
    """Least request latency (``problem`` from ``chain_problem(terms, "latency")``), or None."""
    options = []
    stages = dp.best_stages(problem, "latency", math.inf)
    if stages is not None:
        options.append(stages)
    options += _single_stage_candidates(problem, terms)
    best = None
    for st in options:
        bn, lat = chain_evaluate(problem, st)
        if lat <= slo and (best is None or lat < best.value_s):
            best = ChainOptimum(tuple(st), bn, lat, lat, 1)
    return best


def best_period(problem: ChainPartition, terms: ChainTerms, slo: float = math.inf) -> ChainOptimum | None:
    """Least request period ``max(B, R / (b m))`` subject to ``R <= slo`` (``problem`` from
    ``chain_problem(terms, "throughput")``) by bisection over the busy values (module docstring)."""
    conc = terms.concurrency
    bmin = dp.best_bottleneck(problem)
    options: list[list[ChainStage]] = []
    runs = 1
    if math.isfinite(bmin):
        D, L = problem.shape
        P = problem.compute_prefix
        j, k = np.triu_indices(L + 1, k=1)
        forward = np.triu(np.ones((D, D), dtype=bool), k=1)
        values = np.concatenate([(P[:, k] - P[:, j]).ravel(), problem.transfer_busy[forward][:, : L - 1].ravel(),
                                 problem.entry_busy, problem.exit_busy])
        V = np.unique(values[values >= bmin])
        cache: dict[int, tuple] = {}

        def at(i: int):
            nonlocal runs
            if i not in cache:
                runs += 1
                st = dp.best_stages(problem, "latency", float(V[i]))
                cache[i] = (st, chain_evaluate(problem, st)[1] if st is not None else math.inf)
            return cache[i]

        lo, hi = 0, len(V)
        while lo < hi:
            mid = (lo + hi) // 2
            st, lat = at(mid)
            if st is not None and lat <= conc * V[mid] and lat <= slo:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(V):
            options.append(at(lo)[0])          # the busy time binds at V[lo]
        if lo > 0 and at(lo - 1)[0] is not None:
            options.append(at(lo - 1)[0])      # the latency loop binds in (V[lo-1], V[lo])
    options += _single_stage_candidates(problem, terms)
    best = None
    for st in options:
        bn, lat = chain_evaluate(problem, st)
        if lat > slo:
            continue
        value = max(bn, lat / conc)
        if best is None or (value, lat) < (best.value_s, best.latency_s):
            best = ChainOptimum(tuple(st), bn, lat, value, runs)
    return best


def plan_from_stages(instance: Instance, terms: ChainTerms, stages, solver: str = "dp") -> Plan:
    out = tuple(Stage(terms.path[s.device], int(s.first), int(s.end)) for s in stages)
    pipe = Pipeline(out, (), terms.micro_batch_size, terms.num_micro_batches, 1.0, ())
    return Plan((pipe,), instance.name, solver)


def to_objective(instance: Instance, value_s: float) -> float:
    """Seconds per request (throughput) or seconds (latency) -> the instance objective's units."""
    if instance.objective == "throughput":
        return instance.workload.output_tokens / value_s if value_s > 0 else math.inf
    return value_s * 1e3
