"""Routes between the devices of an instance and what sending bytes over them costs.

A route is the fastest path for a 1 MB message (weight per link: one-way latency + 1 MB /
bandwidth), found by Dijkstra over the instance's links and cached. Sending ``n`` bytes over a
route takes ``sum over hops of (rtt/2 + n / bandwidth)`` and holds each link ``n / bandwidth``.

An interconnect (a device group's, or one between two groups) is not a clique in the search graph
but two hub nodes, one per direction: ``x -> hub`` weighs the link, ``hub -> y`` nothing, so a path
through it costs exactly its link and the graph has ``O(devices + links)`` edges.

Units: seconds, bytes, bytes/s.
"""

from __future__ import annotations

from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from planner.cost.evaluation import PhaseCost, Step
from planner.domain.instance import Instance, Link

# Route choice weight: one-way latency + the time of a 1 MB message (a typical cut payload).
_ROUTE_REFERENCE_BYTES = 1e6
_ALL_PAIRS_MAX = 512  # fleets up to this size get every route in one shortest-path call


def _weight(link: Link) -> float:
    return link.one_way_s + _ROUTE_REFERENCE_BYTES / link.bandwidth_bytes_per_s


_SHARED: dict = {}  # id(instance) -> (instance, Network): cost models of one instance share its routes
_SHARED_KEPT = 8


def network_of(instance: Instance) -> Network:
    """The :class:`Network` of ``instance``, shared by the cost models of that (frozen) instance
    object: its routes are found once, not once per solve (the last few instances are kept)."""
    hit = _SHARED.get(id(instance))
    if hit is not None and hit[0] is instance:
        return hit[1]
    net = Network(instance)
    _SHARED[id(instance)] = (instance, net)  # the entry keeps the instance alive: its id is not reused
    while len(_SHARED) > _SHARED_KEPT:
        _SHARED.pop(next(iter(_SHARED)))
    return net


class Network:
    """The links of ``instance`` as a graph of routes (cached per pair of devices)."""

    def __init__(self, instance: Instance):
        self._instance = instance
        self._names = [d.name for d in instance.devices]
        self._node = {n: i for i, n in enumerate(self._names)}
        n = len(self._names)
        rows, cols, weights = [], [], []
        # A pair's link is the one instance.link answers (the last listed; the pair's listings used
        # to add up into one weight); an edge per direction.
        seen = set()
        for link in reversed(instance.links):
            key = frozenset((link.a, link.b))
            if key in seen or link.a not in self._node or link.b not in self._node:
                continue
            seen.add(key)
            w = _weight(link)
            rows += [self._node[link.a], self._node[link.b]]
            cols += [self._node[link.b], self._node[link.a]]
            weights += [w, w]
        self._hub_of: dict = {}  # hub node (after the devices) -> its interconnect
        hub = n
        for ic in instance.interconnects:
            if not ic.num_pairs:
                continue
            w = _weight(ic.link(ic.a[0], ic.b[-1]))
            for src, dst in ((ic.a, ic.b), (ic.b, ic.a)) if not ic.is_mesh else ((ic.a, ic.a),):
                ins = [self._node[x] for x in src if x in self._node]
                outs = [self._node[y] for y in dst if y in self._node]
                rows += ins + [hub] * len(outs)
                cols += [hub] * len(ins) + outs
                weights += [w] * len(ins) + [0.0] * len(outs)  # explicit zeros are edges for csgraph
                self._hub_of[hub] = ic
                hub += 1
        self._weights = csr_matrix((weights, (rows, cols)), shape=(hub, hub))
        self._predecessors: dict[int, list[int]] = {}  # per source: predecessor of each node (-9999: none)
        self._routes: dict = {}
        self._route_terms: dict = {}
        self._hop_links: dict = {}  # (a, b) -> ((link key, bytes/s, one-way s) per hop)
        self._link_cache: dict = {}

    def link(self, a: str, b: str) -> Link:
        """The link between ``a`` and ``b`` (either order); ``KeyError`` if there is none. Cached: the
        cost model asks for every busy link of every plan it prices."""
        found = self._link_cache.get((a, b))
        if found is None:
            found = self._link_cache[(a, b)] = self._instance.link(a, b)
            if found is None:
                raise KeyError((a, b))
        return found

    def route(self, a: str, b: str) -> list:
        """Links (``(u, v, Link)`` per hop, in order) from ``a`` to ``b``: fastest path for a 1 MB message."""
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
                _, preds = dijkstra(self._weights, directed=True, indices=sources, return_predecessors=True)
                for src, row in zip(sources, preds.tolist()):
                    self._predecessors[src] = row
                pred = self._predecessors[i]
            if pred[j] < 0:
                raise ValueError(f"no route from {a!r} to {b!r}")
            nodes = [j]
            while nodes[-1] != i:
                nodes.append(pred[nodes[-1]])
            devices = [self._names[k] for k in reversed(nodes) if k < len(self._names)]
            through = {self._names[pred[k]]: self._hub_of[k] for k in nodes if k in self._hub_of}  # hop start -> interconnect
            route = []
            for u, v in zip(devices, devices[1:]):
                ic = through.get(u)
                route.append((u, v, ic.link(u, v) if ic is not None else self._instance.link(u, v)))
            self._routes[key] = route
        return route

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

    def hops(self, a: str, b: str, nbytes: float) -> tuple[float, list[Step]]:
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
        latency, steps = self.hops(a, b, nbytes)
        if cost is not None:
            for s in steps:
                cost.add_busy(s.key, s.hold_s)
        return latency
