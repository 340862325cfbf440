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
  instance (``tests/test_simulator.py`` checks 0.1 %).
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
  (:func:`planner.solve.migration.migration`): each copy goes over the route from the device holding the
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
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from operator import itemgetter
from typing import Callable

import numpy as np

from planner.cost.costmodel import CostModel, Step
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.domain.changes import changed_instance
from planner.solve.migration import migration
from planner.solve.replan import replan
from planner.cost.validator import structure_violations
from planner.domain.data_files import RequestTrace

DEFAULT_REQUESTS = 1000  # Poisson arrivals when neither num_requests nor duration_s is given
MAX_REQUESTS = 10_000_000  # a run of more requests (about 25 min at 100k per 15 s) is refused
MIN_PERIOD_S = 1e-3  # shortest period of periodic re-planning calls (s)
DEFAULT_MAX_RETRIES = 3
DEFAULT_TIMELINE_CAP = 100_000
STORE_BYTES_PER_S = 1e9  # model-store read rate (bytes/s) for weights no surviving device holds
EXACT_PROMPT_MAX = 256  # prompts up to this many tokens are priced exactly
PROMPT_GRID_RATIO = 1.0 + 1.0 / 64.0
EVENT_KINDS = ("device_down", "device_up", "bandwidth", "rate")
# Violations that make a plan impossible to run (memory, SLO, batch or accuracy ones do not).
_STRUCTURAL = {"structure", "coverage", "contiguity", "link", "placement"}

_EV_PASS, _EV_SIM, _EV_TICK, _EV_BWCHECK, _EV_MIGRATED = range(5)
_PREFILL, _DECODE = 0, 1
_END = itemgetter(1)
# Reservations that ended are dropped from a resource's list once it holds more than this many
# (searches skip them anyway; dropping them in bulk keeps the lists short at little cost).
_PRUNE_AT = 64


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


class ReplanHook:
    """When and how the simulator asks for a new plan.

    ``every_s``: period of the calls (None: not periodic). ``on_bandwidth_change``: call when a
    link's observed bandwidth moved by more than this fraction since the last call (None: never).
    ``on_device_change``: call when a device goes down or comes back. ``policy``: a callable
    ``(observed_instance, current_plan) -> Plan | None``; the default runs
    :func:`planner.solve.replan.replan` with ``time_budget_s``, ``migration_budget_bytes`` (None: the
    instance's) and ``max_moves`` local moves per start (a fixed count keeps runs reproducible).
    ``decision_s``: simulated seconds between the call and the start of the migration (default
    ``time_budget_s``). ``bandwidth_window_s``: the re-planner sees each link's bandwidth as the
    harmonic mean of the last this many seconds, one sample per second (the rate at which bytes
    went through on average, a forecast for requests that last about as long); 0 (default): the
    bandwidth at the moment of the call.
    """

    def __init__(self, every_s: float | None = None, on_bandwidth_change: float | None = 0.25,
                 time_budget_s: float = 0.02, migration_budget_bytes: float | None = None, *,
                 on_device_change: bool = True, policy: Callable[[Instance, Plan], Plan | None] | None = None,
                 max_moves: int = 8, seed: int = 0, decision_s: float | None = None, bandwidth_window_s: float = 0.0):
        if every_s is not None and not (every_s > 0 and math.isfinite(every_s)):
            raise ValueError(f"every_s must be a positive number of seconds, got {every_s!r}")
        if on_bandwidth_change is not None and not on_bandwidth_change >= 0:
            raise ValueError(f"on_bandwidth_change must be a fraction >= 0, got {on_bandwidth_change!r}")
        if not (time_budget_s >= 0 and math.isfinite(time_budget_s)):
            raise ValueError(f"time_budget_s must be a finite number >= 0, got {time_budget_s!r}")
        decision = time_budget_s if decision_s is None else decision_s
        if not (decision >= 0 and math.isfinite(decision)):
            raise ValueError(f"decision_s must be a finite number >= 0, got {decision_s!r}")
        if every_s is not None and every_s < max(decision, MIN_PERIOD_S):
            raise ValueError(f"every_s must be at least {max(decision, MIN_PERIOD_S):g} s (the decision time, "
                             f"and never below {MIN_PERIOD_S:g} s), got {every_s!r}")
        self.every_s = every_s
        self.on_bandwidth_change = on_bandwidth_change
        self.on_device_change = on_device_change
        self.time_budget_s = time_budget_s
        self.migration_budget_bytes = migration_budget_bytes
        self.policy = policy
        self.max_moves = max_moves
        self.seed = seed
        self.decision_s = decision
        if not (bandwidth_window_s >= 0 and math.isfinite(bandwidth_window_s)):
            raise ValueError(f"bandwidth_window_s must be a finite number of seconds >= 0, got {bandwidth_window_s!r}")
        self.bandwidth_window_s = float(bandwidth_window_s)

    def propose(self, instance: Instance, plan: Plan) -> Plan | None:
        """A new plan for the observed ``instance``, or None to keep ``plan``."""
        if self.policy is not None:
            return self.policy(instance, plan)
        res = replan(plan, instance, time_budget_s=self.time_budget_s, migration_budget_bytes=self.migration_budget_bytes,
                     seed=self.seed, max_moves=self.max_moves)
        return None if res.plan is None or res.plan is plan else res.plan


def _stats_ms(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"mean": float(values.mean() * 1e3), "p50": float(p50 * 1e3), "p95": float(p95 * 1e3), "p99": float(p99 * 1e3)}


@dataclass
class SimResult:
    """What a run produced. Per-request arrays (length ``requests_total``, in arrival order):
    ``arrival_s``, ``first_token_s`` and ``finish_s`` (NaN when the request did not get there),
    ``prompt_tokens``, ``output_tokens``, ``dropped`` (the reason, "" if it finished), ``dropped_s``
    (when, NaN if it finished), ``retries``, ``pipeline`` and ``plan_index`` (the pipeline, and the
    plan in ``plans``, that admitted it last; -1 if none). ``busy_s``: seconds each device and link
    (``"a<->b"``) was held. ``timeline`` (with ``record_timeline``): ``(resource, start_s, end_s,
    what)`` tuples, at most the cap."""

    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    dropped: np.ndarray
    retries: np.ndarray
    pipeline: np.ndarray
    sim_time_s: float
    wall_time_s: float
    events_processed: int
    busy_s: dict
    replan_log: list
    migration_bytes: float
    slo_s: dict  # "latency", "ttft", "tpot" -> seconds, only those the instance sets
    timeline: list | None
    plans: list  # every plan that ran, the first one first
    dropped_s: np.ndarray
    plan_index: np.ndarray

    @property
    def finished(self) -> np.ndarray:
        return ~np.isnan(self.finish_s)

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def latency_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Mean time per output token after the first (NaN for one-token requests and unfinished ones)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.output_tokens > 1, (self.finish_s - self.first_token_s) / (self.output_tokens - 1), np.nan)

    def throughput_between(self, t0: float, t1: float) -> float:
        """Output tokens/s of the requests that finished in ``[t0, t1)`` (a steady-state window)."""
        if not t1 > t0:
            raise ValueError(f"need t1 > t0, got [{t0}, {t1})")
        done = self.finished & (self.finish_s >= t0) & (self.finish_s < t1)
        return float(self.output_tokens[done].sum() / (t1 - t0))

    def slo_met(self) -> np.ndarray:
        """Per request: finished and within every SLO the instance sets."""
        ok = self.finished.copy()
        with np.errstate(invalid="ignore"):  # NaN (unfinished) compares False
            if "latency" in self.slo_s:
                ok &= self.latency_s <= self.slo_s["latency"]
            if "ttft" in self.slo_s:
                ok &= self.ttft_s <= self.slo_s["ttft"]
            if "tpot" in self.slo_s:
                ok &= (self.output_tokens <= 1) | (self.tpot_s <= self.slo_s["tpot"])
        return ok

    def metrics(self) -> dict:
        """The figures of the run, JSON-safe (times in ms where the key says so)."""
        fin = self.finished
        n = int(self.arrival_s.size)
        reasons, counts = np.unique(self.dropped[self.dropped != ""], return_counts=True)
        tokens = int(self.output_tokens[fin].sum())
        tpot = self.tpot_s[fin]

        def per_s(x: float) -> float:
            return float(x / self.sim_time_s) if self.sim_time_s > 0 else 0.0

        return {
            "requests_total": n,
            "requests_finished": int(fin.sum()),
            "requests_dropped": int((self.dropped != "").sum()),
            "drop_reasons": {str(r): int(c) for r, c in zip(reasons, counts)},
            "requests_retried": int((self.retries > 0).sum()),
            "output_tokens": tokens,
            "throughput_tokens_per_s": per_s(tokens),
            "requests_per_s": per_s(int(fin.sum())),
            "ttft_ms": _stats_ms(self.ttft_s[fin]),
            "tpot_ms": _stats_ms(tpot[~np.isnan(tpot)]),
            "latency_ms": _stats_ms(self.latency_s[fin]),
            "slo_attainment": float(self.slo_met().sum() / n) if self.slo_s and n else None,
            "utilisation": {k: per_s(v) for k, v in self.busy_s.items()},
            "replans": sum(1 for r in self.replan_log if r["outcome"] == "applied"),
            "migration_bytes": float(self.migration_bytes),
            "replan_log": self.replan_log,
            "sim_time_s": float(self.sim_time_s),
            "wall_time_s": float(self.wall_time_s),
            "events_processed": int(self.events_processed),
        }


# ----------------------------------------------------------------------------------------------
# links

class _LinkClock:
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


# ----------------------------------------------------------------------------------------------
# compiled pipelines

class _Path:
    """One pipeline's pass, compiled for the engine.

    ``segments``: a list of forks, each a tuple of branches (a plain run of steps is a fork of one
    branch); a branch is a list of ``(resource id, delay s, column)``. A *variant* (one pass size)
    is ``(holds, nbytes)``: lists indexed by column (seconds held at nominal bandwidth, bytes sent)."""

    def __init__(self, items: list, resource_id: Callable):
        self.segments: list[tuple] = []
        self.columns: list[list[int]] = []  # column -> indices of the flat steps merged into it
        self.keys: list = []  # flat step keys, to check every variant has the same shape
        run: list = []
        flat = 0

        def add(branch: list, s: Step) -> None:
            nonlocal flat
            r = resource_id(s.key)
            self.keys.append(s.key)
            # Consecutive holds of one device (no delay between) are one hold.
            if branch and branch[-1][0] == r and isinstance(s.key, str) and branch[-1][1] == 0.0:
                self.columns[branch[-1][2]].append(flat)
                branch[-1][1] = s.delay_s
            else:
                self.columns.append([flat])
                branch.append([r, s.delay_s, len(self.columns) - 1])
            flat += 1

        for item in items:
            if isinstance(item, Step):
                add(run, item)
                continue
            if run:
                self.segments.append((run,))
                run = []
            branches = []
            for steps in item.branches:
                branch: list = []
                for s in steps:
                    add(branch, s)
                branches.append(branch)
            self.segments.append(tuple(branches))
        if run:
            self.segments.append((run,))
        self.segments = [tuple([tuple(x) for x in b] for b in seg) for seg in self.segments]
        self.resources = sorted({r for seg in self.segments for b in seg for r, _, _ in b})

    def variant(self, items: list) -> tuple[list[float], list[float]]:
        flat = []
        for item in items:
            flat.extend((item,) if isinstance(item, Step) else (s for b in item.branches for s in b))
        if [s.key for s in flat] != self.keys:
            raise RuntimeError("pass steps changed shape between pass sizes")
        holds = [sum(flat[i].hold_s for i in col) for col in self.columns]
        nbytes = [sum(flat[i].nbytes for i in col) for col in self.columns]
        return holds, nbytes


class _Slot:
    __slots__ = ("index", "seats", "active", "k", "fin", "joining", "running")

    def __init__(self, index: int):
        self.index = index
        self.seats = 0  # requests holding a seat: prefilling, joining or decoding
        self.active = 0  # sequences in the decode steps
        self.k = 0  # decode steps done
        self.fin: dict[int, list[int]] = {}  # step count -> requests whose last token that step gives
        self.joining: list[int] = []
        self.running = False


class _Pipe:
    """A pipeline of a plan that runs (or drains) in the simulation."""

    def __init__(self, sim: "_Sim", pipe, index: int, generation: int):
        cm = sim.cm
        self.pipe = pipe
        self.index = index
        self.generation = generation
        items = cm.pass_steps(pipe, 1.0, cm.decode_context, False)
        self.path = _Path(items, sim.resource_id)
        b = pipe.micro_batch_size
        self.decode = [None] + [self.path.variant(cm.pass_steps(pipe, float(n), cm.decode_context, False))
                                for n in range(1, b + 1)]
        self.prefill: dict[int, tuple] = {}
        self.slots = [_Slot(k) for k in range(pipe.num_micro_batches)]
        self.free = b * pipe.num_micro_batches
        self.queue: deque[int] = deque()
        self.live: dict[int, list] = {}  # pass id -> pass
        names = sim.res_keys
        self.devices = set()
        for r in self.path.resources:
            key = names[r]
            self.devices.update((key,) if isinstance(key, str) else key)
        self.up = not (self.devices & sim.down)
        self.draining = False
        self._sim = sim

    def prefill_variant(self, prompt: int) -> tuple:
        hit = self.prefill.get(prompt)
        if hit is None:
            cm = self._sim.cm
            if prompt <= EXACT_PROMPT_MAX or prompt == int(cm.prompt):
                hit = self.path.variant(cm.pass_steps(self.pipe, float(prompt), prompt / 2.0, True))
            else:
                k = int(math.floor(math.log(prompt / EXACT_PROMPT_MAX) / math.log(PROMPT_GRID_RATIO)))
                lo, hi = _grid(k), _grid(k + 1)
                while lo > prompt:
                    k -= 1
                    lo, hi = _grid(k), lo
                while hi < prompt:
                    k += 1
                    lo, hi = hi, _grid(k + 1)
                if prompt in (lo, hi):
                    hit = self.path.variant(cm.pass_steps(self.pipe, float(prompt), prompt / 2.0, True))
                else:
                    (h0, b0), (h1, b1) = self.prefill_variant(lo), self.prefill_variant(hi)
                    w = (prompt - lo) / (hi - lo)
                    hit = ([x + w * (y - x) for x, y in zip(h0, h1)], [x + w * (y - x) for x, y in zip(b0, b1)])
            self.prefill[prompt] = hit
        return hit


def _grid(k: int) -> int:
    """Prompt length of grid point ``k`` >= 0 (k = 0 is EXACT_PROMPT_MAX; whole, strictly increasing:
    neighbours differ by 4 tokens or more)."""
    return int(round(EXACT_PROMPT_MAX * PROMPT_GRID_RATIO ** k))


# ----------------------------------------------------------------------------------------------
# the engine

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
        self.store_bytes_per_s = store_bytes_per_s
        self.progress = progress
        self.now = 0.0
        self.seq = itertools.count()
        self.ids = itertools.count()  # pass and migration ids (reservation owners)
        self.heap: list = []
        self.down: set[str] = set()
        self.rate_factor = 1.0
        # Resources: devices, then links (keyed by the sorted pair, as the cost model's busy keys),
        # then model stores (pseudo-resources, created on demand, not reported).
        self.res_keys: list = []
        self.res_names: list[str] = []
        self.res_index: dict = {}
        self.iv: list[list] = []  # per resource: reservations (start, end, owner) from now on, sorted
        self.busy: list[float] = []
        self.clocks: list[_LinkClock | None] = []
        for d in instance.devices:
            self._add_resource(d.name, d.name)
        bw_changes: dict = {}
        for ev in events:
            if ev.kind == "bandwidth":
                key = None if ev.target is None else (min(ev.target), max(ev.target))
                bw_changes.setdefault(key, []).append((ev.time_s, ev.value))
        for u, v, data in instance.graph().edges(data=True):
            key = (min(u, v), max(u, v))
            link = data["link"]
            changes = sorted(bw_changes.get(None, []) + bw_changes.get(key, []), key=lambda c: c[0])
            s = series.get(key, link.bandwidth_series)
            clock = _LinkClock(link.bandwidth_bytes_per_s, s, changes) if s is not None or changes else None
            self._add_resource(key, f"{key[0]}<->{key[1]}", clock)
        self.reported = len(self.res_keys)
        self.timeline: list | None = [] if timeline_cap > 0 else None
        self.timeline_cap = timeline_cap
        self.what: dict[int, str] = {}  # owner -> label, only with a timeline
        # Requests.
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
        self.pipes = [_Pipe(self, p, i, 0) for i, p in enumerate(plan.pipelines)]
        self.draining: list[_Pipe] = []
        self._reset_router()
        self.pending: dict | None = None
        self.replan_log: list[dict] = []
        self.migration_bytes = 0.0
        self.ref_bw = self._observed_bw()
        for ev in events:
            self._push(ev.time_s, _EV_SIM, ev)
        if hook is not None and hook.every_s is not None:
            self._push(hook.every_s, _EV_TICK, None)
        if hook is not None and hook.on_bandwidth_change is not None and any(
                c is not None and c.series is not None for c in self.clocks):
            self._push(1.0, _EV_BWCHECK, None)

    # ----- bookkeeping ---------------------------------------------------------------------------
    def _add_resource(self, key, name: str, clock: _LinkClock | None = None) -> int:
        self.res_index[key] = len(self.res_keys)
        self.res_keys.append(key)
        self.res_names.append(name)
        self.iv.append([])
        self.busy.append(0.0)
        self.clocks.append(clock)
        return self.res_index[key]

    def resource_id(self, key) -> int:
        return self.res_index[key]

    def _push(self, t: float, kind: int, obj) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, obj))

    def _reset_router(self) -> None:
        shares = [max(0.0, p.pipe.request_share) for p in self.pipes]
        self.weights = shares if sum(shares) > 0 else [1.0] * len(self.pipes)
        self.credit = [0.0] * len(self.pipes)

    def _route(self) -> _Pipe:
        """Smooth weighted round robin over the pipelines that are up (over all of them if none is)."""
        cand = [i for i, p in enumerate(self.pipes) if p.up and self.weights[i] > 0] or \
               [i for i in range(len(self.pipes)) if self.weights[i] > 0]
        total = sum(self.weights[i] for i in cand)
        for i in cand:
            self.credit[i] += self.weights[i]
        pick = max(cand, key=lambda i: (self.credit[i], -i))
        self.credit[pick] -= total
        return self.pipes[pick]

    # ----- reservations --------------------------------------------------------------------------
    def _reserve(self, path: _Path, variant: tuple, t: float, owner: int) -> float:
        """Reserve every step of one pass ready at ``t``; returns when the pass ends."""
        holds, nbytes = variant
        run = self._run
        for seg in path.segments:
            if len(seg) == 1:
                t = run(seg[0], holds, nbytes, t, owner)
            else:
                end = t
                for branch in seg:
                    e = run(branch, holds, nbytes, t, owner)
                    if e > end:
                        end = e
                t = end
        return t

    def _run(self, branch, holds, nbytes, t: float, owner: int) -> float:
        ivs, clocks, busy, timeline, prune_at = self.iv, self.clocks, self.busy, self.timeline, _PRUNE_AT
        for r, delay, j in branch:
            h = holds[j]
            if h > 0.0:
                iv = ivs[r]
                if clocks[r] is None and (not iv or iv[-1][1] <= t):
                    # Free from t on, at nominal speed: the common case, appended without a search.
                    if len(iv) > prune_at and iv[0][1] <= self.now:
                        del iv[:bisect_right(iv, self.now, key=_END)]
                    iv.append((t, t + h, owner))
                    busy[r] += h
                    if timeline is not None:
                        self._record(r, t, t + h, owner)
                    t += h
                else:
                    t = self._place(r, t, h if clocks[r] is None else nbytes[j], owner)
            t += delay
        return t

    def _place(self, r: int, s: float, amount: float, owner: int) -> float:
        """Reserve resource ``r`` in its earliest idle interval at or after ``s``; ``amount`` is the
        hold (s), or the bytes to send on a link with a bandwidth clock. Returns the end."""
        iv = self.iv[r]
        # Reservations do not overlap and are sorted by start, hence by end too.
        if len(iv) > _PRUNE_AT and iv[0][1] <= self.now:
            del iv[:bisect_right(iv, self.now, key=_END)]
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
            self._record(r, s, e, owner)
        return e

    def _record(self, r: int, s: float, e: float, owner: int) -> None:
        if r < self.reported and len(self.timeline) < self.timeline_cap:
            self.timeline.append((r, s, e, owner))

    def _unreserve(self, owners: set) -> None:
        """Free what ``owners`` hold from now on (what ran before now stays counted as busy)."""
        now = self.now
        for r, iv in enumerate(self.iv):
            if any(o in owners for _, _, o in iv):
                for s, e, o in iv:
                    if o in owners and e > now:
                        self.busy[r] -= e - max(s, now)
                self.iv[r] = [x for x in iv if x[2] not in owners or x[1] <= now]
        if self.timeline is not None:
            self.timeline = [(r, s, min(e, now) if o in owners else e, o) for r, s, e, o in self.timeline
                             if o not in owners or s < now]

    # ----- requests ------------------------------------------------------------------------------
    def _start_pass(self, ps: _Pipe, kind: int, payload, variant: tuple) -> None:
        pid = next(self.ids)
        p = [kind, ps, payload, True, pid]
        if self.timeline is not None and len(self.timeline) < self.timeline_cap:
            self.what[pid] = (f"pipeline {ps.index} prefill request {payload}" if kind == _PREFILL
                              else f"pipeline {ps.index} slot {payload.index} decode x{payload.active}")
        end = self._reserve(ps.path, variant, self.now, pid)
        ps.live[pid] = p
        self._push(end, _EV_PASS, p)

    def _admit(self, ps: _Pipe) -> None:
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

    def _step(self, ps: _Pipe, slot: _Slot) -> None:
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
    def _stop(self, ps: _Pipe) -> None:
        """A device of ``ps`` is down: cancel its passes; its requests in flight start over elsewhere."""
        ps.up = False
        victims = [p[2] for p in ps.live.values() if p[0] == _PREFILL]
        for p in ps.live.values():
            p[3] = False
        self._unreserve(set(ps.live))
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
        targets: dict[int, tuple[_Pipe, list[int]]] = {}
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
    def _observed_bw(self) -> dict:
        """Factor of each link with a bandwidth clock: its bandwidth now (or the harmonic mean over
        the hook's ``bandwidth_window_s``) over its nominal one (a second of a series at zero shows
        as 1e-6: the re-planner needs a positive bandwidth)."""
        out = {}
        window = self.hook.bandwidth_window_s if self.hook is not None else 0.0
        samples = [max(0.0, self.now - k) for k in range(max(1, math.ceil(window)))]
        for r, clock in enumerate(self.clocks):
            if clock is None:
                continue
            if window <= 0:
                rate = clock.rate(self.now)
            else:
                floor = clock.nominal * 1e-6
                rate = len(samples) / sum(1.0 / max(clock.rate(t), floor) for t in samples)
            out[self.res_keys[r]] = max(rate / clock.nominal, 1e-6)
        return out

    def _observed_instance(self, bandwidth: dict) -> Instance:
        """The instance as observed now, with ``bandwidth`` (:meth:`_observed_bw`) on its links."""
        inst = self.inst
        for key, f in sorted(bandwidth.items()):
            if f != 1.0:
                inst = changed_instance(inst, bandwidth_factor=f, link=key)
        if self.rate_factor != 1.0:
            inst = changed_instance(inst, arrival_rate_per_s=inst.workload.arrival_rate_per_s * self.rate_factor)
        if self.down:
            inst = changed_instance(inst, drop_device=sorted(self.down))
        return inst

    def _bandwidth_moved(self) -> bool:
        limit = self.hook.on_bandwidth_change
        now = self._observed_bw()
        return any(abs(now[k] / self.ref_bw[k] - 1.0) > limit for k in now if self.ref_bw.get(k))

    def _log(self, trigger: str, outcome: str, note: str = "", **extra) -> dict:
        entry = {"time_s": self.now, "trigger": trigger, "outcome": outcome, "note": note, **extra}
        self.replan_log.append(entry)
        return entry

    def _trigger(self, why: str) -> None:
        """Ask the hook for a plan for the instance as observed now; start migrating to it."""
        hook = self.hook
        if self.pending is not None:
            if not why.startswith("device"):
                return
            self._cancel_pending(why)
        self.ref_bw = self._observed_bw()
        try:
            observed = self._observed_instance(self.ref_bw)
            new = hook.propose(observed, self.plan)
        except ValueError as exc:  # e.g. the origin is down: changed_instance cannot drop it
            self._log(why, "failed", str(exc))
            return
        if new is None or new == self.plan:
            self._log(why, "kept")
            return
        bad = [str(v) for v in structure_violations(self.inst, new) if v.kind in _STRUCTURAL]
        lost = sorted(new.devices & self.down)
        if bad or lost:
            self._log(why, "rejected", "; ".join(bad[:3]) or f"uses lost device(s) {', '.join(lost)}")
            return
        cm = CostModel(observed)
        nbytes, steps = migration(self.plan, new, observed, cm)
        start = self.now + hook.decision_s
        owner = next(self.ids)
        if self.timeline is not None:
            self.what[owner] = "migration"
        end = start
        for step in steps:
            end = max(end, self._copy(step, start, owner, cm))
        entry = self._log(why, "migrating", f"{len(steps)} copies", migration_bytes=nbytes, effective_s=end)
        self.pending = {"plan": new, "bytes": nbytes, "owner": owner, "entry": entry}
        self._push(end, _EV_MIGRATED, self.pending)

    def _copy(self, step, start: float, owner: int, cm: CostModel) -> float:
        """Reserve one weight copy starting at ``start``; returns when it is done."""
        if step.bytes <= 0:
            return start
        if step.from_device is None:
            key = ("model store", step.to_device, None)  # three parts: never a link key
            r = self.res_index.get(key)
            if r is None:
                r = self._add_resource(key, f"store->{step.to_device}")
            return self._place(r, start, step.bytes / self.store_bytes_per_s, owner)
        t = start
        for key, bw, one_way in cm.route_hops(step.from_device, step.to_device):
            r = self.res_index[key]
            # A link with a bandwidth clock takes bytes; the others, seconds (their bandwidth is nominal).
            t = self._place(r, t, step.bytes if self.clocks[r] is not None else step.bytes / bw, owner)
            t += one_way
        return t

    def _cancel_pending(self, why: str) -> None:
        pend, self.pending = self.pending, None
        self._unreserve({pend["owner"]})
        pend["entry"]["outcome"] = "cancelled"
        pend["entry"]["note"] = f"cancelled at {self.now:.3f} s: {why}"

    def _switch(self, pend: dict) -> None:
        """The migration is done: the new plan takes over the queues; old pipelines drain."""
        self.pending = None
        self.plan = pend["plan"]
        self.plans.append(self.plan)
        old = self.pipes
        self.pipes = [_Pipe(self, p, i, len(self.plans) - 1) for i, p in enumerate(self.plan.pipelines)]
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
        self.migration_bytes += pend["bytes"]
        pend["entry"]["outcome"] = "applied"

    # ----- main loop -----------------------------------------------------------------------------
    def _quiet(self) -> bool:
        """Nothing in flight and nothing scheduled that could change that (only ticks remain)."""
        return (self.next_arrival >= self.n and self.pending is None and self.pending_sim_events == 0
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
                if obj is self.pending:
                    self._switch(obj)
            elif kind == _EV_TICK:
                self._trigger("periodic")
                if not self._quiet():
                    self._push(t + self.hook.every_s, _EV_TICK, None)
            else:  # _EV_BWCHECK
                if self._bandwidth_moved():
                    self._trigger("bandwidth change")
                if not self._quiet():
                    self._push(math.floor(t) + 1.0, _EV_BWCHECK, None)
        if self.pending is not None:
            self._cancel_pending("every request was done first")
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
        elif self.hook is not None and self.hook.on_bandwidth_change is not None and self._bandwidth_moved():
            self._trigger("bandwidth change")

    def result(self, wall_s: float) -> SimResult:
        ends = [x for x in self.fin + self.drop_s if not math.isnan(x)]
        sim_time = max([self.now] + ends)
        c = self.inst.constraints
        slo = {k: v for k, v in (("latency", c.latency_slo_s), ("ttft", c.ttft_slo_s), ("tpot", c.tpot_slo_s)) if v is not None}
        timeline = None
        if self.timeline is not None:
            timeline = [(self.res_names[r], s, e, self.what.get(o, "")) for r, s, e, o in self.timeline]
        return SimResult(
            arrival_s=np.array(self.arr), first_token_s=np.array(self.first), finish_s=np.array(self.fin),
            prompt_tokens=np.array(self.prompt), output_tokens=np.array(self.out), dropped=np.array(self.reason, dtype=object).astype(str),
            retries=np.array(self.retries), pipeline=np.array(self.served_by), sim_time_s=float(sim_time),
            wall_time_s=wall_s, events_processed=self.events,
            busy_s={self.res_names[r]: self.busy[r] for r in range(self.reported)},
            replan_log=self.replan_log, migration_bytes=self.migration_bytes, slo_s=slo, timeline=timeline,
            plans=self.plans, dropped_s=np.array(self.drop_s), plan_index=np.array(self.plan_of))


# ----------------------------------------------------------------------------------------------
# inputs

def _check_events(instance: Instance, events) -> list[SimEvent]:
    names = instance.device_index
    pairs = {frozenset((l.a, l.b)) for l in instance.links}
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
                if not (isinstance(ev.target, (tuple, list)) and len(ev.target) == 2 and frozenset(ev.target) in pairs):
                    raise ValueError(f"{where}: bandwidth target must be None (all links) or a link (a, b) of the "
                                     f"instance, got {ev.target!r}")
        out.append(ev)
    return sorted(out, key=lambda e: e.time_s)


def _check_series(instance: Instance, bandwidth_series) -> dict:
    """``{(a, b) sorted: bytes/s per second}`` from the argument (a dict per link, or one array for all)."""
    if bandwidth_series is None:
        return {}
    keys = [(min(l.a, l.b), max(l.a, l.b)) for l in instance.links]
    items = bandwidth_series.items() if isinstance(bandwidth_series, dict) else ((k, bandwidth_series) for k in keys)
    out = {}
    for key, arr in items:
        if not (isinstance(key, tuple) and len(key) == 2 and (min(key), max(key)) in keys):
            raise ValueError(f"bandwidth_series: {key!r} is not a link of the instance (links: "
                             f"{', '.join(f'{a}<->{b}' for a, b in keys)})")
        a = np.asarray(arr, dtype=float)
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or (a < 0).any() or not (a > 0).any():
            raise ValueError(f"bandwidth_series for {key[0]}<->{key[1]}: need a 1-D array of bytes/s >= 0, not all zero")
        out[(min(key), max(key))] = a
    return out


class _Warp:
    """Arrival-rate factors over time: real time <-> base time (``base(t) = integral of the factor``)."""

    def __init__(self, changes: list[tuple[float, float]]):
        times, factors = [0.0], [1.0]
        for t, f in changes:
            if t == times[-1]:
                factors[-1] = f
            else:
                times.append(t)
                factors.append(f)
        self.t = np.array(times)
        self.f = np.array(factors)
        self.w = np.concatenate([[0.0], np.cumsum(np.diff(self.t) * self.f[:-1])])

    def base(self, t: float) -> float:
        k = int(np.searchsorted(self.t, t, side="right") - 1)
        return float(self.w[k] + (t - self.t[k]) * self.f[k])

    def real(self, tau: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.w, tau, side="right") - 1
        return self.t[k] + (tau - self.w[k]) / self.f[k]


def _arrivals(instance: Instance, trace: RequestTrace | None, num_requests: int | None, duration_s: float | None,
              seed: int, warp: _Warp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival times (s), prompt and output tokens of every request of the run."""
    horizon = math.inf if duration_s is None else warp.base(duration_s)
    w = instance.workload

    def too_many(expected: float) -> None:
        if num_requests is None and duration_s is not None and expected > MAX_REQUESTS:
            raise ValueError(f"duration_s = {duration_s:g} s brings about {expected:.3g} requests; "
                             f"at most {MAX_REQUESTS:,} are simulated")

    if trace is None:
        too_many(horizon * w.arrival_rate_per_s)
        count = DEFAULT_REQUESTS if num_requests is None and duration_s is None else num_requests
        rng = np.random.default_rng(seed)
        gaps = []
        total, drawn = 0.0, 0
        while (count is None or drawn < count) and total <= horizon:
            k = count - drawn if count is not None else max(1024, int((horizon - total) * w.arrival_rate_per_s * 1.1) + 16)
            g = rng.exponential(1.0 / w.arrival_rate_per_s, size=k)
            gaps.append(g)
            drawn += k
            total += float(g.sum())
        base = np.cumsum(np.concatenate(gaps)) if gaps else np.zeros(0)
        base = base[base < horizon][:count]
        return warp.real(base), np.full(base.size, w.prompt_tokens), np.full(base.size, w.output_tokens)
    order = np.argsort(trace.arrival_s, kind="stable")
    t0 = trace.arrival_s[order]
    size = t0.size
    span = float(t0[-1] - t0[0])
    period = span + (span / (size - 1) if size > 1 and span > 0 else 1.0)
    if num_requests is not None:
        reps = math.ceil(num_requests / size)
    elif duration_s is not None:
        too_many((horizon - float(t0[0])) / period * size)
        reps = max(1, math.ceil((horizon - float(t0[0])) / period) + 1)
    else:
        reps = 1
    base = np.concatenate([t0 + k * period for k in range(reps)])
    idx = np.tile(order, reps)
    keep = base < horizon
    base, idx = base[keep], idx[keep]
    if num_requests is not None:
        base, idx = base[:num_requests], idx[:num_requests]
    return warp.real(base), trace.prompt_tokens[idx], trace.output_tokens[idx]


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
    bad = [str(v) for v in structure_violations(instance, plan) if v.kind in _STRUCTURAL]
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
    evs = _check_events(instance, events)
    series = _check_series(instance, bandwidth_series)
    warp = _Warp([(e.time_s, float(e.value)) for e in evs if e.kind == "rate"])
    arrival, prompts, outputs = _arrivals(instance, trace, num_requests, duration_s, seed, warp)
    if arrival.size == 0:
        raise ValueError(f"no request arrives before duration_s = {duration_s} s")
    sim = _Sim(instance, plan, arrival, prompts, outputs, series=series, events=evs, hook=replan,
               timeline_cap=timeline_cap if record_timeline else 0, timeout_s=timeout_s, max_retries=max_retries,
               store_bytes_per_s=store_bytes_per_s, progress=progress)
    sim.run()
    return sim.result(time.perf_counter() - t_wall)
