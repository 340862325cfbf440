"""Discrete-event simulation of a plan serving requests (``moeplan simulate``).

:func:`simulate` (:mod:`planner.sim.engine`) runs one; its parts: :mod:`~planner.sim.arrivals`
(traces, Poisson), :mod:`~planner.sim.events` (failures, bandwidth and rate changes),
:mod:`~planner.sim.resources` (devices and links as single servers), :mod:`~planner.sim.pipelines`
(passes compiled from the cost model's steps, slots, queues), :mod:`~planner.sim.hook` (online
re-planning and migration), :mod:`~planner.sim.results` (what a run measured).
"""

from planner.sim.engine import simulate
from planner.sim.events import SimEvent
from planner.sim.hook import ReplanHook
from planner.sim.results import SimResult

__all__ = ["ReplanHook", "SimEvent", "SimResult", "simulate"]
