"""Baseline planners: what a user would do without moeplan. Registered as solvers on instances.

* ``cloud-only``: every layer on cloud devices (the fewest, largest ones that hold the model,
  layers split by memory); the end device only sends tokens and receives them.
* ``end-only``: every layer on the origin (end) device.
* ``single-cut``: the best single split point between the origin and one other device
  (Neurosurgeon-style): layers ``[0, k)`` on the origin, ``[k, L)`` on the partner, ``k`` and the
  partner chosen by the cost model's prediction of the instance objective.
* ``proportional``: all devices, ordered origin first, then end, edge and cloud devices by memory,
  layers split in proportion to device memory (as exo does).

Each keeps experts with their layer's stage and sends cuts uncompressed. Micro-batching is then
tuned on a small grid (``m`` in {1, stages}, ``b`` halved from ``max_batch // m``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from planner.cost.costmodel import CostModel
from planner.cost.evaluation import is_better
from planner.cost.validator import evaluate_checked
from planner.domain.instance import Instance
from planner.domain.plan import Plan
from planner.domain.units import GB
from planner.planners.outcome import baseline_result
from planner.spaces.batching import best_batching, pipeline_from_ranges, split_by_weights
from planner.spaces.infeasibility import explain_violations
from planner.spaces.twotier import partner_candidates
from solvers.registry import register
from solvers.result import Result


def _first_fit(instance: Instance, cm: CostModel, name: str, layouts: Iterable[tuple[list[str], list[tuple[int, int]]]]):
    """The best plan over ``layouts`` (device order, layer ranges); (plan, objective, violations)."""
    best, best_obj, last = None, None, []
    for devices, ranges in layouts:
        stages = pipeline_from_ranges(devices, ranges).stages
        plan, obj, viol = best_batching(instance, cm, stages, name)
        if plan is None:
            last = viol or last
            continue
        if best is None or is_better(instance.objective, obj, best_obj):
            best, best_obj = plan, obj
    return best, best_obj, last


@register("cloud-only", kind="baseline", problem="instance")
def cloud_only(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None, **_) -> Result:
    """Every layer on cloud devices; the end device sends tokens only."""
    t0 = time.perf_counter()
    cm = cost_model or CostModel(instance)
    cloud = sorted(instance.devices_of_tier("cloud"), key=lambda d: (-d.memory_bytes, d.name))
    if not cloud:
        return baseline_result("cloud-only", instance, None, None, t0, "infeasible: the fleet has no cloud device")
    last = []
    for k in range(1, len(cloud) + 1):
        group = cloud[:k]
        if sum(d.memory_bytes for d in group) < instance.model.total_params * instance.model.dtype_bytes:
            continue
        ranges = split_by_weights(instance.model.num_layers, [d.memory_bytes for d in group])
        plan, obj, last = _first_fit(instance, cm, "cloud-only", [([d.name for d in group], ranges)])
        if plan is not None:
            return baseline_result("cloud-only", instance, plan, obj, t0, "")
    need = instance.model.total_params * instance.model.dtype_bytes / GB
    have = sum(d.memory_bytes for d in cloud) / GB
    return baseline_result("cloud-only", instance, None, None, t0,
                           explain_violations(last, f"infeasible: the model's weights need {need:.1f} GB, "
                                                    f"the cloud devices have {have:.1f} GB"))


@register("end-only", kind="baseline", problem="instance")
def end_only(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None, **_) -> Result:
    """Every layer on the origin (end) device."""
    t0 = time.perf_counter()
    cm = cost_model or CostModel(instance)
    origin = instance.device(instance.workload.origin)
    plan, obj, last = _first_fit(instance, cm, "end-only", [([origin.name], [(0, instance.model.num_layers)])])
    need = instance.model.total_params * instance.model.dtype_bytes / GB
    why = explain_violations(last, f"infeasible: the model's weights need {need:.1f} GB, "
                                   f"origin {origin.name!r} has {origin.memory_bytes / GB:.1f} GB")
    return baseline_result("end-only", instance, plan, obj, t0, why)


@register("single-cut", kind="baseline", problem="instance")
def single_cut(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None, **_) -> Result:
    """Best single split between the origin device and one partner (Neurosurgeon-style)."""
    t0 = time.perf_counter()
    cm = cost_model or CostModel(instance)
    origin = instance.workload.origin
    L = instance.model.num_layers
    sense = instance.objective
    best, best_obj, last = None, None, []
    # Step 1: choose the cut with fixed batching (two stages in flight); Step 2: tune the batching.
    b0 = max(1, instance.workload.max_batch // 2)
    m0 = 2 if instance.workload.max_batch >= 2 else 1
    candidates = []
    for partner, _, _ in partner_candidates(instance, cm):
        for k in range(L + 1):
            ranges = [(0, k), (k, L)]
            pipe = pipeline_from_ranges([origin, partner], ranges, b0, m0)
            ev, violations = evaluate_checked(instance, Plan((pipe,), instance.name, "single-cut"), cm)
            if violations:
                small = Plan((pipeline_from_ranges([origin, partner], ranges, 1, 1),), instance.name, "single-cut")
                ev, small_violations = evaluate_checked(instance, small, cm)
                if small_violations:
                    last = violations
                    continue
            candidates.append((ev.objective(sense), pipe.stages))
    if candidates:
        candidates.sort(key=lambda c: -c[0] if sense == "throughput" else c[0])
        for _, stages in candidates[:3]:
            plan, obj, viol = best_batching(instance, cm, stages, "single-cut")
            if plan is not None and (best is None or is_better(sense, obj, best_obj)):
                best, best_obj = plan, obj
            last = viol or last
    return baseline_result("single-cut", instance, best, best_obj, t0,
                           explain_violations(last, f"infeasible: no split between {origin!r} and one other device fits"))


@register("proportional", kind="baseline", problem="instance")
def proportional(instance: Instance, *, time_limit=None, seed=0, cost_model: CostModel | None = None, **_) -> Result:
    """All devices, layers in proportion to memory (exo-style ring partitioning)."""
    t0 = time.perf_counter()
    cm = cost_model or CostModel(instance)
    origin = instance.workload.origin
    tier_rank = {"end": 0, "edge": 1, "cloud": 2}
    rest = sorted((d for d in instance.devices if d.name != origin), key=lambda d: (tier_rank[d.tier], -d.memory_bytes, d.name))
    order = [instance.device(origin)] + rest
    ranges = split_by_weights(instance.model.num_layers, [d.memory_bytes for d in order])
    plan, obj, last = _first_fit(instance, cm, "proportional", [([d.name for d in order], ranges)])
    return baseline_result("proportional", instance, plan, obj, t0,
                           explain_violations(last, "infeasible: splitting layers by memory over all devices breaks a limit"))


BASELINES: tuple[str, ...] = ("cloud-only", "end-only", "single-cut", "proportional")
