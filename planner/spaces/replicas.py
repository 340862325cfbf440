"""Several pipelines: copies of a one-pipeline plan on disjoint devices of the same hardware, and
request shares that load each pipeline in proportion to what it serves alone.

A copy maps every device of a pipeline (its stages and the devices holding its placed experts) to
an unused device with the same hardware signature, memory and power (the cost model's time tables
and the memory check are then the same), taking devices in fleet order; the origin is never
copied (requests enter there once). :func:`fill_with_replicas` starts from the plans it is given,
best first, copies the best one while devices last, then the next best on what is left, and
returns the multi-pipeline plan (or None when no copy fits): the cost model then prices links the
pipelines share (an origin's uplink, say) for all of them together.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from itertools import chain

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better
from planner.cost.validator import evaluate_checked
from planner.domain.instance import Instance
from planner.domain.memo import IdentityMemo
from planner.domain.plan import ExpertPlacement, GroupGate, Pipeline, Plan, Stage


def _signature(cm: CostModel, name: str) -> tuple:
    d = cm.devices[name]
    return cm.times.hardware_of(name), d.memory_bytes, d.power_w, d.idle_power_w


def device_kinds(cm: CostModel, names) -> dict[tuple, list[str]]:
    """``names`` grouped by hardware signature, memory and power (twins a copy may swap), each group in
    the order given."""
    kinds: dict[tuple, list[str]] = {}
    for x in names:
        kinds.setdefault(_signature(cm, x), []).append(x)
    return kinds


def pipeline_devices(pipe: Pipeline) -> list[str]:
    """The devices a pipeline uses: its stages, then the devices holding its placed experts (first use order)."""
    # An insertion-ordered dict, remembered per (stages, placement): expert-parallel pipelines place
    # experts on hundreds of devices, in 15,000 entries.
    return list(_PIPELINE_DEVICES.get((pipe.stages, pipe.expert_placement), lambda: tuple(dict.fromkeys(
        chain(pipe.devices, chain.from_iterable(e.devices for e in pipe.expert_placement))))))


_PIPELINE_DEVICES = IdentityMemo(64)


def renamed(pipe: Pipeline, mapping: dict[str, str]) -> Pipeline:
    """``pipe`` with every device renamed by ``mapping``."""
    return replace(
        pipe,
        stages=tuple(Stage(mapping[s.device], s.first_layer, s.end_layer) for s in pipe.stages),
        expert_placement=tuple(ExpertPlacement(e.layer, e.expert, tuple(mapping[d] for d in e.devices), e.shares)
                               for e in pipe.expert_placement),
        group_gate=tuple(GroupGate(mapping[g.device], g.layers) for g in pipe.group_gate))


def copy_on(cm: CostModel, pipe: Pipeline, free: list[str]) -> dict[str, str] | None:
    """A device mapping that puts a copy of ``pipe`` on devices of ``free`` (fleet order), or None."""
    origin = cm.instance.workload.origin
    # Free devices by signature, in fleet order (O(1) per pick, not a scan).
    left = {key: deque(names) for key, names in device_kinds(cm, free).items()}
    mapping = {}
    for d in pipeline_devices(pipe):
        if d == origin:
            return None
        twins = left.get(_signature(cm, d))
        if not twins:
            return None
        mapping[d] = twins.popleft()
    return mapping


def fill_with_replicas(instance: Instance, cm: CostModel, plans: list[Plan], *, max_pipelines: int = 64) -> Plan | None:
    """The plan of several pipelines that copies ``plans`` (one-pipeline plans, best first) over the
    fleet's free devices, request shares in proportion to each pipeline's requests/s alone; None when
    not even one copy fits. Every pipeline keeps its own batching."""
    if instance.objective == "latency" or not plans:
        return None
    used: set[str] = set()
    pipes: list[Pipeline] = []
    rates: list[float] = []
    for plan in plans:
        base = plan.pipelines[0]
        if set(pipeline_devices(base)) & used:
            continue
        ev, bad = evaluate_checked(instance, plan, cm)
        if bad:
            continue
        pipes.append(base)
        rates.append(ev.requests_per_s)
        used.update(pipeline_devices(base))
        while len(pipes) < max_pipelines:
            mapping = copy_on(cm, base, [d.name for d in instance.devices if d.name not in used])
            if mapping is None:
                break
            pipes.append(renamed(base, mapping))
            rates.append(ev.requests_per_s)
            used.update(mapping.values())
        if len(pipes) >= max_pipelines:
            break
    if len(pipes) < 2:
        return None
    out = with_request_shares(instance, pipes, rates, plans[0].solver)
    if out is None:
        return None
    ev, bad = evaluate_checked(instance, out, cm)
    return None if bad else out


def with_request_shares(instance: Instance, pipes: list[Pipeline], rates: list[float], solver: str) -> Plan | None:
    """The plan of ``pipes`` with request shares in proportion to ``rates`` (what each serves alone,
    requests/s), or None when they serve nothing."""
    total = sum(rates)
    if total <= 0:
        return None
    return Plan(tuple(replace(p, request_share=r / total) for p, r in zip(pipes, rates, strict=True)), instance.name, solver)


def better_of(instance: Instance, cm: CostModel, a: Plan | None, b: Plan | None) -> Plan | None:
    """The better valid plan of the two (``a`` on ties), by the cost model."""
    if a is None or b is None:
        return a or b
    ea, eb = cm.evaluate(a).objective(instance.objective), cm.evaluate(b).objective(instance.objective)
    return b if is_better(instance.objective, eb, ea) else a
