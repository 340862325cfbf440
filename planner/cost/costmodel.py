"""Cost model: predicted time, throughput, latency, memory and energy of a plan on an instance.

Per-operator terms (roofline), summed along the plan:

* **Compute** of one operation on device ``d``: ``max(FLOPs / F_d(FLOPs), bytes / B_d(bytes))`` where
  ``F_d``, ``B_d`` are the device's effective FLOP/s and memory bandwidth (datasheet peak x
  efficiency, or a measured profile's fitted curve). Per layer: the non-expert block (attention
  projections, attention scores over the KV cache, router, shared experts or dense FFN) is one
  operation; each routed expert replica is one operation whose weights are read when at least one
  token of the micro-batch picks it (probability ``1 - (1 - q)^n`` for selection probability ``q``).
* **Transfer** of ``n`` bytes over a route of links: per hop ``rtt/2 + n / bandwidth`` (latency) and
  ``n / bandwidth`` of link busy time (throughput). At a pipeline cut a codec of rank ``r`` sends
  ``r`` instead of ``hidden_size`` elements per token and costs an encoder and a decoder GEMM.
  A routed expert placed away from its layer's stage costs a round trip of the token's hidden state.
* **Decode**: a micro-batch of ``b`` sequences, each at the mean context ``prompt + output/2``.
  TPOT (one token's trip around the pipeline and back to the origin) is the sum of stage critical
  times and transfers; the pipeline sustains ``min(b / max busy, b*m / TPOT)`` tokens/s (busy: the
  time each device and link is occupied per micro-batch step; ``m`` micro-batches in flight).
* **Prefill**: one request's ``prompt`` tokens through the pipeline (causal attention at mean
  context ``prompt/2``); TTFT adds the first token's way back to the origin.
* **Throughput** (output tokens/s): requests/s is the lower of ``1 / max_r busy_r`` (busy per
  request over devices and links, prefill plus decode) and ``b*m / latency``.
* **Memory** per device: weights (its layers' non-expert weights, the routed experts it holds,
  embedding / LM head, codec matrices) + KV cache for ``b*m`` sequences of ``prompt + output``
  tokens + a prefill activation workspace (:attr:`CostModel.workspace_bytes`).
* **Energy** per output token: busy time x (power - idle power) + idle power x wall time, summed
  over the plan's devices.

A pass is one walk over the pipeline: :meth:`CostModel.pass_steps` lists its steps (the resource
held, for how long, the propagation after it, remote experts as parallel branches), which the
simulator (:mod:`planner.sim.engine`) replays; the pass's latency and busy times are their sums.

Units: seconds, bytes, FLOPs, FLOP/s, bytes/s, watts, joules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from planner.domain.device import Device
from planner.domain.instance import Instance
from planner.domain.plan import Pipeline, Plan

TOKEN_ID_BYTES = 4.0
# Route choice weight: one-way latency + the time of a 1 MB message (a typical cut payload).
_ROUTE_REFERENCE_BYTES = 1e6
_PASS_CACHE_SIZE = 4096  # passes remembered by _pass_cached before the cache starts over
_ALL_PAIRS_MAX = 512  # fleets up to this size get every route in one shortest-path call
# Time tables of the most recent (model, popularity, request sizes) combinations, shared by cost models.
_TABLES: dict = {}
_TABLES_KEPT = 8
_LAYERS: dict = {}  # model -> per-layer parameter arrays (_layer_arrays)


def _layer_arrays(m) -> tuple[np.ndarray, np.ndarray]:
    """Per layer [L]: non-expert parameters, and parameters active per token outside the routed
    experts. Cached per model (read-only arrays: cost models of one model share them)."""
    hit = _LAYERS.get(m)
    if hit is None:
        params = np.array([float(m.layer_nonexpert_params(i)) for i in range(m.num_layers)])
        active = np.array([float(m.layer_active_params(i) - (m.top_k * m.expert_params if m.is_moe_layer(i) else 0))
                           for i in range(m.num_layers)])
        params.flags.writeable = active.flags.writeable = False
        if len(_LAYERS) >= _TABLES_KEPT:
            _LAYERS.pop(next(iter(_LAYERS)))
        hit = _LAYERS[m] = (params, active)
    return hit


def _hardware_signature(dev: Device) -> tuple:
    """What a device's operation times depend on. A device with a measured profile is its own
    hardware (the profile object is kept in the signature, so its identity cannot be reused)."""
    return (dev.kind, dev.memory_bandwidth_bytes_per_s, tuple(sorted(dev.peak_flops_per_s.items())),
            dev.compute_efficiency, dev.bandwidth_efficiency, _Identity(dev.profile) if dev.profile is not None else None)


class _Identity:
    """Hashable by identity: keeps ``obj`` alive as long as the key that holds it."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def op_time_s(device: Device, flops, nbytes, dtype_bytes: float):
    """Vectorised roofline time (s) of operations of ``flops`` FLOPs moving ``nbytes`` bytes."""
    if isinstance(flops, (float, int)) and isinstance(nbytes, (float, int)):
        # One operation: the same formula without numpy's per-call overhead (a pass prices dozens).
        f, n = float(flops), float(nbytes)
        tc = f / device.effective_flops_per_s(max(f, 1.0), dtype_bytes) if f > 0 else 0.0
        tm = n / device.effective_bytes_per_s(max(n, 1.0)) if n > 0 else 0.0
        return np.float64(max(tc, tm))
    flops = np.asarray(flops, dtype=float)
    nbytes = np.asarray(nbytes, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        tc = np.where(flops > 0, flops / device.effective_flops_per_s(np.maximum(flops, 1.0), dtype_bytes), 0.0)
        tm = np.where(nbytes > 0, nbytes / device.effective_bytes_per_s(np.maximum(nbytes, 1.0)), 0.0)
    return np.maximum(tc, tm)


@dataclass
class PhaseCost:
    """One pass (a decode step of a micro-batch, or one request's prefill) through a pipeline."""

    latency_s: float = 0.0
    busy_s: dict = field(default_factory=dict)  # device name or (a, b) link -> busy seconds

    def add_busy(self, key, seconds: float) -> None:
        self.busy_s[key] = self.busy_s.get(key, 0.0) + float(seconds)


class Step(NamedTuple):
    """One resource held during a pass: ``key`` is a device name or a link ``(a, b)`` (names sorted,
    as in :attr:`PhaseCost.busy_s`), busy for ``hold_s`` seconds; ``delay_s`` seconds of propagation
    (a link hop's one-way latency, RTT/2) follow before the next step can start. ``nbytes``: bytes a
    link step sends (``hold_s = nbytes / bandwidth``; 0 for devices). A named tuple: a pass makes
    thousands of them, and a frozen dataclass costs four times as much to build."""

    key: str | tuple[str, str]
    hold_s: float
    delay_s: float = 0.0
    nbytes: float = 0.0

    @property
    def latency_s(self) -> float:
        return self.hold_s + self.delay_s


@dataclass(frozen=True)
class Fork:
    """Branches that run in parallel: the routed experts of one layer, the home device's share in the
    first branch and, per remote device, the route there, the device and the route back. The fork
    ends when its slowest branch does."""

    branches: tuple[tuple[Step, ...], ...]

    @property
    def latency_s(self) -> float:
        return max(sum(s.latency_s for s in branch) for branch in self.branches)


@dataclass
class PipelineMetrics:
    tpot_s: float
    ttft_s: float
    latency_s: float
    decode_tokens_per_s: float
    requests_per_s: float
    throughput_tokens_per_s: float
    bottleneck: str
    accuracy_loss: float
    energy_j_per_token: float
    decode_busy_s: dict
    prefill_busy_s: dict


@dataclass
class Evaluation:
    """Predicted figures of a plan. ``memory_bytes`` and ``memory_capacity_bytes`` per device;
    ``bytes_per_token`` per link ``"a->b"`` (decode, averaged per output token)."""

    throughput_tokens_per_s: float
    requests_per_s: float
    latency_s: float
    ttft_s: float
    tpot_s: float
    decode_tokens_per_s: float
    energy_j_per_token: float
    accuracy_loss: float
    memory_bytes: dict
    memory_capacity_bytes: dict
    bytes_per_token: dict
    bottleneck: str
    pipelines: list

    def objective(self, kind: str) -> float:
        """The instance objective's value: tokens/s (maximise), latency ms or J/token (minimise)."""
        if kind == "throughput":
            return self.throughput_tokens_per_s
        if kind == "latency":
            return self.latency_s * 1e3
        return self.energy_j_per_token

    def metrics(self) -> dict:
        """The ``metrics`` object of the JSON contract."""
        return {
            "throughput_tokens_per_s": float(self.throughput_tokens_per_s),
            "requests_per_s": float(self.requests_per_s),
            "latency_ms": float(self.latency_s * 1e3),
            "ttft_ms": float(self.ttft_s * 1e3),
            "tpot_ms": float(self.tpot_s * 1e3),
            "decode_tokens_per_s": float(self.decode_tokens_per_s),
            "energy_j_per_token": float(self.energy_j_per_token),
            "accuracy_loss": float(self.accuracy_loss),
            "bottleneck": self.bottleneck,
            "memory_bytes": {k: float(v) for k, v in self.memory_bytes.items()},
            "memory_capacity_bytes": {k: float(v) for k, v in self.memory_capacity_bytes.items()},
            "bytes_per_token": {k: float(v) for k, v in self.bytes_per_token.items()},
        }


def is_better(kind: str, a: float, b: float) -> bool:
    """Whether objective value ``a`` beats ``b`` for objective ``kind``."""
    return a > b if kind == "throughput" else a < b


def is_within(kind: str, value: float, reference: float, share: float) -> bool:
    """Whether objective ``value`` is better than ``reference`` or within ``share`` of it:
    ``value >= (1 - share) * reference`` for throughput, ``value <= (1 + share) * reference`` for
    latency and energy (False when either is not finite)."""
    if not (np.isfinite(value) and np.isfinite(reference)):
        return False
    if kind == "throughput":
        return value >= (1.0 - share) * reference - 1e-12 * abs(reference)
    return value <= (1.0 + share) * reference + 1e-12 * abs(reference)


class CostModel:
    """Predicts a plan's figures on one instance. Build once per instance; :meth:`evaluate` is cheap."""

    def __init__(self, instance: Instance):
        self.instance = instance
        m = instance.model
        self.model = m
        self.db = m.dtype_bytes
        self.devices = instance.device_index
        w = instance.workload
        self.prompt = float(w.prompt_tokens)
        self.output = float(w.output_tokens)
        self.decode_context = self.prompt + self.output / 2.0
        self.moe_index = {layer: k for k, layer in enumerate(m.moe_layers)}
        self.q = w.popularity  # [moe layer, expert] selection probability per token
        self.expert_flops_per_token = 2.0 * m.expert_params
        self.expert_bytes = m.expert_params * self.db
        # Prefill activation workspace (bytes) every stage device holds on top of its weights and KV
        # cache: the prompt's hidden state twice plus the widest FFN's intermediate twice.
        self.workspace_bytes = self.prompt * self.db * (
            2 * m.hidden_size + 2 * max(m.expert_intermediate_size, m.dense_intermediate_size,
                                        m.shared_expert_intermediate_size))
        nonexpert_params, nonexpert_active = _layer_arrays(m)
        self.nonexpert_bytes = nonexpert_params * self.db
        self.nonexpert_flops_per_token = 2.0 * nonexpert_active
        # Selection probability of every expert of every layer [L, E]; zero rows for dense layers.
        self.Q = np.zeros((m.num_layers, max(m.num_experts, 1)))
        for layer, k in self.moe_index.items():
            self.Q[layer] = self.q[k]
        self._links = {}  # (a, b) and (b, a) -> the pair's link (the last listed)
        for link in instance.links:
            self._links[(link.a, link.b)] = self._links[(link.b, link.a)] = link
        # Shortest routes by weight per link: one-way latency + the time of a 1 MB message.
        self._names = [d.name for d in instance.devices]
        self._node = {n: i for i, n in enumerate(self._names)}
        rows, cols, weights = [], [], []
        for link in instance.links:
            if link.a in self._node and link.b in self._node:
                rows.append(self._node[link.a])
                cols.append(self._node[link.b])
                weights.append(link.one_way_s + _ROUTE_REFERENCE_BYTES / link.bandwidth_bytes_per_s)
        n = len(self._names)
        self._weights = csr_matrix((weights, (rows, cols)), shape=(n, n))
        self._predecessors: dict[int, list[int]] = {}  # per source: predecessor of each node (-9999: none)
        self._routes: dict = {}
        self._route_terms: dict = {}
        self._hop_links: dict = {}  # (a, b) -> ((link key, bytes/s, one-way s) per hop)
        self._passes: dict = {}
        self._cache_local: dict = {}  # this instance's derived tables (routes of a path, ...)
        self.experts_per_layer = np.array([m.num_experts if m.is_moe_layer(i) else 0 for i in range(m.num_layers)])  # [L] routed experts
        # Time tables per hardware signature: devices of the same hardware share them (a fleet of 16
        # H100 is one), and so do cost models of instances with the same model, popularity and
        # request sizes (a re-planner's changed instances), through a small module-level cache.
        self._hw = {name: _hardware_signature(dev) for name, dev in self.devices.items()}
        key = (m, hashlib.blake2b(self.Q.tobytes(), digest_size=16).digest(), self.Q.shape, self.prompt, self.output)
        self._cache = _TABLES.pop(key, None) or {}
        _TABLES[key] = self._cache
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.pop(next(iter(_TABLES)))

    # ----- network ----------------------------------------------------------------------------
    def route(self, a: str, b: str) -> list:
        """Links (as ``Link`` objects, in order) from ``a`` to ``b``: fastest path for a 1 MB message."""
        if a == b:
            return []
        key = (a, b)
        route = self._routes.get(key)
        if route is None:
            i, j = self._node.get(a), self._node.get(b)
            if i is None or j is None:
                raise ValueError(f"no route from {a!r} to {b!r}")
            pred = self._predecessors.get(i)
            if pred is None:
                # Small fleets: every source in one call (scipy's per-call overhead dominates).
                sources = list(range(len(self._names))) if len(self._names) <= _ALL_PAIRS_MAX else [i]
                _, preds = dijkstra(self._weights, directed=False, indices=sources, return_predecessors=True)
                for src, row in zip(sources, preds.tolist()):
                    self._predecessors[src] = row
                pred = self._predecessors[i]
            if pred[j] < 0:
                raise ValueError(f"no route from {a!r} to {b!r}")
            nodes = [j]
            while nodes[-1] != i:
                nodes.append(pred[nodes[-1]])
            names = [self._names[k] for k in reversed(nodes)]
            route = self._routes[key] = [(u, v, self._links[(u, v)]) for u, v in zip(names, names[1:])]
        return route

    def hardware_of(self, device: str) -> tuple:
        """The hardware signature of ``device``: devices with equal signatures have equal time tables."""
        return self._hw[device]

    def route_terms(self, a: str, b: str) -> tuple[float, float, float]:
        """(sum of one-way latencies s, sum of 1 / bandwidth s/byte, largest 1 / bandwidth s/byte) over
        the route from ``a`` to ``b``: sending ``n`` bytes takes ``one_way + n * sum`` and keeps the
        busiest link ``n * max`` busy (zeros for ``a == b``). Cached."""
        key = (a, b)
        hit = self._route_terms.get(key)
        if hit is None:
            hops = self.route(a, b)  # not route_hops: pipelines over 40 devices ask for ~1,000 pairs once each
            inv = [1.0 / link.bandwidth_bytes_per_s for _, _, link in hops]
            hit = self._route_terms[key] = (sum(link.one_way_s for _, _, link in hops), sum(inv), max(inv, default=0.0))
        return hit

    def route_hops(self, a: str, b: str) -> tuple[tuple[tuple[str, str], float, float], ...]:
        """Per link hop of the route from ``a`` to ``b``: (link key, names sorted; bandwidth bytes/s;
        one-way latency s). Cached; empty for ``a == b``."""
        hops = self._hop_links.get((a, b))
        if hops is None:
            hops = self._hop_links[(a, b)] = tuple(((min(u, v), max(u, v)), link.bandwidth_bytes_per_s, link.one_way_s)
                                                  for u, v, link in self.route(a, b))
        return hops

    def _hops(self, a: str, b: str, nbytes: float) -> tuple[float, list[Step]]:
        """Latency (s) of sending ``nbytes`` from ``a`` to ``b``, and one :class:`Step` per link hop."""
        latency = 0.0
        steps = []
        for key, bw, one_way in self.route_hops(a, b):
            t = nbytes / bw
            latency += one_way + t
            steps.append(Step(key, t, one_way, nbytes))
        return latency, steps

    def transfer(self, cost: PhaseCost | None, a: str, b: str, nbytes: float) -> float:
        """Latency (s) of sending ``nbytes`` from ``a`` to ``b``; adds link busy time to ``cost``."""
        latency, steps = self._hops(a, b, nbytes)
        if cost is not None:
            for s in steps:
                cost.add_busy(s.key, s.hold_s)
        return latency

    # ----- one pass ---------------------------------------------------------------------------
    def _pass(self, pipe: Pipeline, tokens: float, context: float, prefill: bool) -> PhaseCost:
        """One pass of ``tokens`` tokens (micro-batch in decode, prompt in prefill) through ``pipe``."""
        cost = PhaseCost()
        terms, items = self._walk(pipe, tokens, context, prefill)
        for t in terms:
            cost.latency_s += t
        for item in items:
            for s in ((item,) if isinstance(item, Step) else (s for branch in item.branches for s in branch)):
                cost.add_busy(s.key, s.hold_s)
        return cost

    def pass_steps(self, pipe: Pipeline, tokens: float, context: float, prefill: bool) -> list[Step | Fork]:
        """The steps of one pass of :meth:`_pass`, in order: what a discrete-event simulator replays.

        Their latencies (a :class:`Fork` counts its slowest branch) add up to the pass's latency and
        their holds per key to its busy times, up to float rounding. The list has the same shape (keys,
        forks, branches) for every ``tokens`` and ``context`` of one pipeline; only the times change.
        Within a stage the work of layers whose experts all stay home comes first as one step, then
        each layer with placed experts (its non-expert block, then a :class:`Fork`), then the embedding
        and LM head; a codec's encoder precedes the cut's hops and its decoder follows them.
        """
        return self._walk(pipe, tokens, context, prefill)[1]

    def _walk(self, pipe: Pipeline, tokens: float, context: float, prefill: bool) -> tuple[list[float], list]:
        """(latency terms in the order the pass adds them, the pass's steps): one walk for both, so
        that :meth:`_pass` and :meth:`pass_steps` cannot drift apart."""
        m, db = self.model, self.db
        hb = m.hidden_bytes_per_token
        terms: list[float] = []
        items: list[Step | Fork] = []
        origin = self.instance.workload.origin
        placement: dict[int, list] = {}
        for e in pipe.expert_placement:
            placement.setdefault(e.layer, []).append(e)
        stages = pipe.stages

        def hops(a: str, b: str, nbytes: float) -> None:
            latency, steps = self._hops(a, b, nbytes)
            terms.append(latency)
            items.extend(steps)

        # Token ids reach the first stage.
        hops(origin, stages[0].device, tokens * TOKEN_ID_BYTES)
        for si, stage in enumerate(stages):
            dev = self.devices[stage.device]
            ne, ex = self._layer_times(stage.device, tokens, context, prefill)
            a, b = stage.first_layer, stage.end_layer
            moved = [layer for layer in placement if a <= layer < b]
            # Layers whose experts all stay home: sums over the slice.
            t_home = float(ne[a:b].sum() + ex[a:b].sum() - sum(ex[layer] for layer in moved))
            t_rest = t_home - sum(ne[layer] for layer in moved)
            items.append(Step(stage.device, t_rest))
            terms.append(t_rest)
            for layer in moved:
                critical, fork = self._experts(placement[layer], layer, stage.device, tokens)
                items.extend((Step(stage.device, ne[layer]), fork))
                terms.append(ne[layer] + critical)
            if stage.first_layer == 0:
                t = float(op_time_s(dev, 0.0, tokens * hb, db))
                items.append(Step(stage.device, t))
                terms.append(t)
            if stage.end_layer == m.num_layers:
                lm_tokens = 1.0 if prefill else tokens
                t = float(op_time_s(dev, lm_tokens * 2.0 * m.lm_head_params, m.lm_head_params * db, db))
                items.append(Step(stage.device, t))
                terms.append(t)
            if si + 1 < len(stages):
                nxt = stages[si + 1].device
                rank = pipe.codec_ranks[si] if si < len(pipe.codec_ranks) else None
                per_token = hb if rank is None else rank * db
                decoder = None
                if rank is not None:
                    codec_flops = tokens * 2.0 * m.hidden_size * rank
                    t_enc = float(op_time_s(dev, codec_flops, m.hidden_size * rank * db, db))
                    t_dec = float(op_time_s(self.devices[nxt], codec_flops, m.hidden_size * rank * db, db))
                    items.append(Step(stage.device, t_enc))
                    decoder = Step(nxt, t_dec)
                    terms.append(t_enc + t_dec)
                hops(stage.device, nxt, tokens * per_token)
                if decoder is not None:
                    items.append(decoder)
        # The sampled token goes back to the origin.
        out_tokens = 1.0 if prefill else tokens
        hops(stages[-1].device, origin, out_tokens * TOKEN_ID_BYTES)
        return terms, items

    def _layer_times(self, device: str, tokens: float, context: float, prefill: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer times (s) on ``device`` for ``tokens`` tokens: the non-expert block of every layer,
        and all routed experts of every layer kept on that device (zero for dense layers). Cached."""
        key = (self._hw[device], tokens, context, prefill)
        hit = self._cache.get(key)
        if hit is None:
            m, dev = self.model, self.devices[device]
            kv = m.kv_bytes_per_token_per_layer * tokens * (1.0 if prefill else context)
            flops = tokens * (self.nonexpert_flops_per_token + m.attention_score_flops_per_token(1.0) * context)
            ne = op_time_s(dev, flops, self.nonexpert_bytes + kv, self.db)
            touched = 1.0 - np.power(1.0 - np.clip(self.Q, 0.0, 1.0), tokens)
            ex = op_time_s(dev, self.Q * tokens * self.expert_flops_per_token, touched * self.expert_bytes, self.db).sum(axis=1)
            hit = self._cache[key] = (ne, ex)
        return hit

    def _expert_matrix(self, device: str, tokens: float) -> np.ndarray:
        """Time (s) of every routed expert [L, E] on ``device`` serving its whole share of ``tokens`` tokens (cached)."""
        key = ("experts", self._hw[device], tokens)
        hit = self._cache.get(key)
        if hit is None:
            touched = 1.0 - np.power(1.0 - np.clip(self.Q, 0.0, 1.0), tokens)
            hit = self._cache[key] = op_time_s(self.devices[device], self.Q * tokens * self.expert_flops_per_token,
                                               touched * self.expert_bytes, self.db)
        return hit

    def _experts(self, entries: list, layer: int, home: str, tokens: float) -> tuple[float, Fork]:
        """Critical time (s) of the routed experts of one layer whose placement ``entries`` move some
        experts off ``home``, and their steps: the home device's share, and per remote device the
        hidden states' round trip around its share."""
        m = self.model
        q = self.q[self.moe_index[layer]]
        local, remote = 0.0, 0.0
        hb = m.hidden_bytes_per_token
        branches = []
        for d, share, chosen, mass in self._layer_shares(entries, layer, home):
            if chosen is not None:
                # Whole experts: their times are the cached full-share times.
                t = float(np.add.reduce(self._expert_matrix(d, tokens)[layer, chosen]))
            else:
                prob = q * share
                touched = 1.0 - np.power(1.0 - np.clip(prob, 0.0, 1.0), tokens)
                t = float(np.sum(op_time_s(self.devices[d], prob * tokens * self.expert_flops_per_token,
                                           touched * self.expert_bytes, self.db)))
            if d == home:
                local = t
                branches.append((Step(d, t),))
            else:
                sent = mass * tokens * hb
                there, to = self._hops(home, d, sent)
                back, fro = self._hops(d, home, sent)
                remote = max(remote, there + t + back)
                branches.append((*to, Step(d, t), *fro))
        return max(local, remote), Fork(tuple(branches))

    def _layer_shares(self, entries: list, layer: int, home: str) -> list[tuple]:
        """Per device serving some of the layer's experts (home first): (device, share of each
        expert's selection probability [E], the indices of the experts it serves whole or None when some
        share is fractional, expected routing mass sent there). Independent of the tokens, so kept
        per placement for the passes that follow: keyed by the entries' identities, and the entry
        keeps them alive, so an identity cannot be reused by another object meanwhile."""
        key = ("shares", layer, home, tuple(map(id, entries)))
        hit = self._cache_local.get(key)
        if hit is not None:
            return hit[1]
        q = self.q[self.moe_index[layer]]
        n = self.model.num_experts
        # Plain lists while accumulating: numpy scalar assignments cost ~100x a list's.
        rows: dict[str, list[float]] = {home: [1.0] * n}
        for entry in entries:
            rows[home][entry.expert] = 0.0
            for d, s in zip(entry.devices, entry.shares):
                row = rows.get(d)
                if row is None:
                    row = rows[d] = [0.0] * n
                row[entry.expert] += s
        out = []
        for d, row in rows.items():
            share = np.array(row)
            whole = all(x == 0.0 or x == 1.0 for x in row)
            chosen = np.array([i for i, x in enumerate(row) if x == 1.0], dtype=np.intp) if whole else None
            out.append((d, share, chosen, float(np.add.reduce(q * share))))
        if len(self._cache_local) >= _PASS_CACHE_SIZE:
            self._cache_local.clear()
        self._cache_local[key] = (tuple(entries), out)
        return out

    # ----- memory -----------------------------------------------------------------------------
    def memory_bytes(self, plan: Plan) -> dict[str, float]:
        """Bytes each device of the plan holds (weights + KV cache + activation workspace)."""
        m, db = self.model, self.db
        mem: dict[str, float] = {}

        def add(d, v):
            mem[d] = mem.get(d, 0.0) + float(v)

        ctx = self.prompt + self.output
        workspace = self.workspace_bytes
        experts_per_layer = self.experts_per_layer
        for pipe in plan.pipelines:
            seqs = pipe.micro_batch_size * pipe.num_micro_batches
            for si, stage in enumerate(pipe.stages):
                a, b = stage.first_layer, stage.end_layer
                add(stage.device, workspace + self.nonexpert_bytes[a:b].sum()
                    + (b - a) * seqs * ctx * m.kv_bytes_per_token_per_layer + experts_per_layer[a:b].sum() * self.expert_bytes)
                if stage.first_layer == 0:
                    add(stage.device, m.embedding_params * db)
                if stage.end_layer == m.num_layers and not (m.tie_word_embeddings and stage.first_layer == 0):
                    add(stage.device, m.lm_head_params * db)
                rank = pipe.codec_ranks[si] if si < len(pipe.codec_ranks) else None
                if rank is not None and si + 1 < len(pipe.stages):
                    add(stage.device, m.hidden_size * rank * db)
                    add(pipe.stages[si + 1].device, m.hidden_size * rank * db)
            # Placed experts leave their layer's stage device for the listed devices.
            if pipe.expert_placement:
                home = [None] * m.num_layers
                for stage in pipe.stages:
                    home[stage.first_layer:stage.end_layer] = [stage.device] * (stage.end_layer - stage.first_layer)
                moved: dict[str, int] = {}  # device -> replicas gained (negative: lost)
                for e in pipe.expert_placement:
                    if 0 <= e.layer < m.num_layers and experts_per_layer[e.layer]:
                        moved[home[e.layer]] = moved.get(home[e.layer], 0) - 1
                        for d in e.devices:
                            moved[d] = moved.get(d, 0) + 1
                for d, n in moved.items():
                    add(d, n * self.expert_bytes)
        return mem

    # ----- whole plan -------------------------------------------------------------------------
    def _pass_cached(self, pipe: Pipeline, tokens: float, context: float, prefill: bool) -> PhaseCost:
        """:meth:`_pass`, remembered per structure (stages, codec ranks, expert placement) and tokens:
        plans that differ only in batching share their prefill pass and, per micro-batch size, their
        decode pass (a batching sweep of 9 points runs 6 passes, not 18). Do not modify the result."""
        # Keyed by the identity of the (immutable) parts, which batching variants made with
        # dataclasses.replace share; hashing a placement of 14,000 entries on every call would cost
        # more than the pass. The entry keeps the parts alive, so their ids cannot be reused.
        parts = (pipe.stages, pipe.codec_ranks, pipe.expert_placement)
        key = (id(parts[0]), id(parts[1]), id(parts[2]), tokens, context, prefill)
        hit = self._passes.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], parts)):
            if len(self._passes) >= _PASS_CACHE_SIZE:
                self._passes.clear()
            hit = self._passes[key] = (parts, self._pass(pipe, tokens, context, prefill))
        return hit[1]

    def pipeline_metrics(self, pipe: Pipeline) -> PipelineMetrics:
        b = float(pipe.micro_batch_size)
        concurrency = b * pipe.num_micro_batches
        decode = self._pass_cached(pipe, b, self.decode_context, prefill=False)
        prefill = self._pass_cached(pipe, self.prompt, self.prompt / 2.0, prefill=True)
        tpot, ttft = decode.latency_s, prefill.latency_s
        latency = ttft + (self.output - 1.0) * tpot
        step_busy = max(decode.busy_s.values())
        decode_tps = min(b / step_busy, concurrency / tpot)
        per_request = {}
        for key in set(decode.busy_s) | set(prefill.busy_s):
            per_request[key] = prefill.busy_s.get(key, 0.0) + (self.output - 1.0) * decode.busy_s.get(key, 0.0) / b
        bottleneck_key = max(per_request, key=per_request.get)
        rps_busy = 1.0 / per_request[bottleneck_key]
        rps_loop = concurrency / latency
        if rps_loop < rps_busy:
            rps, bottleneck = rps_loop, f"latency loop ({int(concurrency)} sequences in flight)"
        else:
            rps = rps_busy
            bottleneck = bottleneck_key if isinstance(bottleneck_key, str) else f"link {bottleneck_key[0]}<->{bottleneck_key[1]}"
        accuracy = sum(self.instance.constraints.codec.loss(r) for r in pipe.codec_ranks if r is not None)
        energy = 0.0
        for key, busy in per_request.items():
            if isinstance(key, str):
                d = self.devices[key]
                energy += d.idle_power_w / rps + (d.power_w - d.idle_power_w) * busy
        return PipelineMetrics(tpot, ttft, latency, decode_tps, rps, rps * self.output, bottleneck, accuracy,
                               energy / self.output, decode.busy_s, prefill.busy_s)

    def evaluate(self, plan: Plan) -> Evaluation:
        """Predicted figures of ``plan`` (assumes a structurally valid plan: see :mod:`planner.cost.validator`)."""
        pms = [self.pipeline_metrics(p) for p in plan.pipelines]
        shares = np.array([p.request_share for p in plan.pipelines], dtype=float)
        shares = shares / shares.sum() if shares.sum() > 0 else np.full(len(pms), 1.0 / len(pms))
        # Requests split by share: the whole serves rps until the first pipeline saturates.
        rps = min(pm.requests_per_s / s for pm, s in zip(pms, shares) if s > 0)
        limiting = int(np.argmin([pm.requests_per_s / s if s > 0 else np.inf for pm, s in zip(pms, shares)]))
        memory = self.memory_bytes(plan)
        bytes_per_token: dict[str, float] = {}
        for pipe, pm, s in zip(plan.pipelines, pms, shares):
            for key, busy in pm.decode_busy_s.items():
                if isinstance(key, tuple):
                    bw = self._links[key].bandwidth_bytes_per_s
                    name = f"{key[0]}<->{key[1]}"
                    bytes_per_token[name] = bytes_per_token.get(name, 0.0) + s * busy * bw / pipe.micro_batch_size
        return Evaluation(
            throughput_tokens_per_s=float(rps * self.output),
            requests_per_s=float(rps),
            latency_s=float(np.dot(shares, [pm.latency_s for pm in pms])),
            ttft_s=float(np.dot(shares, [pm.ttft_s for pm in pms])),
            tpot_s=float(np.dot(shares, [pm.tpot_s for pm in pms])),
            decode_tokens_per_s=sum(pm.decode_tokens_per_s for pm in pms),
            energy_j_per_token=float(np.dot(shares, [pm.energy_j_per_token for pm in pms])),
            accuracy_loss=max(pm.accuracy_loss for pm in pms),
            memory_bytes=memory,
            memory_capacity_bytes={d: self.devices[d].memory_bytes for d in memory},
            bytes_per_token=bytes_per_token,
            bottleneck=pms[limiting].bottleneck if len(pms) == 1 else f"pipeline {limiting}: {pms[limiting].bottleneck}",
            pipelines=pms,
        )
