"""Events of a simulation (devices down and up, bandwidth and arrival-rate changes) and the checks of
a run's events and bandwidth series."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.domain.instance import Instance

EVENT_KINDS = ("device_down", "device_up", "bandwidth", "rate")


@dataclass(frozen=True)
class SimEvent:
    """Something that happens at ``time_s`` (seconds of simulated time):

    * ``device_down`` / ``device_up``: ``target`` a device name;
    * ``bandwidth``: ``target`` a link ``(a, b)`` or None (every link); ``value`` the factor on the
      link's bandwidth (series or nominal) from now on (it replaces the previous factor: 0.5 halves);
    * ``rate``: ``value`` the factor on the arrival rate from now on (``target`` None).
    """

    time_s: float
    kind: str
    target: str | tuple[str, str] | None = None
    value: float | None = None


def check_events(instance: Instance, events) -> list[SimEvent]:
    names = instance.device_index
    out = []
    for k, ev in enumerate(events):
        where = f"events[{k}]"
        if not isinstance(ev, SimEvent):
            raise ValueError(f"{where}: expected a SimEvent, got {type(ev).__name__}")
        if not (isinstance(ev.time_s, (int, float)) and math.isfinite(ev.time_s) and ev.time_s >= 0):
            raise ValueError(f"{where}: time_s must be a finite number >= 0, got {ev.time_s!r}")
        if ev.kind not in EVENT_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(EVENT_KINDS)}, got {ev.kind!r}")
        if ev.kind in ("device_down", "device_up"):
            if ev.target not in names:
                raise ValueError(f"{where}: {ev.kind} needs a device name as target, got {ev.target!r} "
                                 f"(devices: {', '.join(sorted(names))})")
        else:
            if not (isinstance(ev.value, (int, float)) and math.isfinite(ev.value) and ev.value > 0):
                raise ValueError(f"{where}: {ev.kind} needs a factor value > 0, got {ev.value!r}")
            if ev.kind == "rate" and ev.target is not None:
                raise ValueError(f"{where}: a rate event has no target, got {ev.target!r}")
            if ev.kind == "bandwidth" and ev.target is not None:
                if not (isinstance(ev.target, (tuple, list)) and len(ev.target) == 2
                        and all(isinstance(x, str) for x in ev.target) and instance.link(*ev.target) is not None):
                    raise ValueError(f"{where}: bandwidth target must be None (all links) or a link (a, b) of the "
                                     f"instance, got {ev.target!r}")
        out.append(ev)
    return sorted(out, key=lambda e: e.time_s)


def check_series(instance: Instance, bandwidth_series) -> dict:
    """``{(a, b) sorted: bytes/s per second}`` from the argument (a dict per link), or for one array
    for every link ``{None: it}`` (every link falls back to it: not one entry per pair of a group)."""
    if bandwidth_series is None:
        return {}
    if isinstance(bandwidth_series, dict):
        items = bandwidth_series.items()
    else:
        first = next(instance.all_links(), None)
        if first is None:
            return {}
        key = (min(first.a, first.b), max(first.a, first.b))
        return {None: check_series(instance, {key: bandwidth_series})[key]}
    out = {}
    for key, arr in items:
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(x, str) for x in key)
                and instance.link(*key) is not None):
            raise ValueError(f"bandwidth_series: {key!r} is not a link of the instance (links: {instance.link_names('<->')})")
        a = np.asarray(arr, dtype=float)
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or (a < 0).any() or not (a > 0).any():
            raise ValueError(f"bandwidth_series for {key[0]}<->{key[1]}: need a 1-D array of bytes/s >= 0, not all zero")
        out[(min(key), max(key))] = a
    return out
