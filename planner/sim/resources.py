"""Resources of a simulation: devices, links and model stores, each a single server that passes and
weight copies reserve ahead of time.

A reservation takes the earliest idle interval of its resource at or after the time it is ready,
long enough for its hold (backfilling): passes that started earlier are never delayed by later
ones. A link with a bandwidth clock (a series, or bandwidth events) is held until the integral of
its bandwidth reaches the bytes sent; every other resource for a fixed time.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from operator import itemgetter

import numpy as np

_END = itemgetter(1)
# Reservations that ended are dropped from a resource's list once it holds more than this many
# (searches skip them anyway; dropping them in bulk keeps the lists short at little cost).
_PRUNE_AT = 64


class LinkClock:
    """Bandwidth of one link over simulated time: series (cycled) or nominal, times event factors."""

    __slots__ = ("nominal", "series", "times", "factors")

    def __init__(self, nominal: float, series: np.ndarray | None, changes: list[tuple[float, float]]):
        self.nominal = nominal
        self.series = None if series is None else [float(x) for x in series]
        self.times = [t for t, _ in changes]
        self.factors = [f for _, f in changes]

    def rate(self, t: float) -> float:
        """Bytes/s at time ``t``."""
        k = bisect_right(self.times, t) - 1
        base = self.nominal if self.series is None else self.series[int(t) % len(self.series)]
        return base * (self.factors[k] if k >= 0 else 1.0)

    def finish(self, start: float, nbytes: float) -> float:
        """When ``nbytes`` sent from ``start`` have all left (bandwidth piecewise constant)."""
        t, left = start, nbytes
        while True:
            k = bisect_right(self.times, t) - 1
            factor = self.factors[k] if k >= 0 else 1.0
            nxt = self.times[k + 1] if k + 1 < len(self.times) else math.inf
            if self.series is None:
                base = self.nominal
            else:
                base = self.series[int(t) % len(self.series)]
                nxt = min(nxt, math.floor(t) + 1.0)
            r = base * factor
            if r > 0:
                if r * (nxt - t) >= left:
                    return t + left / r
                left -= r * (nxt - t)
            t = nxt


class Resources:
    """Every resource of a run, by integer id: its key (a device name, a link ``(a, b)`` with names
    sorted as the cost model's busy keys, or a model store), its display name, its reservations
    ``(start, end, owner)`` from now on (sorted), its busy seconds and its bandwidth clock (links
    only, else None). Resources added with ``reported`` (devices and links) are the ones a result
    reports; model stores are not, and come on demand. A key :meth:`id` does not know goes to
    :attr:`make` (None: ``KeyError``), which adds it (a link of a large fleet, on first use). With
    ``timeline_cap > 0`` up to that many holds of reported resources are kept in :attr:`timeline`."""

    def __init__(self, timeline_cap: int):
        self.keys: list = []
        self.names: list[str] = []
        self.index: dict = {}
        self.iv: list[list] = []
        self.busy: list[float] = []
        self.clocks: list[LinkClock | None] = []
        self.reported: list[bool] = []
        self.make = None  # key -> resource id of a resource it adds, for keys added on first use
        self.timeline: list | None = [] if timeline_cap > 0 else None
        self.timeline_cap = timeline_cap
        self.what: dict[int, str] = {}  # owner -> label, only with a timeline

    def add(self, key, name: str, clock: LinkClock | None = None, *, reported: bool = False) -> int:
        self.index[key] = len(self.keys)
        self.keys.append(key)
        self.names.append(name)
        self.iv.append([])
        self.busy.append(0.0)
        self.clocks.append(clock)
        self.reported.append(reported)
        return self.index[key]

    def id(self, key) -> int:
        r = self.index.get(key)
        if r is None:
            if self.make is None:
                raise KeyError(key)
            r = self.make(key)
        return r

    def label(self, owner: int, text: str, *, while_room: bool = True) -> None:
        """Name what ``owner`` is (a pass, a migration) in the timeline; ``while_room``: only while
        the timeline is below its cap (passes are many; a migration is labelled whenever recorded)."""
        if self.timeline is not None and (not while_room or len(self.timeline) < self.timeline_cap):
            self.what[owner] = text

    def reserve(self, path, variant: tuple, t: float, owner: int, now: float) -> float:
        """Reserve every step of one pass of ``path`` (a :class:`planner.sim.pipelines.Path`) ready at
        ``t``; returns when the pass ends."""
        holds, nbytes, delays = variant
        run = self.run
        for seg in path.segments:
            if len(seg) == 1:
                t = run(seg[0], holds, nbytes, delays, t, owner, now)
            else:
                end = t
                for branch in seg:
                    e = run(branch, holds, nbytes, delays, t, owner, now)
                    if e > end:
                        end = e
                t = end
        return t

    def run(self, branch, holds, nbytes, delays, t: float, owner: int, now: float) -> float:
        ivs, clocks, busy, timeline, prune_at = self.iv, self.clocks, self.busy, self.timeline, _PRUNE_AT
        for r, _, j in branch:
            delay = delays[j]
            h = holds[j]
            if h > 0.0:
                iv = ivs[r]
                if clocks[r] is None and (not iv or iv[-1][1] <= t):
                    # Free from t on, at nominal speed: the common case, appended without a search.
                    if len(iv) > prune_at and iv[0][1] <= now:
                        del iv[:bisect_right(iv, now, key=_END)]
                    iv.append((t, t + h, owner))
                    busy[r] += h
                    if timeline is not None:
                        self.record(r, t, t + h, owner)
                    t += h
                else:
                    t = self.place(r, t, h if clocks[r] is None else nbytes[j], owner, now)
            t += delay
        return t

    def place(self, r: int, s: float, amount: float, owner: int, now: float) -> float:
        """Reserve resource ``r`` in its earliest idle interval at or after ``s``; ``amount`` is the
        hold (s), or the bytes to send on a link with a bandwidth clock. Returns the end."""
        iv = self.iv[r]
        # Reservations do not overlap and are sorted by start, hence by end too.
        if len(iv) > _PRUNE_AT and iv[0][1] <= now:
            del iv[:bisect_right(iv, now, key=_END)]
        clock = self.clocks[r]
        i, n = bisect_right(iv, s, key=_END), len(iv)
        while True:
            e = s + amount if clock is None else clock.finish(s, amount)
            if i < n and iv[i][0] < e:
                s = iv[i][1]
                i += 1
            else:
                break
        iv.insert(i, (s, e, owner))
        self.busy[r] += e - s
        if self.timeline is not None:
            self.record(r, s, e, owner)
        return e

    def record(self, r: int, s: float, e: float, owner: int) -> None:
        if self.reported[r] and len(self.timeline) < self.timeline_cap:
            self.timeline.append((r, s, e, owner))

    def unreserve(self, owners: set, now: float) -> None:
        """Free what ``owners`` hold from ``now`` on (what ran before stays counted as busy)."""
        for r, iv in enumerate(self.iv):
            if any(o in owners for _, _, o in iv):
                for s, e, o in iv:
                    if o in owners and e > now:
                        self.busy[r] -= e - max(s, now)
                self.iv[r] = [x for x in iv if x[2] not in owners or x[1] <= now]
        if self.timeline is not None:
            self.timeline = [(r, s, min(e, now) if o in owners else e, o) for r, s, e, o in self.timeline
                             if o not in owners or s < now]

    def timeline_rows(self) -> list | None:
        """``(resource name, start_s, end_s, what)`` per recorded hold, or None without a timeline."""
        if self.timeline is None:
            return None
        return [(self.names[r], s, e, self.what.get(o, "")) for r, s, e, o in self.timeline]

    def busy_by_name(self) -> dict[str, float]:
        """Busy seconds of every reported resource, by display name."""
        return {self.names[r]: self.busy[r] for r, shown in enumerate(self.reported) if shown}
