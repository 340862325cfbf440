"""Point-to-point transport between runtime processes over torch.distributed, with emulated links.

Every ordered pair of processes ``(a, b)`` gets its own process group (``dist.new_group([a, b])``)
used by exactly one thread on each side: a **sender** thread in ``a`` (which owns the emulated link
``a -> b``) and a **receiver** thread in ``b``. No group is ever used by two threads of one process,
so sends and receives of different peers never wait for each other, and a transfer is never
interleaved with another on the same group.

Link emulation (the sender side): a message of ``n`` bytes (header and tensors) holds the link for
the time the link's bandwidth takes to carry ``n`` bytes from now on (the link's series, cycled per
second of the run, else its nominal bandwidth: :class:`planner.sim.resources.LinkClock`, the
simulator's own clock), slept before the transfer; the receiver then waits the route's one-way
latency (RTT/2, carried in the header) before the message counts as arrived, without holding the
link (messages pipeline over the latency, as on a real link). Where the processes share a clock
(one machine: ``shared_clock``), the sender stamps when the message is due (the start of its hold
plus the hold and the latency), so that the real transfer's own time (gloo, threads waking up)
runs within the emulated latency instead of adding to it; elsewhere the receiver adds the latency
to the moment it received the message. Routes of several hops are charged hop after hop (store
and forward). Each direction is its own link (full duplex): where the cost
model counts one shared link for both directions, the runtime lets them overlap.

Heartbeats: a sender that has had nothing to send for ``heartbeat_s`` sends a header-only heartbeat
(not charged to the link), so a receiver that hears nothing for ``timeout_s`` knows its peer or link
is gone. A peer process that dies closes its sockets, which the receiver sees at once.
"""

from __future__ import annotations

import datetime
import heapq
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from planner.runtime.wire import HEADER_LEN, HEARTBEAT, STOP, Message
from planner.sim.resources import LinkClock


class DelayQueue:
    """A FIFO whose items become available at their due time (monotonic seconds)."""

    def __init__(self):
        self._heap: list = []
        self._cond = threading.Condition()
        self._seq = itertools.count()

    def put(self, item, due: float | None = None) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() if due is None else due, next(self._seq), item))
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        """The earliest due item, waiting for it; raises ``queue.Empty`` after ``timeout`` seconds."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                wait = None if end is None else end - now
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                if self._heap:
                    wait = self._heap[0][0] - now if wait is None else min(wait, self._heap[0][0] - now)
                if wait is not None and wait <= 0:
                    raise queue.Empty
                self._cond.wait(wait)


@dataclass
class Hop:
    """One instance link on a route: its key (device names sorted), bandwidth clock and one-way latency (s)."""

    key: tuple[str, str]
    clock: LinkClock
    one_way_s: float


@dataclass
class EmulatedLink:
    """The route from one device to another as the instance's links describe it.

    ``hops`` in order; ``down_at_s``: run time (s) from which the link delivers nothing (an
    injected link drop; None: never)."""

    hops: list[Hop]
    down_at_s: float | None = None

    @property
    def one_way_s(self) -> float:
        return sum(h.one_way_s for h in self.hops)

    def holds(self, nbytes: float, t_s: float) -> list[float]:
        """Seconds each hop is held by ``nbytes`` sent at run time ``t_s`` (hop after hop, each after
        the previous hop's propagation)."""
        out = []
        t = t_s
        for h in self.hops:
            end = h.clock.finish(t, nbytes)
            out.append(end - t)
            t = end + h.one_way_s
        return out


@dataclass
class ChannelStats:
    """What one sender sent: messages and bytes charged to its link, seconds slept for the link's
    bandwidth (``hold_s``), seconds of the transfers themselves (``transfer_s``, gloo on the real
    network), and per message ``(bytes, hold_s, transfer_s)`` (the first ``keep`` of them)."""

    messages: int = 0
    bytes: int = 0
    hold_s: float = 0.0
    transfer_s: float = 0.0
    heartbeats: int = 0
    samples: list = field(default_factory=list)
    keep: int = 4096

    def add(self, nbytes: int, hold_s: float, transfer_s: float) -> None:
        self.messages += 1
        self.bytes += nbytes
        self.hold_s += hold_s
        self.transfer_s += transfer_s
        if len(self.samples) < self.keep:
            self.samples.append((nbytes, hold_s, transfer_s))


_STOP = object()


class Transport:
    """Channels of process ``rank`` to every other of ``world`` processes.

    ``links[peer]``: the emulated link to ``peer`` (None: not emulated, plain loopback or network).
    ``deliver(src, message, due)`` receives every message that is not a heartbeat (``due``: when
    it counts as arrived, monotonic seconds). ``on_fault(peer, kind, detail)`` is called once per
    channel that breaks (``kind``: ``"timeout"`` when nothing came for ``timeout_s``, ``"closed"``
    when the peer's sockets closed, ``"error"`` otherwise), unless :meth:`close` was called first.
    """

    def __init__(self, rank: int, world: int, links: dict[int, EmulatedLink | None], *, timeout_s: float,
                 heartbeat_s: float, deliver: Callable[[int, Message, float], None],
                 on_fault: Callable[[int, str, str], None], shared_clock: bool = False):
        self.rank, self.world = rank, world
        self.shared_clock = shared_clock
        self.links = links
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.deliver = deliver
        self.on_fault = on_fault
        self.t0 = time.monotonic()
        self.closing = threading.Event()
        self.stats = {p: ChannelStats() for p in range(world) if p != rank}
        self.link_busy_s: dict[tuple[str, str], float] = {}
        self._queues = {p: queue.Queue() for p in range(world) if p != rank}
        self._groups: dict[tuple[int, int], object] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def create_groups(self) -> None:
        """One group per ordered pair; every process must call this, in the same order (a collective)."""
        timeout = datetime.timedelta(seconds=self.timeout_s)
        for a in range(self.world):
            for b in range(self.world):
                if a != b:
                    self._groups[(a, b)] = dist.new_group([a, b], timeout=timeout)

    def start(self, t0: float | None = None) -> None:
        """Start the threads; ``t0`` (monotonic s) is time 0 of the run for bandwidth series and drops."""
        if t0 is not None:
            self.t0 = t0
        for p in self._queues:
            for fn, name in ((self._send_loop, "send"), (self._recv_loop, "recv")):
                t = threading.Thread(target=fn, args=(p,), name=f"{name}-{self.rank}-{p}", daemon=True)
                t.start()
                self._threads.append(t)

    def send(self, dst: int, message: Message) -> None:
        """Queue ``message`` for ``dst`` (returns at once; messages to one peer leave in order)."""
        self._queues[dst].put(message)

    def close(self) -> None:
        """Stop sending; faults seen from now on are the shutdown's, not reported."""
        self.closing.set()
        for q in self._queues.values():
            q.put(_STOP)

    # ----- threads ----------------------------------------------------------------------------
    def _fault(self, peer: int, exc: BaseException) -> None:
        if self.closing.is_set():
            return
        text = str(exc)
        kind = "timeout" if "Timed out" in text else "closed" if ("closed" in text.lower() or "reset" in text.lower()) else "error"
        self.on_fault(peer, kind, text.splitlines()[0][:300])

    def _send_loop(self, dst: int) -> None:
        group = self._groups[(self.rank, dst)]
        stats = self.stats[dst]
        q = self._queues[dst]
        try:
            while True:
                try:
                    msg = q.get(timeout=self.heartbeat_s)
                except queue.Empty:
                    msg = Message(HEARTBEAT)
                if msg is _STOP:
                    return
                start = time.monotonic()
                t_run = start - self.t0
                link = self.links.get(dst)
                if link is not None and link.down_at_s is not None and t_run >= link.down_at_s:
                    # An injected link drop: nothing more leaves (heartbeats included) until shutdown.
                    self.closing.wait()
                    return
                control = msg.kind in (HEARTBEAT, STOP)  # not charged to the link
                hold = 0.0
                if link is not None and not control:
                    holds = link.holds(msg.nbytes, t_run)
                    hold = sum(holds)
                    with self._lock:
                        for h, s in zip(link.hops, holds):
                            self.link_busy_s[h.key] = self.link_busy_s.get(h.key, 0.0) + s
                    msg.delay_s = link.one_way_s
                    if self.shared_clock:
                        msg.due_s = start + hold + link.one_way_s
                    if hold > 0:
                        time.sleep(max(0.0, start + hold - time.monotonic()))
                t = time.perf_counter()
                dist.send(msg.header(), dst=dst, group=group)
                payload = msg.payload()
                if payload is not None:
                    dist.send(payload, dst=dst, group=group)
                if control:
                    stats.heartbeats += msg.kind == HEARTBEAT
                else:
                    stats.add(msg.nbytes, hold, time.perf_counter() - t)
        except Exception as exc:  # a broken channel is a fault to report, not a crash of this thread
            self._fault(dst, exc)

    def _recv_loop(self, src: int) -> None:
        group = self._groups[(src, self.rank)]
        try:
            while not self.closing.is_set():
                header = torch.empty(HEADER_LEN, dtype=torch.int64)
                dist.recv(header, src=src, group=group)
                n = Message.payload_bytes(header)
                payload = torch.empty(n, dtype=torch.uint8) if n else None
                if payload is not None:
                    dist.recv(payload, src=src, group=group)
                msg = Message.from_parts(header, payload)
                if msg.kind != HEARTBEAT:
                    self.deliver(src, msg, msg.due_s if msg.due_s > 0 else time.monotonic() + msg.delay_s)
        except Exception as exc:
            self._fault(src, exc)


def emulated_links(names: Sequence[str], route: Callable[[str, str], list], *, series: dict | None = None,
                   down: dict | None = None) -> dict[tuple[int, int], EmulatedLink]:
    """The emulated link of every ordered pair of ``names`` (index pairs), from ``route(a, b)``:
    ``(u, v, Link)`` per hop, as :meth:`planner.cost.network.Network.route` gives them.

    ``series``: ``{frozenset((a, b)): bytes/s per second}`` overriding a link's own series;
    ``down``: ``{frozenset((a, b)): run seconds}`` when a link drops (both directions)."""
    series, down = series or {}, down or {}
    out = {}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i == j:
                continue
            hops = []
            drop = math.inf
            for u, v, link in route(a, b):
                pair = frozenset((u, v))
                s = series.get(pair, link.bandwidth_series)
                hops.append(Hop((min(u, v), max(u, v)), LinkClock(link.bandwidth_bytes_per_s, s, []), link.one_way_s))
                drop = min(drop, down.get(pair, math.inf))
            out[(i, j)] = EmulatedLink(hops, None if math.isinf(drop) else drop)
    return out
