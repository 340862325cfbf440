"""Changed instances: the same instance after a change of the world (slower links, a lost or added
device, a load spike, drifting expert popularity), for re-planning and the simulator's events."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import networkx as nx
import numpy as np

from planner.domain.device import Device
from planner.domain.instance import Instance, Link, routing_probabilities


def changed_instance(instance: Instance, *, bandwidth_factor: float | None = None, link=None,
                     drop_device: str | Iterable[str] | None = None, add_device=None,
                     arrival_rate_per_s: float | None = None, max_batch: int | None = None,
                     popularity=None) -> Instance:
    """A copy of ``instance`` with one or more changes (the instance itself is not modified).

    * ``bandwidth_factor``: multiply link bandwidths (and bandwidth series) by it: every link, or
      only the link(s) ``link`` names as a pair ``("a", "b")`` or a list of pairs;
    * ``link``: with no ``bandwidth_factor``, a :class:`Link` or list of Links to add, replacing any
      link between the same two devices;
    * ``drop_device``: a device name (or several) lost; its links go too, and so does any device
      that is then cut off from the origin. Dropping the origin is a ``ValueError``;
    * ``add_device``: a :class:`Device`, or ``(device, links)``; the new device needs at least one
      link (here or in ``link``);
    * ``arrival_rate_per_s``, ``max_batch``: a load spike or lull;
    * ``popularity``: expert weights ``[moe layers, experts]`` (normalised to routing
      probabilities, rows summing to top-k): popularity drift.
    """
    devices = list(instance.devices)
    links = list(instance.links)
    workload = instance.workload
    notes = []

    def pair(x):
        if isinstance(x, Link):
            return frozenset((x.a, x.b))
        if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, str) for v in x):
            return frozenset(x)
        raise ValueError(f"a link is a Link or a pair of device names, got {x!r}")

    link_items = [] if link is None else ([link] if isinstance(link, Link) or (
        isinstance(link, tuple) and len(link) == 2 and all(isinstance(v, str) for v in link)) else list(link))
    if add_device is not None:
        dev, extra = (add_device, []) if isinstance(add_device, Device) else (add_device[0], list(add_device[1]))
        if not isinstance(dev, Device):
            raise ValueError(f"add_device must be a Device or (Device, links), got {add_device!r}")
        if dev.name in instance.device_index:
            raise ValueError(f"device {dev.name!r} already exists")
        devices.append(dev)
        link_items = link_items + extra
        notes.append(f"added {dev.name}")
    if bandwidth_factor is not None:
        if not (bandwidth_factor > 0 and math.isfinite(bandwidth_factor)):
            raise ValueError(f"bandwidth_factor must be a positive number, got {bandwidth_factor!r}")
        which = {pair(x) for x in link_items} if link_items else None
        if which is not None:
            missing = which - {frozenset((l.a, l.b)) for l in links}
            if missing:
                raise ValueError(f"no link between {sorted(sorted(p) for p in missing)}")

        def scaled(l: Link) -> Link:
            if which is not None and frozenset((l.a, l.b)) not in which:
                return l
            series = None if l.bandwidth_series is None else np.asarray(l.bandwidth_series) * bandwidth_factor
            return replace(l, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * bandwidth_factor, bandwidth_series=series)

        links = [scaled(l) for l in links]
        notes.append(f"bandwidth x{bandwidth_factor:g}")
    else:
        for l in link_items:
            if not isinstance(l, Link):
                raise ValueError(f"link must be a Link to add (or give bandwidth_factor), got {l!r}")
            links = [x for x in links if frozenset((x.a, x.b)) != pair(l)] + [l]
    names = {d.name for d in devices}
    for l in links:
        if l.a not in names or l.b not in names:
            raise ValueError(f"link {l.a}<->{l.b} names a device the instance lacks")
    if drop_device is not None:
        drop = {drop_device} if isinstance(drop_device, str) else set(drop_device)
        unknown = drop - names
        if unknown:
            raise ValueError(f"cannot drop unknown device(s) {sorted(unknown)}; devices: {sorted(names)}")
        if workload.origin in drop:
            raise ValueError(f"cannot drop the origin {workload.origin!r}: requests enter there")
        devices = [d for d in devices if d.name not in drop]
        links = [l for l in links if l.a not in drop and l.b not in drop]
        notes.append("lost " + ", ".join(sorted(drop)))
    # Devices cut off from the origin are lost too.
    g = nx.Graph()
    g.add_nodes_from(d.name for d in devices)
    g.add_edges_from((l.a, l.b) for l in links)
    reach = nx.node_connected_component(g, workload.origin)
    if len(reach) < len(devices):
        cut = sorted(d.name for d in devices if d.name not in reach)
        if add_device is not None and (add_device if isinstance(add_device, Device) else add_device[0]).name in cut:
            raise ValueError("the added device has no link to the fleet: give links with add_device or link")
        devices = [d for d in devices if d.name in reach]
        links = [l for l in links if l.a in reach and l.b in reach]
        notes.append("cut off " + ", ".join(cut))
    if arrival_rate_per_s is not None:
        if not (arrival_rate_per_s > 0 and math.isfinite(arrival_rate_per_s)):
            raise ValueError(f"arrival_rate_per_s must be a positive number, got {arrival_rate_per_s!r}")
        workload = replace(workload, arrival_rate_per_s=float(arrival_rate_per_s))
        notes.append(f"arrival rate {arrival_rate_per_s:g}/s")
    if max_batch is not None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        workload = replace(workload, max_batch=int(max_batch))
        notes.append(f"max_batch {max_batch}")
    if popularity is not None:
        m = instance.model
        w = np.asarray(popularity, dtype=float)
        if w.shape != (m.num_moe_layers, m.num_experts):
            raise ValueError(f"popularity must have shape (moe layers, experts) = {(m.num_moe_layers, m.num_experts)}, got {w.shape}")
        if not np.all(np.isfinite(w)) or (w < 0).any() or (w.sum(axis=1) <= 0).any():
            raise ValueError("popularity weights must be finite, >= 0, with a positive sum in every layer")
        workload = replace(workload, popularity=routing_probabilities(w, m.top_k), popularity_kind="measured")
        notes.append("popularity drift")
    description = instance.description + (" [changed: " + "; ".join(notes) + "]" if notes else "")
    return replace(instance, devices=tuple(devices), links=tuple(links), workload=workload, description=description)
