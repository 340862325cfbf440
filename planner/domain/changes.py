"""Changed instances: the same instance after a change of the world (slower links, a lost or added
device, a load spike, drifting expert popularity), for re-planning and the simulator's events."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

import networkx as nx
import numpy as np

from planner.domain.device import Device
from planner.domain.instance import Instance, Interconnect, Link, Workload, connectivity_graph, routing_probabilities


def _pair(x) -> frozenset:
    """The two device names a :class:`Link` or a pair ``("a", "b")`` joins, in either order."""
    if isinstance(x, Link):
        return frozenset((x.a, x.b))
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, str) for v in x):
        return frozenset(x)
    raise ValueError(f"a link is a Link or a pair of device names, got {x!r}")


def _link_items(link) -> list:
    """``link`` as a list of items: a Link or a tuple of two names is one item, anything else a sequence of them."""
    if link is None:
        return []
    if isinstance(link, Link) or (isinstance(link, tuple) and len(link) == 2 and all(isinstance(v, str) for v in link)):
        return [link]
    return list(link)


def _add_device(instance: Instance, add_device, devices: list, link_items: list) -> tuple[Device, list, list]:
    """``add_device`` (a Device, or ``(device, links)``) checked and appended: ``(device, devices, link items)``,
    its links joining the link items."""
    dev, extra = (add_device, []) if isinstance(add_device, Device) else (add_device[0], list(add_device[1]))
    if not isinstance(dev, Device):
        raise ValueError(f"add_device must be a Device or (Device, links), got {add_device!r}")
    if dev.name in instance.device_index:
        raise ValueError(f"device {dev.name!r} already exists")
    return dev, devices + [dev], link_items + extra


def _scale_bandwidth(links: list[Link], interconnects: list[Interconnect], factor: float,
                     link_items: list) -> tuple[list[Link], list[Interconnect]]:
    """``links`` and ``interconnects`` with bandwidths (and bandwidth series, bytes/s) times ``factor``:
    every link, or only those ``link_items`` name (each of which must exist; a pair an interconnect
    joins gets a scaled link of its own, which wins over the interconnect's)."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"bandwidth_factor must be a positive number, got {factor!r}")

    def scaled(l):
        series = None if l.bandwidth_series is None else np.asarray(l.bandwidth_series) * factor
        return replace(l, bandwidth_bytes_per_s=l.bandwidth_bytes_per_s * factor, bandwidth_series=series)

    if not link_items:
        return [scaled(l) for l in links], [scaled(ic) for ic in interconnects]
    which = {_pair(x) for x in link_items}
    listed = {frozenset((l.a, l.b)) for l in links}
    joined = {}  # pair -> the interconnect's link, for pairs no listed link names
    for pair in sorted(which - listed, key=sorted):
        ends = sorted(pair)
        ic = next((ic for ic in reversed(interconnects) if len(ends) == 2 and ic.joins(*ends)), None)
        if ic is not None:
            joined[pair] = ic.link(*ends)
    missing = which - listed - set(joined)
    if missing:
        raise ValueError(f"no link between {sorted(sorted(p) for p in missing)}")
    return [scaled(l) if frozenset((l.a, l.b)) in which else l for l in links] + [scaled(l) for l in joined.values()], interconnects


def _replace_links(links: list[Link], link_items: list) -> list[Link]:
    """``links`` with every Link of ``link_items`` added, in order, each replacing any link between the same two devices."""
    for l in link_items:
        if not isinstance(l, Link):
            raise ValueError(f"link must be a Link to add (or give bandwidth_factor), got {l!r}")
        links = [x for x in links if frozenset((x.a, x.b)) != _pair(l)] + [l]
    return links


def _check_link_ends(devices: list[Device], links: list[Link]) -> None:
    """Every link joins two of ``devices`` (a link to a device given nowhere is a mistake, not a change)."""
    names = {d.name for d in devices}
    for l in links:
        if l.a not in names or l.b not in names:
            raise ValueError(f"link {l.a}<->{l.b} names a device the instance lacks")


def _drop_devices(devices: list[Device], links: list[Link], drop_device, origin: str) -> tuple[list, list, set]:
    """``(devices, links, dropped names)`` without the device(s) ``drop_device`` names and their links
    (the caller takes them out of the interconnects)."""
    names = {d.name for d in devices}
    drop = {drop_device} if isinstance(drop_device, str) else set(drop_device)
    unknown = drop - names
    if unknown:
        raise ValueError(f"cannot drop unknown device(s) {sorted(unknown)}; devices: {sorted(names)}")
    if origin in drop:
        raise ValueError(f"cannot drop the origin {origin!r}: requests enter there")
    devices = [d for d in devices if d.name not in drop]
    links = [l for l in links if l.a not in drop and l.b not in drop]
    return devices, links, drop


def _cut_off(devices: list[Device], links: list[Link], interconnects: list[Interconnect], origin: str,
             added: str | None) -> tuple[list, list, list[str]]:
    """``(devices, links, cut names)`` without the devices no chain of links joins to ``origin``
    (requests could never reach them). The device just ``added`` may not be among them."""
    g = connectivity_graph([d.name for d in devices], links, interconnects)
    reach = {n for n in nx.node_connected_component(g, origin) if isinstance(n, str)}
    if len(reach) == len(devices):
        return devices, links, []
    cut = sorted(d.name for d in devices if d.name not in reach)
    if added is not None and added in cut:
        raise ValueError("the added device has no link to the fleet: give links with add_device or link")
    devices = [d for d in devices if d.name in reach]
    links = [l for l in links if l.a in reach and l.b in reach]
    return devices, links, cut


def _changed_workload(instance: Instance, arrival_rate_per_s, max_batch, popularity) -> tuple[Workload, list[str]]:
    """The workload after a load spike or lull and popularity drift, and a note per change."""
    workload = instance.workload
    notes = []
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
    return workload, notes


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
    interconnects = list(instance.interconnects)
    origin = instance.workload.origin
    notes = []
    link_items = _link_items(link)
    added = None
    if add_device is not None:
        dev, devices, link_items = _add_device(instance, add_device, devices, link_items)
        added = dev.name
        notes.append(f"added {dev.name}")
    if bandwidth_factor is not None:
        links, interconnects = _scale_bandwidth(links, interconnects, bandwidth_factor, link_items)
        notes.append(f"bandwidth x{bandwidth_factor:g}")
    else:
        links = _replace_links(links, link_items)
    _check_link_ends(devices, links)
    if drop_device is not None:
        devices, links, drop = _drop_devices(devices, links, drop_device, origin)
        interconnects = [ic.without(drop) for ic in interconnects]
        notes.append("lost " + ", ".join(sorted(drop)))
    # Devices cut off from the origin are lost too.
    devices, links, cut = _cut_off(devices, links, interconnects, origin, added)
    if cut:
        interconnects = [ic.without(set(cut)) for ic in interconnects]
        notes.append("cut off " + ", ".join(cut))
    workload, workload_notes = _changed_workload(instance, arrival_rate_per_s, max_batch, popularity)
    notes += workload_notes
    description = instance.description + (" [changed: " + "; ".join(notes) + "]" if notes else "")
    return replace(instance, devices=tuple(devices), links=tuple(links), interconnects=tuple(interconnects),
                   workload=workload, description=description)


def without_link(instance: Instance, a: str, b: str) -> Instance:
    """``instance`` without the link between ``a`` and ``b`` (and whatever then no longer reaches the
    origin). An interconnect that joins them is listed pair by pair instead, less that pair."""
    pair = frozenset((a, b))
    links = [l for l in instance.links if frozenset((l.a, l.b)) != pair]
    interconnects = []
    for ic in instance.interconnects:
        if ic.joins(a, b):
            links += [ic.link(x, y) for x, y in ic.pairs() if frozenset((x, y)) != pair]
        else:
            interconnects.append(ic)
    return changed_instance(replace(instance, links=tuple(links), interconnects=tuple(interconnects)))
