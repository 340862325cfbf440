"""One pass through a pipeline (a decode step of a micro-batch, or one request's prefill), priced
term by term and laid out as the steps a discrete-event simulator replays.

Within a stage the work of layers whose experts all stay home comes first as one step, then each
layer with placed experts (its non-expert block, then a :class:`~planner.cost.evaluation.Fork` of
the home device's share and, per remote device, the hidden states' round trip around its share),
then the embedding and LM head; a codec's encoder precedes the cut's hops and its decoder follows
them. Token ids go from the origin to the first stage, the sampled token back from the last.

A remote device's round trip is charged its propagation latency (the RTTs of its route) only as
often as a call happens: weighted by the probability that at least one token of the pass routes a
slot to that device (:func:`remote_call_probability`); its bytes and the expert time there are
expected values already. A device whose profile carries a framework term (see
:mod:`planner.cost.compute`) adds its per-pass overhead once per stage and pass, and a remote
holder its per-call overhead, weighted by the same probability.
"""

from __future__ import annotations

import operator
from itertools import chain, islice
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from planner.cost.compute import expert_call_overhead_s, op_time_s, pass_overhead_s
from planner.cost.evaluation import Fork, Step
from planner.domain.plan import Pipeline, placement_columns

if TYPE_CHECKING:
    from planner.cost.costmodel import CostModel

TOKEN_ID_BYTES = 4.0
_BODIES_KEPT = 1 << 16  # stages whose steps are remembered (CostModel.stage_bodies) before it starts over
_SHARES_CACHE_SIZE = 4096  # placements whose per-device shares are remembered before the cache starts over


def walk(cm: CostModel, pipe: Pipeline, tokens: float, context: float, prefill: bool,
         steps: bool = True) -> tuple[list[float], list]:
    """(latency terms in the order the pass adds them, the pass's steps) of one pass of ``tokens``
    tokens at ``context`` through ``pipe``: one walk for both, so that the pass's figures
    (:meth:`CostModel.pass_cost`) and its steps (:meth:`CostModel.pass_steps`) cannot drift apart.
    With ``steps`` False the remote experts of every layer come as ``(key, hold)`` pairs instead of
    :class:`Fork` steps: the same holds summed over the pass per resource (:class:`PassExperts`,
    every layer priced at once; what a pass's cost needs, at a fraction of the price when thousands
    of experts are placed)."""
    m, db = cm.model, cm.db
    hb = m.hidden_bytes_per_token
    terms: list[float] = []
    items: list[Step | Fork] = []
    origin = cm.instance.workload.origin
    gates = gated_layers(cm, pipe)
    placement, known = _placement_by_layer(cm, pipe, gates)
    stages = pipe.stages
    experts = None
    if placement and not steps:
        experts = _pass_experts(cm, pipe, placement, known).cost(cm, tokens)
        items.extend(experts.holds)

    def hops(a: str, b: str, nbytes: float) -> None:
        latency, steps = cm.network.hops(a, b, nbytes)
        terms.append(latency)
        items.extend(steps)

    # Token ids reach the first stage.
    hops(origin, stages[0].device, tokens * TOKEN_ID_BYTES)
    bodies = cm.stage_bodies
    for si, stage in enumerate(stages):
        dev = cm.devices[stage.device]
        a, b = stage.first_layer, stage.end_layer
        moved = [layer for layer in placement if a <= layer < b]
        gated = [layer for layer in gates if a <= layer < b]
        # A stage whose experts all stay home and that has no gate costs the same in every plan that
        # has it (a search prices the same stages in many plans): its steps are remembered.
        key = (stage.device, a, b, tokens, context, prefill) if not moved and not gated else None
        body = bodies.get(key) if key is not None else None
        if body is None:
            body = ([], [])
            body_items, body_terms = body
            ne, ex = cm.times.layer_times(stage.device, tokens, context, prefill)
            # Layers whose experts all stay home: sums over the slice; a group-gated layer's experts are
            # its local subset serving every token.
            t_home = float(ne[a:b].sum() + ex[a:b].sum() - sum(ex[layer] for layer in moved)
                           - sum(ex[layer] - gated_expert_time(cm, gates[layer], layer, stage.device, tokens) for layer in gated))
            t_rest = t_home - sum(ne[layer] for layer in moved) + pass_overhead_s(dev)
            body_items.append(Step(stage.device, t_rest))
            body_terms.append(t_rest)
            for layer in moved:
                if steps:
                    critical, fork = experts_fork(cm, placement[layer], layer, stage.device, tokens)
                    body_items.extend((Step(stage.device, ne[layer]), fork))
                else:
                    critical = experts.critical[experts.index[layer]]
                    body_items.append(Step(stage.device, ne[layer]))
                body_terms.append(ne[layer] + critical)
            if stage.first_layer == 0:
                t = float(op_time_s(dev, 0.0, tokens * hb, db))
                body_items.append(Step(stage.device, t))
                body_terms.append(t)
            if stage.end_layer == m.num_layers:
                lm_tokens = 1.0 if prefill else tokens
                t = float(op_time_s(dev, lm_tokens * 2.0 * m.lm_head_params, m.lm_head_params * db, db))
                body_items.append(Step(stage.device, t))
                body_terms.append(t)
            if key is not None:
                if len(bodies) >= _BODIES_KEPT:
                    bodies.clear()
                bodies[key] = body
        items.extend(body[0])
        terms.extend(body[1])
        if si + 1 < len(stages):
            nxt = stages[si + 1].device
            rank = pipe.codec_ranks[si] if si < len(pipe.codec_ranks) else None
            per_token = hb if rank is None else rank * db
            decoder = None
            if rank is not None:
                codec_flops = tokens * 2.0 * m.hidden_size * rank
                t_enc = float(op_time_s(dev, codec_flops, m.hidden_size * rank * db, db))
                t_dec = float(op_time_s(cm.devices[nxt], codec_flops, m.hidden_size * rank * db, db))
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


def _placement_by_layer(cm: CostModel, pipe: Pipeline, gates: dict) -> tuple[dict[int, list], dict]:
    """The placement entries of ``pipe`` per layer, group-gated layers left out, and a dict for what
    the passes derive from them (``"pass"``: its :class:`PassExperts`). Cached per (placement,
    gates, stages) of a plan, like :func:`gated_layers`: a pass of a plan with thousands of placed
    experts would otherwise spend a third of its time regrouping them."""
    key = ("by layer", id(pipe.expert_placement), id(pipe.group_gate), id(pipe.stages))
    parts = (pipe.expert_placement, pipe.group_gate, pipe.stages)
    hit = cm.instance_cache.get(key)
    if hit is not None and hit[0] == parts:
        return hit[1]
    placement: dict[int, list] = {}
    for e in pipe.expert_placement:
        if e.layer not in gates:
            placement.setdefault(e.layer, []).append(e)
    if len(cm.instance_cache) >= _SHARES_CACHE_SIZE:
        cm.instance_cache.clear()
    out = (placement, {})
    cm.instance_cache[key] = (parts, out)
    return out


def experts_fork(cm: CostModel, entries: list, layer: int, home: str, tokens: float) -> tuple[float, Fork]:
    """Critical time (s) of the routed experts of one layer whose placement ``entries`` move some
    experts off ``home``, and their steps: the home device's share, and per remote device the
    hidden states' round trip around its share."""
    shares = layer_shares(cm, entries, layer, home)
    times = shares.times(cm, layer, tokens)
    calls = shares.call_probability(cm, tokens)
    hb = cm.model.hidden_bytes_per_token
    local, remote = 0.0, 0.0
    branches = []
    for d, t, mass, p in zip(shares.devices, times, shares.mass, calls):
        t = float(t)
        if d == home:
            local = t
            branches.append((Step(d, t),))
        else:
            t += float(p) * expert_call_overhead_s(cm.devices[d])
            sent = mass * tokens * hb
            # Expected bytes (sent) and expert time (t); the propagation only when a call happens.
            to = [s._replace(delay_s=s.delay_s * float(p)) for s in cm.network.hops(home, d, sent)[1]]
            fro = [s._replace(delay_s=s.delay_s * float(p)) for s in cm.network.hops(d, home, sent)[1]]
            remote = max(remote, sum(s.latency_s for s in to) + t + sum(s.latency_s for s in fro))
            branches.append((*to, Step(d, t), *fro))
    return max(local, remote), Fork(tuple(branches))


def remote_call_probability(mass: float, tokens: float, top_k: int, num_experts: int) -> float:
    """Probability that at least one of ``tokens`` tokens routes a slot to a device that serves
    ``mass`` of a layer's expected selections per token (``sum_e share[e] x q[e]``, 0..top_k).

    One token picks ``top_k`` distinct experts of ``num_experts``; the device's part of the routing
    is ``m = mass / top_k``. A token misses the device with probability
    ``prod_{i < k} (E (1 - m) - i) / (E - i)``: exactly ``C(E - s, k) / C(E, k)`` under uniform
    routing with ``s = E m`` experts on the device, and for popularity-weighted routing the same
    formula with the device's routing share (an approximation: the marginals do not fix the joint
    law of a token's k picks). Tokens route independently: ``P = 1 - miss ** tokens``. 0 when
    nothing routes there, 1 as ``tokens`` grows.
    """
    k, e = max(int(top_k), 1), max(int(num_experts), 1)
    m = min(max(float(mass) / k, 0.0), 1.0)
    if m <= 0.0 or tokens <= 0:
        return 0.0
    miss = 1.0
    for i in range(min(k, e)):
        miss *= max(e * (1.0 - m) - i, 0.0) / (e - i)
    return float(1.0 - miss ** float(tokens))


def remote_call_probabilities(mass: np.ndarray, tokens: float, top_k: int, num_experts: int) -> np.ndarray:
    """:func:`remote_call_probability` of every device of ``mass`` at once (the same operations, elementwise)."""
    return calls_from_misses(*token_misses(mass, top_k, num_experts), tokens)


def token_misses(mass: np.ndarray, top_k: int, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """(the probability that one token misses each device of ``mass``, whether nothing routes there):
    what :func:`remote_call_probabilities` needs before the token count."""
    k, e = max(int(top_k), 1), max(int(num_experts), 1)
    m = np.minimum(np.maximum(np.asarray(mass, dtype=float) / k, 0.0), 1.0)
    miss = np.ones_like(m)
    for i in range(min(k, e)):
        miss *= np.maximum(e * (1.0 - m) - i, 0.0) / (e - i)
    return miss, m <= 0.0


def calls_from_misses(miss: np.ndarray, nothing: np.ndarray, tokens: float) -> np.ndarray:
    """Call probabilities of ``tokens`` independent tokens from :func:`token_misses`."""
    if tokens <= 0:
        return np.zeros_like(miss)
    return np.where(nothing, 0.0, 1.0 - miss ** float(tokens))


class LayerShares:
    """The devices that serve some of one layer's routed experts (home first): ``share[d, e]``, the
    part of expert ``e``'s selection probability device ``d`` serves; ``mass[d]``, the expected
    routing mass sent there. The expert times are priced on the nonzero ``(d, e)`` pairs only (a
    device of an expert-parallel group holds a few of a layer's experts), grouped by hardware kind
    (``groups``: representative device, rows, experts and shares of its pairs), one vectorised call
    per kind; an operation of no tokens and no bytes takes no time, so the zero pairs add nothing."""

    __slots__ = ("devices", "share", "mass", "groups", "_memo", "_calls")

    def __init__(self, cm: CostModel, devices: list[str], share: np.ndarray, q: np.ndarray):
        self.devices = devices
        self.share = share
        self.mass = [float(x) for x in share @ q]
        groups: dict = {}
        for i, d in enumerate(devices):
            groups.setdefault(cm.times.hardware_of(d), (d, []))[1].append(i)
        self.groups = []
        for rep, idx in groups.values():
            sub = share[idx]
            r, e = np.nonzero(sub)
            self.groups.append((rep, np.asarray(idx, dtype=np.intp)[r], e, sub[r, e]))
        self._memo: dict = {}
        self._calls: dict = {}

    def call_probability(self, cm: CostModel, tokens: float) -> np.ndarray:
        """[D] probability that a pass of ``tokens`` tokens calls each device (home: 1), from
        :func:`remote_call_probability` (cached per tokens)."""
        hit = self._calls.get((tokens, cm.weighted_remote_calls))
        if hit is None:
            m = cm.model
            if cm.weighted_remote_calls:
                hit = np.concatenate(([1.0], remote_call_probabilities(np.asarray(self.mass[1:]), tokens, m.top_k,
                                                                       m.num_experts)))
            else:
                hit = np.ones(len(self.devices))
            self._calls[(tokens, cm.weighted_remote_calls)] = hit
        return hit

    def times(self, cm: CostModel, layer: int, tokens: float) -> np.ndarray:
        """[D] time (s) of each device's share of the layer's experts for ``tokens`` tokens (cached per tokens)."""
        hit = self._memo.get(tokens)
        if hit is None:
            q = cm.q[cm.moe_index[layer]]
            hit = np.zeros(len(self.devices))
            for rep, rows, experts, share in self.groups:
                hit += np.bincount(rows, weights=_expert_times(cm, rep, q[experts] * share, tokens),
                                   minlength=len(self.devices))
            self._memo[tokens] = hit
        return hit


class ExpertsCost(NamedTuple):
    """The placed experts of one pass: ``critical[i]`` (s), the critical time of the routed experts
    of moved layer ``i`` (``index[layer]``), the slower of the home device's share and the slowest
    remote round trip; ``holds``, the (resource, hold s) pairs of all of them, summed per resource."""

    index: dict
    critical: np.ndarray
    holds: list


class PassExperts:
    """Every layer of a pipeline whose placement moves experts off the layer's stage device, priced
    at once: what :func:`experts_fork` gives one layer at a time, on arrays [moved layers, devices].

    The devices are every device of the layers' :class:`LayerShares` (first use); a layer's row is
    zero where it sends nothing. Per pass size: the expert times of all nonzero (layer, device,
    expert) triples in one vectorised call per hardware kind, the call probabilities
    (:func:`remote_call_probabilities`), then per layer the critical time
    ``max(t[home], max_d(P_d rtt_d + sent_d / bw_d + t_d + P_d overhead_d))``, elementwise the same
    operations as one layer's; the holds are summed over the layers (the order of float additions
    differs from one layer at a time, by rounding only). Independent of the pass size, so kept per
    placement and stages (:func:`_placement_by_layer`)."""

    def __init__(self, cm: CostModel, pipe: Pipeline, placement: dict[int, list]):
        home_of = {layer: s.device for s in pipe.stages for layer in s.layers}
        layers = [layer for s in pipe.stages for layer in s.layers if layer in placement]
        E = cm.model.num_experts
        columns = placement_columns(pipe.expert_placement)
        if len(columns.layers) == sum(map(len, placement.values())) and all(map(operator.le, columns.layers,
                                                                              islice(columns.layers, 1, None))):
            # Every entry counts and the placement is in layer order (as stage order lists layers):
            # its columns, read once per placement.
            devices_of, experts_of, shares_of = columns.devices, columns.experts, columns.shares
        else:
            entries = [e for layer in layers for e in placement[layer]]
            devices_of = list(map(attrgetter("devices"), entries))
            experts_of = list(map(attrgetter("expert"), entries))
            shares_of = list(map(attrgetter("shares"), entries))
        counts = np.fromiter(map(len, devices_of), dtype=np.intp, count=len(devices_of))
        names = list(chain.from_iterable(devices_of))
        # Per layer, in order: its home device, then the devices its entries name (first appearance);
        # the columns are every layer's devices in that order.
        ends = np.cumsum([len(placement[layer]) for layer in layers]).tolist()
        name_ends = np.concatenate(([0], np.cumsum(counts)))[[0, *ends]].tolist()
        per_layer = [list(dict.fromkeys([home_of[layer], *names[a:z]]))
                     for layer, a, z in zip(layers, name_ends, name_ends[1:])]
        cols = {d: i for i, d in enumerate(dict.fromkeys(chain.from_iterable(per_layer)))}
        n, u = len(layers), len(cols)
        self.index = {layer: i for i, layer in enumerate(layers)}
        self.devices = list(cols)
        self.home = np.array([cols[ds[0]] for ds in per_layer], dtype=np.intp)
        # Every (layer row, device column, expert, share) triple: the entries' devices, then the
        # home device's share 1 of each expert no entry of its layer moves.
        row = np.repeat(np.arange(n, dtype=np.intp), np.diff([0, *ends]))
        expert = np.fromiter(experts_of, dtype=np.intp, count=len(devices_of))
        col = np.fromiter(map(cols.__getitem__, names), dtype=np.intp, count=len(names))
        share = np.fromiter(chain.from_iterable(shares_of), dtype=float, count=len(names))
        moved = np.zeros((n, E), dtype=bool)
        moved[row, expert] = True
        kept_row, kept_expert = np.nonzero(~moved)
        rows = np.concatenate([np.repeat(row, counts), kept_row])
        cells = np.concatenate([np.repeat(expert, counts), kept_expert])
        cols_all = np.concatenate([col, self.home[kept_row]])
        values = np.concatenate([share, np.ones(kept_row.size)])
        nonzero = values != 0
        rows, cells, cols_all, values = rows[nonzero], cells[nonzero], cols_all[nonzero], values[nonzero]
        # Per (layer, device) the experts in order, as one layer's sum: the (row, column, expert)
        # triples are distinct (an entry names a device once; kept experts are the unmoved ones), so
        # one sort of a combined key orders them as a lexsort of the three would.
        order = np.argsort((rows * u + cols_all) * E + cells)
        rows, cells, cols_all, values = rows[order], cells[order], cols_all[order], values[order]
        qrow = np.array([cm.moe_index[layer] for layer in layers], dtype=np.intp)[rows] * E
        pos = rows * u + cols_all
        self.mass = np.bincount(pos, weights=values * cm.q.reshape(-1)[qrow + cells], minlength=n * u).reshape(n, u)
        # Round trips per (home, device) pair, in the order the layers name them; a link's bytes per
        # routed token are the masses over its bandwidth, summed per pair first.
        pairs: dict = {}
        remote_rows, remote_cols, remote_pairs = [], [], []
        for i, ds in enumerate(per_layer):
            home = ds[0]
            for d in ds[1:]:
                remote_rows.append(i)
                remote_cols.append(cols[d])
                remote_pairs.append(pairs.setdefault((home, d), len(pairs)))
        r = np.array(remote_rows, dtype=np.intp)
        c = np.array(remote_cols, dtype=np.intp)
        net = cm.network
        terms = [(net.route_terms(home, d), net.route_terms(d, home)) for home, d in pairs]
        pair_latency = np.array([there[0] + back[0] for there, back in terms])
        pair_per_byte = np.array([there[1] + back[1] for there, back in terms])
        pair_overhead = np.array([expert_call_overhead_s(cm.devices[d]) for _, d in pairs])
        at = np.array(remote_pairs, dtype=np.intp)
        self.remote = np.zeros((n, u), dtype=bool)
        self.latency = np.zeros((n, u))
        self.per_byte = np.zeros((n, u))
        self.overhead = np.zeros((n, u))
        if at.size:
            self.remote[r, c] = True
            self.latency[r, c] = pair_latency[at]
            self.per_byte[r, c] = pair_per_byte[at]
            self.overhead[r, c] = pair_overhead[at]
        pair_mass = np.bincount(at, weights=self.mass[r, c], minlength=len(pairs)).tolist() if at.size else []
        links: dict = {}
        for (home, d), mass in zip(pairs, pair_mass):
            for key, bw, _ in net.route_hops(home, d) + net.route_hops(d, home):
                links[key] = links.get(key, 0.0) + mass / bw
        self.links = list(links.items())
        # Expert times: the triples grouped by the hardware of their device, one vectorised call per kind.
        hw = [cm.times.hardware_of(d) for d in self.devices]
        kinds = {k: i for i, k in enumerate(dict.fromkeys(hw))}
        kind_of_col = np.array([kinds[k] for k in hw], dtype=np.intp)[cols_all]
        reps = {}
        for d, k in zip(self.devices, hw):
            reps.setdefault(k, d)
        # Per kind: the positions, the experts' rows of ``cm.q`` and of ``cm.Q`` (by layer), the
        # shares, and which shares are whole (those experts' times are the cached matrix's entries).
        self.flat = []
        qlayer = np.array(layers, dtype=np.intp)[rows] * E + cells
        for k, ki in kinds.items():
            at = kind_of_col == ki
            share = values[at]
            whole = share == 1.0
            self.flat.append((reps[k], pos[at], (qrow + cells)[at], share, qlayer[at], whole, bool(whole.all())))
        self._memo: dict = {}
        self._misses = None

    def calls(self, cm: CostModel, tokens: float) -> np.ndarray:
        """[layers, devices] probability that a pass of ``tokens`` tokens calls each remote device
        (1 when calls are priced in full; 0 where a layer sends nothing, and at its home)."""
        if not cm.weighted_remote_calls:
            return self.remote.astype(float)
        if self._misses is None:  # independent of the tokens: once per placement
            m = cm.model
            miss, nothing = token_misses(self.mass, m.top_k, m.num_experts)
            self._misses = (miss, nothing | ~self.remote)
        return calls_from_misses(*self._misses, tokens)

    def cost(self, cm: CostModel, tokens: float) -> ExpertsCost:
        """The experts' critical times and holds for a pass of ``tokens`` tokens (cached per tokens)."""
        key = (tokens, cm.weighted_remote_calls)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        n, u = self.mass.shape
        m = cm.model
        q = cm.q.reshape(-1)
        t = np.zeros(n * u)
        for rep, pos, qi, share, qlayer, whole, all_whole in self.flat:
            # A whole expert's time is the cached matrix's entry (the same operations on the same
            # numbers); only split experts are priced here.
            full = cm.times.expert_matrix(rep, tokens).reshape(-1)
            if all_whole:
                times = full[qlayer]
            else:
                times = np.where(whole, full[qlayer], 0.0)
                part = ~whole
                times[part] = _expert_times(cm, rep, q[qi[part]] * share[part], tokens)
            t += np.bincount(pos, weights=times, minlength=n * u)
        t = t.reshape(n, u)
        calls = self.calls(cm, tokens)
        t = t + calls * self.overhead
        hb = m.hidden_bytes_per_token
        remote = np.where(self.remote, calls * self.latency + self.mass * tokens * hb * self.per_byte + t, 0.0)
        critical = np.maximum(t[np.arange(n), self.home], remote.max(axis=1) if u else 0.0)
        holds = list(zip(self.devices, t.sum(axis=0).tolist()))
        holds += [(key, coef * tokens * hb) for key, coef in self.links]
        hit = self._memo[key] = ExpertsCost(self.index, critical, holds)
        return hit


def round_trip_floor(cm: CostModel, pipe: Pipeline, tokens: float) -> float:
    """A lower bound (s) on the latency of one pass of ``tokens`` tokens through ``pipe``: per layer
    whose experts are placed away, the slowest remote device's round-trip propagation weighted by
    the probability that the pass calls it (each layer's critical time is at least that; the bytes,
    expert times and everything else of the pass only add). 0 without placed experts. The call
    probability grows with the tokens, so the floor at one token bounds every micro-batch size."""
    placement, known = _placement_by_layer(cm, pipe, gated_layers(cm, pipe))
    if not placement:
        return 0.0
    experts = _pass_experts(cm, pipe, placement, known)
    return float((experts.calls(cm, tokens) * experts.latency).max(axis=1).sum())


def _pass_experts(cm: CostModel, pipe: Pipeline, placement: dict[int, list], known: dict) -> PassExperts:
    """The :class:`PassExperts` of ``pipe``, kept in ``known`` (:func:`_placement_by_layer`'s dict).
    It depends on the stages only through the devices of the layers that move experts, so a plan
    whose other stages changed (a local-search move: a boundary elsewhere, another device for a
    stage without such layers) shares the one of the same placement and gates."""
    experts = known.get("pass")
    if experts is None:
        homes = tuple(s.device for s in pipe.stages for layer in s.layers if layer in placement)
        key = ("pass experts", id(pipe.expert_placement), id(pipe.group_gate), homes)
        hit = cm.instance_cache.get(key)
        if hit is not None and hit[0] is pipe.expert_placement and hit[1] is pipe.group_gate:
            experts = hit[2]
        else:
            experts = PassExperts(cm, pipe, placement)
            if len(cm.instance_cache) >= _SHARES_CACHE_SIZE:
                cm.instance_cache.clear()
            cm.instance_cache[key] = (pipe.expert_placement, pipe.group_gate, experts)
        known["pass"] = experts
    return experts


def _expert_times(cm: CostModel, device: str, prob: np.ndarray, tokens: float) -> np.ndarray:
    """Time (s) on ``device`` of routed experts each selected with probability ``prob`` per token,
    for ``tokens`` tokens: the expert's weights are read when a token picks it."""
    touched = 1.0 - np.power(1.0 - np.clip(prob, 0.0, 1.0), tokens)
    return op_time_s(cm.devices[device], prob * tokens * cm.expert_flops_per_token, touched * cm.expert_bytes, cm.db)


def layer_shares(cm: CostModel, entries: list, layer: int, home: str) -> LayerShares:
    """The :class:`LayerShares` of one layer whose placement ``entries`` move some experts off
    ``home``. Independent of the tokens, so kept per placement for the passes that follow: keyed by
    the entries' identities, and the entry keeps them alive, so an identity cannot be reused by
    another object meanwhile."""
    key = ("shares", layer, home, tuple(map(id, entries)))
    hit = cm.instance_cache.get(key)
    if hit is not None:
        return hit[1]
    q = cm.q[cm.moe_index[layer]]
    n = cm.model.num_experts
    # Rows: the home device, then the devices in the order the entries name them. The home device
    # keeps the experts no entry moves; each entry's shares are added in order (np.add.at is
    # unbuffered: the same sums as one at a time).
    experts = [e.expert for e in entries]
    counts = [len(e.devices) for e in entries]
    names = list(chain.from_iterable(e.devices for e in entries))
    rows = {d: i for i, d in enumerate(dict.fromkeys([home, *names]))}
    share = np.zeros((len(rows), n))
    share[0] = 1.0
    share[0, experts] = 0.0
    np.add.at(share, ([rows[d] for d in names], np.repeat(experts, counts)),
              np.fromiter(chain.from_iterable(e.shares for e in entries), dtype=float, count=len(names)))
    out = LayerShares(cm, list(rows), share, q)
    if len(cm.instance_cache) >= _SHARES_CACHE_SIZE:
        cm.instance_cache.clear()
    cm.instance_cache[key] = (tuple(entries), out)
    return out


class Gate(NamedTuple):
    """A group-gated layer: ``local[e]`` whether expert ``e`` is held on ``device``; ``coverage``,
    the share of the layer's routing mass (top-k selections) those experts receive."""

    device: str
    local: np.ndarray
    coverage: float


def gated_layers(cm: CostModel, pipe: Pipeline) -> dict[int, Gate]:
    """The group-gated layers of ``pipe`` (on a device that runs the layer's stage), each with its
    local subset and coverage. Cached per (gates, placement) of a plan, like :func:`layer_shares`."""
    if not pipe.group_gate:
        return {}
    key = ("gates", id(pipe.group_gate), id(pipe.expert_placement), id(pipe.stages))
    hit = cm.instance_cache.get(key)
    if hit is not None and hit[0] == (pipe.group_gate, pipe.expert_placement, pipe.stages):
        return hit[1]
    m = cm.model
    home = {layer: s.device for s in pipe.stages for layer in s.layers}
    away: dict[int, list] = {}
    for e in pipe.expert_placement:
        away.setdefault(e.layer, []).append(e)
    out = {}
    for layer, device in pipe.gated_layers(m.is_moe_layer).items():
        if home.get(layer) != device or layer not in cm.moe_index:
            continue
        local = np.ones(m.num_experts, dtype=bool)
        for e in away.get(layer, ()):
            local[e.expert] = device in e.devices
        q = cm.q[cm.moe_index[layer]]
        out[layer] = Gate(device, local, float(q[local].sum() / max(m.top_k, 1)))
    if len(cm.instance_cache) >= _SHARES_CACHE_SIZE:
        cm.instance_cache.clear()
    cm.instance_cache[key] = ((pipe.group_gate, pipe.expert_placement, pipe.stages), out)
    return out


def gated_expert_time(cm: CostModel, gate: Gate, layer: int, device: str, tokens: float) -> float:
    """Time (s) of a group-gated layer's experts on ``device`` for ``tokens`` tokens: the local
    subset serves every token's top-k, each local expert's selection probability scaled by
    ``1 / coverage`` (capped at 1)."""
    if gate.coverage <= 0:
        return 0.0
    q = cm.q[cm.moe_index[layer]]
    prob = np.where(gate.local, np.clip(q / gate.coverage, 0.0, 1.0), 0.0)
    touched = 1.0 - np.power(1.0 - prob, tokens)
    return float(np.sum(op_time_s(cm.devices[device], prob * tokens * cm.expert_flops_per_token,
                                  touched * cm.expert_bytes, cm.db)))
