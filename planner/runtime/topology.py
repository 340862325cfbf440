"""Which process runs which device of a plan, and whether this machine can host them.

One process per device: the workload's origin (where requests arrive and tokens return, and where
the scheduler runs) is rank 0, then every pipeline's stage devices in order, then the devices
that only hold experts (in the order the plan first names them). Under ``torchrun`` the same order
holds unless ``MOEPLAN_DEVICES`` (comma-separated device names, one per rank) gives another,
which must name exactly the plan's devices and the origin, the origin first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from planner.domain.errors import InputError, Problem
from planner.domain.instance import Instance
from planner.domain.plan import Plan

# Processes per core beyond which this machine is said not to host a plan (they would only queue
# for the cores: every emulated device would run several times slower than the profile says).
PROCESSES_PER_CORE = 4
# Memory of one process beside the model's weights: Python, torch and transformers, the threads.
PROCESS_BASE_BYTES = 400e6


@dataclass(frozen=True)
class Topology:
    """``devices[rank]`` is the device of process ``rank``; ``stages[name] = (pipeline, stage index)``
    for stage devices; ``pipeline_of[name]`` the pipeline whose stages or experts a device serves
    (the origin: None unless it runs a stage)."""

    devices: tuple[str, ...]
    stages: dict
    pipeline_of: dict

    @property
    def world(self) -> int:
        return len(self.devices)

    def rank(self, device: str) -> int:
        return self.devices.index(device)


def topology(instance: Instance, plan: Plan, order: list[str] | None = None, where: str = "MOEPLAN_DEVICES") -> Topology:
    """The processes of ``plan``; ``order`` (device names by rank) overrides the default order."""
    origin = instance.workload.origin
    names = [origin]
    stages, pipeline_of = {}, {}
    for p, pipe in enumerate(plan.pipelines):
        for i, s in enumerate(pipe.stages):
            stages[s.device] = (p, i)
            pipeline_of[s.device] = p
            if s.device not in names:
                names.append(s.device)
    for p, pipe in enumerate(plan.pipelines):
        for e in pipe.expert_placement:
            for d in e.devices:
                pipeline_of.setdefault(d, p)
                if d not in names:
                    names.append(d)
    if order is not None:
        if sorted(order) != sorted(names) or len(set(order)) != len(order):
            raise InputError(Problem(where, "", f"must name each of the plan's devices and the origin once "
                                                f"({', '.join(names)}), got {', '.join(order)}"))
        if order[0] != origin:
            raise InputError(Problem(where, "", f"rank 0 must be the origin {origin!r} (the scheduler runs there), got {order[0]!r}"))
        names = list(order)
    return Topology(tuple(names), stages, pipeline_of)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def oversubscription(world: int, threads: int = 1) -> str | None:
    """A note when ``world`` processes of ``threads`` torch threads each are more than this
    machine's cores: they then take cores and caches from each other, and every device's time (even
    counted in CPU time) runs slower than its profile says: the cost model does not know it unless
    a measured slowdown is passed (``planner.runtime.fidelity.compare(..., contention=...)``)."""
    n, c = world * max(int(threads), 1), cores()
    if n <= c:
        return None
    return (f"contention: {world} processes x {threads} thread(s) on {c} core(s): devices share cores, and their "
            f"measured times include the slowdown (the cost model's predictions do not, unless a measured factor is given)")


def available_memory_bytes() -> float | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        return None
    return None


def check_capacity(world: int, model_bytes: float, max_processes: int | None = None) -> None:
    """Raise :class:`InputError` when this machine cannot host ``world`` processes each holding a
    model of ``model_bytes`` (every process builds the whole planned model, see docs/runtime.md)."""
    limit = max_processes if max_processes is not None else PROCESSES_PER_CORE * cores()
    if world > limit:
        why = "--max-processes" if max_processes is not None else f"{PROCESSES_PER_CORE} per core, {cores()} cores"
        raise InputError(Problem("--max-processes" if max_processes is not None else "plan", "",
                                 f"the plan needs {world} processes (one per device and the origin); this machine hosts "
                                 f"at most {limit} ({why})"))
    need = world * (PROCESS_BASE_BYTES + 2.0 * model_bytes)
    free = available_memory_bytes()
    if free is not None and need > free:
        raise InputError(Problem("plan", "", f"{world} processes need about {need / 1e9:.1f} GB "
                                             f"({PROCESS_BASE_BYTES / 1e9:.1f} GB each plus twice the model's "
                                             f"{model_bytes / 1e9:.2f} GB); this machine has {free / 1e9:.1f} GB available"))
