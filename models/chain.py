"""Chain partition: items in a fixed order cut into contiguous stages on devices taken along a path.

Generic form of pipeline layer partitioning (items = layers, devices = a path chosen from a
network, the origin sends the input and receives the output) with no domain words. Shapes: ``L``
items, ``D`` devices. Times in seconds, memory in any one unit (e.g. bytes).

A solution is a list of stages ``(device, first, end)``: items ``first .. end - 1`` (end exclusive)
run on ``device``. Stages are listed in item order, cover ``0 .. L - 1`` contiguously, are
non-empty, and their devices strictly increase (``ordered=True``: devices are used in path order,
any may be skipped). The boundary after item ``l`` between stages on devices ``d < e`` is a *cut*.

Terms of a solution:
    stage time     compute of its items on its device (``stage_time``)
    cut            transfer_busy[d, e, l] (link busy time), transfer_latency[d, e, l] (incl. propagation)
    entry          entry_busy[d], entry_latency[d] of the device holding item 0 (origin -> d)
    exit           exit_busy[d], exit_latency[d] of the device holding item L - 1 (d -> origin)

    bottleneck = max(stage times, busy times of the cuts used, entry busy, exit busy)
    latency    = sum of stage times + latencies of the cuts used + entry latency + exit latency

Constraints: stage memory ``sum_{l in stage} memory[d, l] <= capacity[d]`` and, when
``max_bottleneck`` is finite, ``bottleneck <= max_bottleneck`` (a throughput floor written as a cap on
the bottleneck time). Both are conditions on one stage, cut, entry or exit at a time.

Objectives (``objective``): ``"bottleneck"`` minimises the bottleneck (pipeline throughput), and
``"latency"`` minimises the latency of one pass.

Stage times are differences of prefix sums (:attr:`ChainPartition.compute_prefix`), here and in every
solver, so that a solver's filter ``stage time <= cap`` and :func:`evaluate` agree bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import numpy as np

OBJECTIVES = ("bottleneck", "latency")


class Stage(NamedTuple):
    """Items ``first .. end - 1`` on ``device`` (indices into the problem's path)."""

    device: int
    first: int
    end: int


@dataclass(frozen=True)
class ChainPartition:
    """Problem data; see the module docstring for the meaning. float64 arrays.

    compute:           [D, L]     time of item l on device d (s), finite, >= 0
    memory:            [D, L]     memory item l needs on device d, finite, >= 0
    capacity:          [D]        memory of device d (inf: unlimited), >= 0
    transfer_busy:     [D, D, L]  link busy time of the cut after item l from d to e (s); used for d < e, l < L - 1
    transfer_latency:  [D, D, L]  latency of that cut (s), same entries used
    entry_busy:        [D]        busy time of sending the input from the origin to d (s)
    entry_latency:     [D]        latency of that (s)
    exit_busy:         [D]        busy time of sending the output from d to the origin (s)
    exit_latency:      [D]        latency of that (s)
    max_bottleneck:    cap on the bottleneck (s); inf for none
    """

    compute: np.ndarray
    memory: np.ndarray
    capacity: np.ndarray
    transfer_busy: np.ndarray
    transfer_latency: np.ndarray
    entry_busy: np.ndarray
    entry_latency: np.ndarray
    exit_busy: np.ndarray
    exit_latency: np.ndarray
    objective: str = "bottleneck"
    max_bottleneck: float = math.inf
    ordered: bool = True
    names: dict = field(default_factory=dict, compare=False)  # optional labels: "devices", "items"

    @property
    def shape(self) -> tuple[int, int]:
        """``(D, L)``."""
        return self.compute.shape

    @classmethod
    def build(cls, compute, *, memory=None, capacity=None, transfer_busy=None, transfer_latency=None,
              entry_busy=None, entry_latency=None, exit_busy=None, exit_latency=None,
              objective="bottleneck", max_bottleneck=None, ordered=True, names=None) -> ChainPartition:
        """Fill defaults (no memory limit, free transfers) and broadcast, then :meth:`check`."""
        compute = np.atleast_2d(np.asarray(compute, dtype=float))
        D, L = compute.shape

        def arr(name, value, shape, default=0.0):
            if value is None:
                return np.full(shape, default)
            value = np.asarray(value, dtype=float)
            try:
                return np.broadcast_to(value, shape).copy()
            except ValueError:
                raise ValueError(f"{name} has shape {value.shape}, expected {shape} (or one that broadcasts to it)") from None

        problem = cls(
            compute=compute.copy(),
            memory=arr("memory", memory, (D, L)),
            capacity=arr("capacity", capacity, (D,), np.inf),
            transfer_busy=arr("transfer_busy", transfer_busy, (D, D, L)),
            transfer_latency=arr("transfer_latency", transfer_latency, (D, D, L)),
            entry_busy=arr("entry_busy", entry_busy, (D,)),
            entry_latency=arr("entry_latency", entry_latency, (D,)),
            exit_busy=arr("exit_busy", exit_busy, (D,)),
            exit_latency=arr("exit_latency", exit_latency, (D,)),
            objective=objective,
            max_bottleneck=math.inf if max_bottleneck is None else float(max_bottleneck),
            ordered=bool(ordered),
            names=dict(names or {}),
        )
        problem.check()
        return problem

    def check(self) -> None:
        """Raise ``ValueError`` naming the first field whose shape or values are wrong."""
        if self.compute.ndim != 2 or 0 in self.compute.shape:
            raise ValueError(f"compute must have shape [D, L] with D, L >= 1, got {self.compute.shape}")
        D, L = self.shape
        expect = {"memory": (D, L), "capacity": (D,), "transfer_busy": (D, D, L), "transfer_latency": (D, D, L),
                  "entry_busy": (D,), "entry_latency": (D,), "exit_busy": (D,), "exit_latency": (D,)}
        for name, shape in expect.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        for name in ("compute", "memory", *list(expect)[2:]):
            a = getattr(self, name)
            if not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ValueError(f"{name} must be finite and >= 0")
        if np.any(np.isnan(self.capacity)) or np.any(self.capacity < 0):
            raise ValueError("capacity must be >= 0 (inf for unlimited)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if math.isnan(self.max_bottleneck) or self.max_bottleneck < 0:
            raise ValueError(f"max_bottleneck must be >= 0 (inf for none), got {self.max_bottleneck}")
        if not self.ordered:
            raise ValueError("ordered=False (devices in any order) is not supported; order the path first")

    @cached_property
    def compute_prefix(self) -> np.ndarray:
        """[D, L + 1]: ``compute_prefix[d, k]`` = compute of items ``0 .. k - 1`` on d (left-to-right sums)."""
        return np.concatenate([np.zeros((self.shape[0], 1)), np.cumsum(self.compute, axis=1)], axis=1)

    @cached_property
    def memory_prefix(self) -> np.ndarray:
        """[D, L + 1]: ``memory_prefix[d, k]`` = memory of items ``0 .. k - 1`` on d."""
        return np.concatenate([np.zeros((self.shape[0], 1)), np.cumsum(self.memory, axis=1)], axis=1)


def stage_time(problem: ChainPartition, device: int, first: int, end: int) -> float:
    """Compute time (s) of items ``first .. end - 1`` on ``device``."""
    return float(problem.compute_prefix[device, end] - problem.compute_prefix[device, first])


def stage_memory(problem: ChainPartition, device: int, first: int, end: int) -> float:
    """Memory of items ``first .. end - 1`` on ``device``."""
    return float(problem.memory_prefix[device, end] - problem.memory_prefix[device, first])


def over(value: float, limit: float, tol: float) -> bool:
    """``value`` exceeds ``limit`` by more than the relative tolerance ``tol``."""
    return value > limit + tol * abs(limit)


def stages_from_devices(device_of_item: Sequence[int]) -> list[Stage]:
    """Stages from the device of each item (runs of equal devices)."""
    stages: list[Stage] = []
    for l, d in enumerate(device_of_item):
        if stages and stages[-1].device == d:
            stages[-1] = Stage(int(d), stages[-1].first, l + 1)
        else:
            stages.append(Stage(int(d), l, l + 1))
    return stages


def structure_errors(problem: ChainPartition, stages) -> list[str]:
    """What makes ``stages`` not a partition of the items into stages in path order (empty: fine)."""
    D, L = problem.shape
    try:
        stages = [Stage(*map(int, s)) for s in stages]
    except (TypeError, ValueError):
        return ["stages must be (device, first, end) triples of integers"]
    if not stages:
        return ["there are no stages"]
    out = []
    for i, (d, a, e) in enumerate(stages):
        if not 0 <= d < D:
            out.append(f"stage {i} uses device {d}, expected 0 .. {D - 1}")
        if not 0 <= a < e <= L:
            out.append(f"stage {i} covers items [{a}, {e}), expected a non-empty range within [0, {L})")
    if stages[0].first != 0 or stages[-1].end != L:
        out.append(f"stages cover [{stages[0].first}, {stages[-1].end}), expected [0, {L})")
    for i, (s, t) in enumerate(zip(stages, stages[1:])):
        if t.first != s.end:
            out.append(f"stage {i + 1} starts at item {t.first}, the previous one ends at {s.end}")
        if t.device <= s.device:
            out.append(f"stage {i + 1} uses device {t.device} after device {s.device}: devices must increase")
    return out


def evaluate(problem: ChainPartition, stages) -> tuple[float, float]:
    """``(bottleneck, latency)`` in seconds of well-formed ``stages`` (see :func:`structure_errors`)."""
    stages = [Stage(*map(int, s)) for s in stages]
    first, last = stages[0].device, stages[-1].device
    busy = [float(problem.entry_busy[first]), float(problem.exit_busy[last])]
    latency = float(problem.entry_latency[first])
    for s in stages:
        t = stage_time(problem, *s)
        busy.append(t)
        latency += t
    for s, t in zip(stages, stages[1:]):
        busy.append(float(problem.transfer_busy[s.device, t.device, s.end - 1]))
        latency += float(problem.transfer_latency[s.device, t.device, s.end - 1])
    latency += float(problem.exit_latency[last])
    return max(busy), latency


def objective_value(problem: ChainPartition, stages) -> float:
    """The problem's objective (s) of well-formed ``stages``."""
    bottleneck, latency = evaluate(problem, stages)
    return bottleneck if problem.objective == "bottleneck" else latency


def violations(problem: ChainPartition, stages, tol: float = 1e-9) -> list[str]:
    """Every constraint ``stages`` break (empty: feasible); ``tol`` is relative."""
    out = structure_errors(problem, stages)
    if out:
        return out
    for d, a, e in (Stage(*map(int, s)) for s in stages):
        need = stage_memory(problem, d, a, e)
        if over(need, problem.capacity[d], tol):
            out.append(f"device {d} needs {need:.6g} memory for items [{a}, {e}), capacity {problem.capacity[d]:.6g}")
    bottleneck, _ = evaluate(problem, stages)
    if over(bottleneck, problem.max_bottleneck, tol):
        out.append(f"bottleneck {bottleneck:.6g} s exceeds the cap max_bottleneck = {problem.max_bottleneck:.6g} s")
    return out
