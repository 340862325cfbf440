"""Discrete-event simulator: a plan serving a stream of requests on its instance (``moeplan simulate``).

What is simulated
-----------------
* **Arrivals**: a :class:`~planner.domain.data_files.RequestTrace` (arrival time, prompt and output
  tokens per request; repeated back to back, shifted by its duration plus one mean gap, when more
  requests are asked for than it holds), or a seeded Poisson process at the instance's
  ``arrival_rate_per_s`` with the instance's prompt and output tokens. ``rate`` events scale the
  arrival rate from their time on (the arrival times are warped: a factor 2 halves the gaps).
* **Service times** come from the cost model's own steps (:meth:`CostModel.pass_steps`): a pass is
  an ordered list of resources (devices, links) each held for a time, link hops followed by their
  propagation delay (RTT/2), and the routed experts of a layer with placed experts as parallel
  branches (home device || per remote device: route there, device, route back). Consecutive holds
  of one device are merged. A prefill of a prompt of ``p`` tokens is the pass
  ``(p tokens, context p/2, prefill)``; a decode step of a micro-batch holding ``n`` sequences is
  ``(n tokens, context prompt + output/2 of the instance, decode)``, as in the cost model.
  Prompt lengths up to 256 and the instance's own prompt are priced exactly; longer ones are
  interpolated linearly between points of a geometric grid (ratio 1 + 1/64): link times are linear
  in the tokens, so exact; device times (roofline) were off by at most 0.003 % on the default
  instance (``tests/sim/test_engine.py`` checks 0.1 %).
* **Batching**: each pipeline has ``num_micro_batches`` slots of ``micro_batch_size`` seats. A
  request leaves its pipeline's admission queue (FIFO) when a seat is free (the slot with the most
  free seats, then the lowest index), runs its prefill (the first token reaches the origin at its
  end: TTFT), and joins its slot's decode steps at the next step boundary (continuous batching);
  each step gives every sequence in it one token; a sequence leaves at the end of the step of its
  last token, freeing its seat. Requests are split over the pipelines by ``request_share`` with a
  smooth weighted round robin (deterministic), skipping pipelines that are down.
* **Resources** are single servers: each device, and each link (one shared resource for both
  directions, as in the cost model). When a pass starts it reserves every step of its path at
  once: a step takes the earliest idle interval of its resource, at or after the end of the step
  before it, long enough for its hold (backfilling). Passes that started earlier are thus never
  delayed by later ones (priority by start time); a pass in an otherwise idle system takes exactly
  the cost model's latency. One heap event per pass, not per hop, keeps the simulator fast.
* **Links**: a hop of ``n`` bytes holds its link until the integral of its bandwidth from the start
  reaches ``n``. Bandwidth is the link's series (bytes/s, one value per second of simulated time,
  indexed by the integer second and **cycled** past its end), else its nominal bandwidth, times
  the factor of the last ``bandwidth`` event on that link (or on all links). Series come from the
  ``bandwidth_series`` argument, else from the instance's ``bandwidth_trace`` per link.
* **Failures**: ``device_down`` stops every pipeline whose path touches the device (stages, expert
  hosts, routes): its passes are cancelled (their reservations freed), its requests in flight start
  over (KV caches are lost; the TTFT of a retried request counts to the first token of its last
  attempt), at the front of the admission queue of a pipeline that is up (counted as retried), or
  are dropped with reason ``device failure`` after ``max_retries`` retries. ``device_up`` resumes
  every pipeline whose devices are all up. Requests that can never be served (a device down for
  good, no re-plan) are dropped with reason ``device failure`` at the end; a request that waited
  in an admission queue longer than ``timeout_s`` (since it last entered the queue) is dropped
  with reason ``timeout`` at the moment its wait ran out.
* **Re-planning** (:class:`ReplanHook`): periodically, when the observed bandwidth of a link moved
  by more than a fraction since the last call, and on device down / up, the hook gets the
  instance as observed now (:func:`planner.domain.changes.changed_instance`: link bandwidths scaled to
  their present value, lost devices dropped, arrival rate scaled) and the current plan, and
  returns a new plan or None. The new plan is ready ``decision_s`` later (default: the hook's time
  budget, so that runs are reproducible); then its weights are copied
  (:func:`planner.planners.migration.migration`): each copy goes over the route from the device holding the
  weights (holding those links like any transfer, FIFO with request traffic, so a large migration
  stalls requests that cross the same links) or, when no surviving device holds them, from the
  destination's model store at ``store_bytes_per_s`` (one copy at a time per destination). The
  new plan takes effect when the last copy is done; meanwhile the old plan serves. At the switch,
  queued requests move to the new pipelines, and sequences in flight finish on the old ones.
  A device event cancels a migration under way (and asks again); other triggers wait for it.

Output: :class:`SimResult` with per-request arrays and :meth:`SimResult.metrics` (a JSON-safe
dict). Deterministic for a seed (the seed draws Poisson arrivals; nothing else is random, and the
re-planner is run with a fixed number of local moves). Units: seconds, bytes, bytes/s.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable

import numpy as np

from planner.cost.costmodel import CostModel
from planner.cost.validator import structure_violations
from planner.domain.data_files import RequestTrace
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.sim.arrivals import MAX_REQUESTS, Warp, arrivals
from planner.sim.events import SimEvent, check_events, check_series
from planner.sim.hook import STRUCTURAL, ReplanHook, Replanning
from planner.sim.pipelines import Pipe, Slot
from planner.sim.resources import LinkClock, Resources
from planner.sim.results import SimResult

DEFAULT_MAX_RETRIES = 3
DEFAULT_TIMELINE_CAP = 100_000
STORE_BYTES_PER_S = 1e9  # model-store read rate (bytes/s) for weights no surviving device holds

_EV_PASS, _EV_SIM, _EV_TICK, _EV_BWCHECK, _EV_MIGRATED = range(5)
_PREFILL, _DECODE = 0, 1


class _Sim:
    """One run. Per-request state lives in plain lists (fast scalar access); see :func:`simulate`."""

    def __init__(self, instance: Instance, plan: Plan, arrival_s: np.ndarray, prompts: np.ndarray, outputs: np.ndarray,
                 *, series: dict, events: list[SimEvent], hook: ReplanHook | None, timeline_cap: int,
                 timeout_s: float | None, max_retries: int, store_bytes_per_s: float,
                 progress: Callable[[str], None] | None):
        self.inst = instance
        self.cm = CostModel(instance)
        self.hook = hook
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.progress = progress
        self.now = 0.0
        self.seq = itertools.count()
        self.ids = itertools.count()  # pass and migration ids (reservation owners)
        self.heap: list = []
        self.down: set[str] = set()
        self.rate_factor = 1.0
        self.res = _resources(instance, series, events, timeline_cap)
        # Requests: plain lists, one entry per request in arrival order.
        n = len(arrival_s)
        self.n = n
        self.arr = [float(x) for x in arrival_s]
        self.prompt = [max(1, int(x)) for x in prompts]
        self.out = [max(1, int(x)) for x in outputs]
        self.first = [math.nan] * n
        self.fin = [math.nan] * n
        self.drop_s = [math.nan] * n
        self.reason = [""] * n
        self.retries = [0] * n
        self.served_by = [-1] * n
        self.plan_of = [-1] * n
        self.enq = [0.0] * n
        self.slot_of: list = [None] * n
        self.done = 0
        self.next_arrival = 0
        self.next_report = max(1, n // 10)
        self.events = 0
        self.pending_sim_events = len(events)
        # Plans.
        self.plans = [plan]
        self.plan = plan
        self.pipes = self._pipes(plan, 0)
        self.draining: list[Pipe] = []
        self._reset_router()
        self.replanning = Replanning(hook, instance, self.res, store_bytes_per_s, self.ids)
        for ev in events:
            self._push(ev.time_s, _EV_SIM, ev)
        if hook is not None and hook.every_s is not None:
            self._push(hook.every_s, _EV_TICK, None)
        if hook is not None and hook.on_bandwidth_change is not None and any(
                c is not None and c.series is not None for c in self.res.clocks):
            self._push(1.0, _EV_BWCHECK, None)

    # ----- bookkeeping ---------------------------------------------------------------------------
    def _pipes(self, plan: Plan, generation: int) -> list[Pipe]:
        return [Pipe(self.cm, self.res, self.down, p, i, generation) for i, p in enumerate(plan.pipelines)]

    def _push(self, t: float, kind: int, obj) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, obj))

    def _reset_router(self) -> None:
        shares = [max(0.0, p.pipe.request_share) for p in self.pipes]
        self.weights = shares if sum(shares) > 0 else [1.0] * len(self.pipes)
        self.credit = [0.0] * len(self.pipes)

    def _route(self) -> Pipe:
        """Smooth weighted round robin over the pipelines that are up (over all of them if none is)."""
        cand = [i for i, p in enumerate(self.pipes) if p.up and self.weights[i] > 0] or \
               [i for i in range(len(self.pipes)) if self.weights[i] > 0]
        total = sum(self.weights[i] for i in cand)
        for i in cand:
            self.credit[i] += self.weights[i]
        pick = max(cand, key=lambda i: (self.credit[i], -i))
        self.credit[pick] -= total
        return self.pipes[pick]

    # ----- requests ------------------------------------------------------------------------------
    def _start_pass(self, ps: Pipe, kind: int, payload, variant: tuple) -> None:
        pid = next(self.ids)
        p = [kind, ps, payload, True, pid]
        if self.res.timeline is not None:
            self.res.label(pid, f"pipeline {ps.index} prefill request {payload}" if kind == _PREFILL
                           else f"pipeline {ps.index} slot {payload.index} decode x{payload.active}")
        end = self.res.reserve(ps.path, variant, self.now, pid, self.now)
        ps.live[pid] = p
        self._push(end, _EV_PASS, p)

    def _admit(self, ps: Pipe) -> None:
        if not ps.up or ps.draining:
            return
        q = ps.queue
        timeout = self.timeout_s
        while q and ps.free > 0:
            i = q.popleft()
            if timeout is not None and self.now - self.enq[i] > timeout:
                self._drop(i, "timeout", self.enq[i] + timeout)
                continue
            slot = min(ps.slots, key=lambda s: (s.seats, s.index)) if len(ps.slots) > 1 else ps.slots[0]
            slot.seats += 1
            ps.free -= 1
            self.slot_of[i] = slot
            self.served_by[i] = ps.index
            self.plan_of[i] = ps.generation
            self._start_pass(ps, _PREFILL, i, ps.prefill_variant(self.prompt[i]))

    def _step(self, ps: Pipe, slot: Slot) -> None:
        slot.running = True
        self._start_pass(ps, _DECODE, slot, ps.decode[slot.active])

    def _count_done(self) -> None:
        self.done += 1
        if self.progress is not None and (self.done >= self.next_report or self.done == self.n):
            self.next_report += max(1, self.n // 10)
            self.progress(f"simulated {self.done}/{self.n} requests, t = {self.now:.1f} s")

    def _finish(self, i: int) -> None:
        self.fin[i] = self.now
        self.slot_of[i] = None
        self._count_done()

    def _drop(self, i: int, reason: str, at: float) -> None:
        self.reason[i] = reason
        self.drop_s[i] = at
        self.slot_of[i] = None
        self._count_done()

    def _on_pass(self, p: list) -> None:
        kind, ps, payload, alive, pid = p
        if not alive:
            return
        del ps.live[pid]
        freed = 0
        if kind == _PREFILL:
            i = payload
            slot = self.slot_of[i]
            self.first[i] = self.now
            if self.out[i] <= 1:
                self._finish(i)
                slot.seats -= 1
                freed = 1
            elif slot.running:
                slot.joining.append(i)
            else:
                slot.fin.setdefault(slot.k + self.out[i] - 1, []).append(i)
                slot.active += 1
                self._step(ps, slot)
        else:
            slot = payload
            slot.running = False
            slot.k += 1
            done = slot.fin.pop(slot.k, None)
            if done:
                for i in done:
                    self._finish(i)
                freed = len(done)
                slot.active -= freed
                slot.seats -= freed
            if slot.joining:
                out, fin, k = self.out, slot.fin, slot.k
                for i in slot.joining:
                    fin.setdefault(k + out[i] - 1, []).append(i)
                slot.active += len(slot.joining)
                slot.joining = []
            if slot.active:
                self._step(ps, slot)
        if freed:
            ps.free += freed
            self._admit(ps)
        if ps.draining and not ps.live:
            self.draining.remove(ps)

    def _arrive(self, i: int) -> None:
        ps = self._route()
        self.enq[i] = self.now
        ps.queue.append(i)
        self._admit(ps)

    # ----- failures ------------------------------------------------------------------------------
    def _stop(self, ps: Pipe) -> None:
        """A device of ``ps`` is down: cancel its passes; its requests in flight start over elsewhere."""
        ps.up = False
        victims = [p[2] for p in ps.live.values() if p[0] == _PREFILL]
        for p in ps.live.values():
            p[3] = False
        self.res.unreserve(set(ps.live), self.now)
        ps.live.clear()
        for slot in ps.slots:
            for reqs in slot.fin.values():
                victims.extend(reqs)
            victims.extend(slot.joining)
            slot.seats = slot.active = 0
            slot.fin, slot.joining, slot.running = {}, [], False
        ps.free = ps.pipe.micro_batch_size * ps.pipe.num_micro_batches
        if ps.draining:
            self.draining.remove(ps)
        back = []
        for i in sorted(victims):
            self.retries[i] += 1
            self.first[i] = math.nan
            self.slot_of[i] = None
            if self.retries[i] > self.max_retries:
                self._drop(i, "device failure", self.now)
            else:
                back.append(i)
        self._requeue(back, front=True)

    def _requeue(self, reqs: list[int], *, front: bool) -> None:
        """Put ``reqs`` (in this order) into the admission queues of the running plan."""
        targets: dict[int, tuple[Pipe, list[int]]] = {}
        for i in reqs:
            ps = self._route()
            targets.setdefault(id(ps), (ps, []))[1].append(i)
        for ps, lst in targets.values():
            if front:
                for i in reversed(lst):
                    self.enq[i] = self.now
                    ps.queue.appendleft(i)
            else:
                ps.queue.extend(lst)
        for ps, _ in targets.values():
            self._admit(ps)

    def _device_down(self, dev: str) -> None:
        if dev in self.down:
            return
        self.down.add(dev)
        for ps in self.pipes + self.draining:
            if ps.up and dev in ps.devices:
                self._stop(ps)
        if self.hook is not None and self.hook.on_device_change:
            self._trigger(f"device {dev} down")

    def _device_up(self, dev: str) -> None:
        if dev not in self.down:
            return
        self.down.discard(dev)
        for ps in self.pipes:
            if not ps.up and not ps.devices & self.down:
                ps.up = True
                self._admit(ps)
        if self.hook is not None and self.hook.on_device_change:
            self._trigger(f"device {dev} up")

    # ----- re-planning ---------------------------------------------------------------------------
    def _trigger(self, why: str) -> None:
        """Ask the hook for a plan for the instance as observed now; start migrating to it."""
        pending = self.replanning.trigger(why, self.now, self.plan, self.down, self.rate_factor)
        if pending is not None:
            self._push(pending["end_s"], _EV_MIGRATED, pending)

    def _switch(self, pend: dict) -> None:
        """The migration is done: the new plan takes over the queues; old pipelines drain."""
        self.plan = pend["plan"]
        self.plans.append(self.plan)
        old = self.pipes
        self.pipes = self._pipes(self.plan, len(self.plans) - 1)
        self._reset_router()
        moved: list[int] = []
        for ps in old:
            ps.draining = True
            moved.extend(ps.queue)
            ps.queue.clear()
            if ps.live:
                self.draining.append(ps)
        self._requeue(sorted(moved), front=False)
        for ps in self.pipes:
            self._admit(ps)
        self.replanning.applied(pend)

    # ----- main loop -----------------------------------------------------------------------------
    def _quiet(self) -> bool:
        """Nothing in flight and nothing scheduled that could change that (only ticks remain)."""
        return (self.next_arrival >= self.n and self.replanning.pending is None and self.pending_sim_events == 0
                and not any(ps.live for ps in self.pipes + self.draining))

    def run(self) -> None:
        heap, arr, n = self.heap, self.arr, self.n
        while self.done < n:
            a = self.next_arrival
            if a < n and (not heap or arr[a] <= heap[0][0]):
                self.now = arr[a]
                self.next_arrival = a + 1
                self.events += 1
                self._arrive(a)
                continue
            if not heap:
                break
            t, _, kind, obj = heapq.heappop(heap)
            self.now = t
            self.events += 1
            if kind == _EV_PASS:
                self._on_pass(obj)
            elif kind == _EV_SIM:
                self.pending_sim_events -= 1
                self._on_event(obj)
            elif kind == _EV_MIGRATED:
                if obj is self.replanning.pending:
                    self._switch(obj)
            elif kind == _EV_TICK:
                self._trigger("periodic")
                if not self._quiet():
                    self._push(t + self.hook.every_s, _EV_TICK, None)
            else:  # _EV_BWCHECK
                if self.replanning.bandwidth_moved(self.now):
                    self._trigger("bandwidth change")
                if not self._quiet():
                    self._push(math.floor(t) + 1.0, _EV_BWCHECK, None)
        if self.replanning.pending is not None:
            self.replanning.cancel("every request was done first", self.now)
        # Whatever is left can never be served: every pipeline it could use is down for good.
        for i in range(n):
            if math.isnan(self.fin[i]) and not self.reason[i]:
                waited_out = self.timeout_s is not None and self.now - self.enq[i] > self.timeout_s
                if waited_out:
                    self._drop(i, "timeout", self.enq[i] + self.timeout_s)
                else:
                    self._drop(i, "device failure", self.now)

    def _on_event(self, ev: SimEvent) -> None:
        if ev.kind == "device_down":
            self._device_down(ev.target)
        elif ev.kind == "device_up":
            self._device_up(ev.target)
        elif ev.kind == "rate":
            self.rate_factor = float(ev.value)
        elif self.hook is not None and self.hook.on_bandwidth_change is not None and self.replanning.bandwidth_moved(self.now):
            self._trigger("bandwidth change")

    def result(self, wall_s: float) -> SimResult:
        ends = [x for x in self.fin + self.drop_s if not math.isnan(x)]
        sim_time = max([self.now] + ends)
        c = self.inst.constraints
        slo = {k: v for k, v in (("latency", c.latency_slo_s), ("ttft", c.ttft_slo_s), ("tpot", c.tpot_slo_s)) if v is not None}
        return SimResult(
            arrival_s=np.array(self.arr), first_token_s=np.array(self.first), finish_s=np.array(self.fin),
            prompt_tokens=np.array(self.prompt), output_tokens=np.array(self.out), dropped=np.array(self.reason, dtype=object).astype(str),
            retries=np.array(self.retries), pipeline=np.array(self.served_by), sim_time_s=float(sim_time),
            wall_time_s=wall_s, events_processed=self.events,
            busy_s=self.res.busy_by_name(), replan_log=self.replanning.log,
            migration_bytes=self.replanning.migration_bytes, slo_s=slo, timeline=self.res.timeline_rows(),
            plans=self.plans, dropped_s=np.array(self.drop_s), plan_index=np.array(self.plan_of))


EVERY_LINK_MAX = 10_000  # fleets with more links get (and report) a link's resource when a route first uses it


def _resources(instance: Instance, series: dict, events: list[SimEvent], timeline_cap: int) -> Resources:
    """Devices, then links (keyed by the sorted pair, as the cost model's busy keys) with a bandwidth
    clock where a series or a bandwidth event changes them; model stores come later, on demand.
    Past :data:`EVERY_LINK_MAX` links (a group's interconnect joins every pair of its members), a
    link's resource is made when a pipeline's route first needs it, so only used links are reported."""
    res = Resources(timeline_cap)
    for d in instance.devices:
        res.add(d.name, d.name, reported=True)
    bw_changes: dict = {}
    for ev in events:
        if ev.kind == "bandwidth":
            key = None if ev.target is None else (min(ev.target), max(ev.target))
            bw_changes.setdefault(key, []).append((ev.time_s, ev.value))

    def add_link(key: tuple[str, str]) -> int:
        link = instance.link(*key)
        if link is None:
            raise KeyError(key)
        changes = sorted(bw_changes.get(None, []) + bw_changes.get(key, []), key=lambda c: c[0])
        s = series.get(key, series.get(None, link.bandwidth_series))
        clock = LinkClock(link.bandwidth_bytes_per_s, s, changes) if s is not None or changes else None
        return res.add(key, f"{key[0]}<->{key[1]}", clock, reported=True)

    if instance.num_links <= EVERY_LINK_MAX:
        for u, v in instance.graph().edges():
            add_link((min(u, v), max(u, v)))
    else:
        res.make = add_link
    return res


def simulate(instance: Instance, plan: Plan, *, trace: RequestTrace | None = None, num_requests: int | None = None,
             duration_s: float | None = None, bandwidth_series=None, events=(), replan=None, seed: int = 0,
             record_timeline: bool = False, timeout_s: float | None = None,
             progress: Callable[[str], None] | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
             timeline_cap: int = DEFAULT_TIMELINE_CAP, store_bytes_per_s: float = STORE_BYTES_PER_S) -> SimResult:
    """Serve requests with ``plan`` on ``instance`` and measure (see the module docstring).

    ``trace``: arrivals and token counts (None: Poisson at the instance's rate, prompt and output
    tokens, drawn with ``seed``). ``num_requests`` / ``duration_s``: how many requests, or arrivals
    before this time (both: whichever comes first; neither: the whole trace, or 1000 Poisson
    arrivals). Every request is served to the end (or dropped), however long that takes.
    ``bandwidth_series``: ``{(a, b): bytes/s per second}`` or one array for every link (overrides
    the instance's series). ``events``: :class:`SimEvent` s. ``replan``: a :class:`ReplanHook` or a
    callable ``(observed_instance, plan) -> Plan | None`` (wrapped in a hook with its defaults).
    ``timeout_s``: longest wait in an admission queue. ``max_retries``: restarts after failures
    before a request is dropped. ``record_timeline``: keep up to ``timeline_cap`` resource holds.
    ``progress``: called with a line every tenth of the requests. Raises ``ValueError`` for bad
    options or a plan that cannot run on the instance (structure, coverage, routes, placement).
    """
    t_wall = time.perf_counter()
    bad = [str(v) for v in structure_violations(instance, plan) if v.kind in STRUCTURAL]
    if bad:
        raise ValueError("the plan cannot run on this instance: " + "; ".join(bad[:5])
                         + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))
    if num_requests is not None and (isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer))
                                     or not 1 <= num_requests <= MAX_REQUESTS):
        raise ValueError(f"num_requests must be an integer from 1 to {MAX_REQUESTS:,}, got {num_requests!r}")
    for name, v in (("duration_s", duration_s), ("timeout_s", timeout_s)):
        if v is not None and not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if not (store_bytes_per_s > 0 and math.isfinite(store_bytes_per_s)):
        raise ValueError(f"store_bytes_per_s must be a positive number, got {store_bytes_per_s!r}")
    if trace is not None and not isinstance(trace, RequestTrace):
        raise ValueError(f"trace must be a RequestTrace, got {type(trace).__name__}")
    if trace is not None and trace.arrival_s.size == 0:
        raise ValueError("the trace holds no requests")
    if replan is not None and not isinstance(replan, ReplanHook):
        if not callable(replan):
            raise ValueError(f"replan must be a ReplanHook or a callable, got {type(replan).__name__}")
        replan = ReplanHook(policy=replan)
    evs = check_events(instance, events)
    series = check_series(instance, bandwidth_series)
    warp = Warp([(e.time_s, float(e.value)) for e in evs if e.kind == "rate"])
    arrival, prompts, outputs = arrivals(instance, trace, num_requests, duration_s, seed, warp)
    if arrival.size == 0:
        raise ValueError(f"no request arrives before duration_s = {duration_s} s")
    sim = _Sim(instance, plan, arrival, prompts, outputs, series=series, events=evs, hook=replan,
               timeline_cap=timeline_cap if record_timeline else 0, timeout_s=timeout_s, max_retries=max_retries,
               store_bytes_per_s=store_bytes_per_s, progress=progress)
    sim.run()
    return sim.result(time.perf_counter() - t_wall)
