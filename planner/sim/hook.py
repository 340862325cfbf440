"""Re-planning during a simulation: when the simulator asks for a new plan (:class:`ReplanHook`), and
what it observes, decides and migrates meanwhile (:class:`Replanning`).

The hook gets the instance as observed now (:func:`planner.domain.changes.changed_instance`: link
bandwidths scaled to their present value, lost devices dropped, arrival rate scaled) and the
current plan, and returns a new plan or None. The new plan is ready ``decision_s`` later; then its
weights are copied (:func:`planner.planners.migration.migration`) over the routes from the devices
holding them, or from the destination's model store, and the plan takes effect when the last copy
is done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import count

from planner.cost.costmodel import CostModel
from planner.cost.validator import structure_violations
from planner.domain.changes import changed_instance
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.planners.migration import migration
from planner.planners.replan import replan
from planner.sim.resources import Resources

MIN_PERIOD_S = 1e-3  # shortest period of periodic re-planning calls (s)
# Violations that make a plan impossible to run (memory, SLO, batch or accuracy ones do not).
STRUCTURAL = {"structure", "coverage", "contiguity", "link", "placement"}


class ReplanHook:
    """When and how the simulator asks for a new plan.

    ``every_s``: period of the calls (None: not periodic). ``on_bandwidth_change``: call when a
    link's observed bandwidth moved by more than this fraction since the last call (None: never).
    ``on_device_change``: call when a device goes down or comes back. ``policy``: a callable
    ``(observed_instance, current_plan) -> Plan | None``; the default runs
    :func:`planner.planners.replan.replan` with ``time_budget_s``, ``migration_budget_bytes`` (None: the
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


class Replanning:
    """The simulator's side of re-planning: the bandwidth it observes, the calls to the hook, the
    migration under way (``pending``), the log of every call and the bytes migrated.

    ``ids`` is the counter the simulator draws reservation owners from (a migration owns its copies).
    """

    def __init__(self, hook: ReplanHook | None, instance: Instance, resources: Resources, store_bytes_per_s: float,
                 ids: count):
        self.hook = hook
        self.inst = instance
        self.res = resources
        self.store_bytes_per_s = store_bytes_per_s
        self.ids = ids
        self.pending: dict | None = None
        self.log: list[dict] = []
        self.migration_bytes = 0.0
        self.ref_bw = self.observed_bw(0.0)

    def observed_bw(self, now: float) -> dict:
        """Factor of each link with a bandwidth clock: its bandwidth now (or the harmonic mean over
        the hook's ``bandwidth_window_s``) over its nominal one (a second of a series at zero shows
        as 1e-6: the re-planner needs a positive bandwidth)."""
        out = {}
        window = self.hook.bandwidth_window_s if self.hook is not None else 0.0
        samples = [max(0.0, now - k) for k in range(max(1, math.ceil(window)))]
        for r, clock in enumerate(self.res.clocks):
            if clock is None:
                continue
            if window <= 0:
                rate = clock.rate(now)
            else:
                floor = clock.nominal * 1e-6
                rate = len(samples) / sum(1.0 / max(clock.rate(t), floor) for t in samples)
            out[self.res.keys[r]] = max(rate / clock.nominal, 1e-6)
        return out

    def observed_instance(self, bandwidth: dict, rate_factor: float, down: set[str]) -> Instance:
        """The instance as observed now: ``bandwidth`` (:meth:`observed_bw`) on its links, the arrival
        rate scaled by ``rate_factor``, the devices ``down`` dropped."""
        inst = self.inst
        for key, f in sorted(bandwidth.items()):
            if f != 1.0:
                inst = changed_instance(inst, bandwidth_factor=f, link=key)
        if rate_factor != 1.0:
            inst = changed_instance(inst, arrival_rate_per_s=inst.workload.arrival_rate_per_s * rate_factor)
        if down:
            inst = changed_instance(inst, drop_device=sorted(down))
        return inst

    def bandwidth_moved(self, now: float) -> bool:
        """Whether a link's observed bandwidth moved by more than the hook's fraction since the last call."""
        limit = self.hook.on_bandwidth_change
        seen = self.observed_bw(now)
        return any(abs(seen[k] / self.ref_bw[k] - 1.0) > limit for k in seen if self.ref_bw.get(k))

    def entry(self, now: float, trigger: str, outcome: str, note: str = "", **extra) -> dict:
        item = {"time_s": now, "trigger": trigger, "outcome": outcome, "note": note, **extra}
        self.log.append(item)
        return item

    def trigger(self, why: str, now: float, plan: Plan, down: set[str], rate_factor: float) -> dict | None:
        """Ask the hook for a plan for the instance as observed now and reserve its migration; returns
        the migration now pending (its ``end_s`` is when it is done), or None when nothing changes."""
        hook = self.hook
        if self.pending is not None:
            if not why.startswith("device"):
                return None
            self.cancel(why, now)
        self.ref_bw = self.observed_bw(now)
        try:
            observed = self.observed_instance(self.ref_bw, rate_factor, down)
            new = hook.propose(observed, plan)
        except ValueError as exc:  # e.g. the origin is down: changed_instance cannot drop it
            self.entry(now, why, "failed", str(exc))
            return None
        if new is None or new == plan:
            self.entry(now, why, "kept")
            return None
        bad = [str(v) for v in structure_violations(self.inst, new) if v.kind in STRUCTURAL]
        lost = sorted(new.devices & down)
        if bad or lost:
            self.entry(now, why, "rejected", "; ".join(bad[:3]) or f"uses lost device(s) {', '.join(lost)}")
            return None
        cm = CostModel(observed)
        nbytes, steps = migration(plan, new, observed, cm)
        start = now + hook.decision_s
        owner = next(self.ids)
        self.res.label(owner, "migration", while_room=False)
        end = start
        for step in steps:
            end = max(end, self.copy(step, start, owner, cm, now))
        item = self.entry(now, why, "migrating", f"{len(steps)} copies", migration_bytes=nbytes, effective_s=end)
        self.pending = {"plan": new, "bytes": nbytes, "owner": owner, "entry": item, "end_s": end}
        return self.pending

    def copy(self, step, start: float, owner: int, cm: CostModel, now: float) -> float:
        """Reserve one weight copy starting at ``start``; returns when it is done."""
        res = self.res
        if step.bytes <= 0:
            return start
        if step.from_device is None:
            key = ("model store", step.to_device, None)  # three parts: never a link key
            r = res.index.get(key)
            if r is None:
                r = res.add(key, f"store->{step.to_device}")
            return res.place(r, start, step.bytes / self.store_bytes_per_s, owner, now)
        t = start
        for key, bw, one_way in cm.network.route_hops(step.from_device, step.to_device):
            r = res.id(key)
            # A link with a bandwidth clock takes bytes; the others, seconds (their bandwidth is nominal).
            t = res.place(r, t, step.bytes if res.clocks[r] is not None else step.bytes / bw, owner, now)
            t += one_way
        return t

    def cancel(self, why: str, now: float) -> None:
        """Give up the migration under way (its copies' reservations are freed)."""
        pend, self.pending = self.pending, None
        self.res.unreserve({pend["owner"]}, now)
        pend["entry"]["outcome"] = "cancelled"
        pend["entry"]["note"] = f"cancelled at {now:.3f} s: {why}"

    def applied(self, pend: dict) -> None:
        """The migration ``pend`` is done and its plan runs now."""
        self.pending = None
        self.migration_bytes += pend["bytes"]
        pend["entry"]["outcome"] = "applied"
