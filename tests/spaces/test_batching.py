"""The batching ceiling (planner.spaces.batching.throughput_ceiling): no batching of a structure beats it."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner import api
from planner.cost.costmodel import CostModel
from planner.cost.validator import limit_violations, structure_violations
from planner.domain.plan import Plan
from planner.planners.route_aware import _expert_groups, _pipeline_candidate
from planner.spaces.batching import throughput_ceiling
from planner.spaces.expert_parallel import expert_parallel_pipeline
from tests.helpers import load
from tests.planners.test_plan_space_properties import build, fleet_dict


def _every_batching(inst, cm, plan):
    """Throughput of every valid batching (b, m), b * m <= max_batch, of the one-pipeline plan."""
    pipe = plan.pipelines[0]
    B = inst.workload.max_batch
    out = []
    for b in range(1, B + 1):
        for m in range(1, B // b + 1):
            ev = cm.evaluate(replace(plan, pipelines=(replace(pipe, micro_batch_size=b, num_micro_batches=m),)))
            if not limit_violations(inst, ev):
                out.append(ev.throughput_tokens_per_s)
    return out


def _structures(inst, cm):
    plans = []
    solved = api.solve(inst, "route-aware")
    if solved.solution is not None and len(solved.solution.pipelines) == 1:
        plans.append(solved.solution)
    B = inst.workload.max_batch
    piped = _pipeline_candidate(inst, cm, max(1, B // 2), 2 if B >= 2 else 1, float("inf"))
    if piped is not None:
        plans.append(piped[1])
    for group in _expert_groups(inst)[:1]:
        pipe, _, _ = expert_parallel_pipeline(inst, cm, group, placement="greedy-placement")
        if pipe is not None:
            plans.append(Plan((pipe,), inst.name, "test"))
    return [p for p in plans if not structure_violations(inst, p)]


@pytest.mark.parametrize("name", ["default.toml", "mixtral-orin-edge-cloud.toml", "a100-l4-t4-cluster.toml",
                                  "qwen3-phone-h100-5g.toml", "olmoe-rpi-laptop-l4-cloud.toml"])
def test_no_batching_beats_the_ceiling_on_shipped_structures(name):
    inst = load(name)
    if inst.objective != "throughput":
        pytest.skip("throughput only")
    cm = CostModel(inst)
    checked = 0
    for plan in _structures(inst, cm):
        ceiling = throughput_ceiling(inst, cm, plan)
        values = _every_batching(inst, cm, plan)
        assert all(v <= ceiling * (1 + 1e-9) for v in values), (max(values), ceiling)
        checked += bool(values)
    assert checked


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6))
def test_no_batching_beats_the_ceiling_on_random_fleets(seed):
    inst = build(fleet_dict(seed, "throughput"))
    cm = CostModel(inst)
    for plan in _structures(inst, cm):
        ceiling = throughput_ceiling(inst, cm, plan)
        assert all(v <= ceiling * (1 + 1e-9) for v in _every_batching(inst, cm, plan))


def test_the_ceiling_can_be_reached():
    """Not a loose number: on the default instance the best batching comes within 10 % of it."""
    inst = load("default.toml")
    cm = CostModel(inst)
    plan = api.solve(inst, "route-aware").solution
    assert max(_every_batching(inst, cm, plan)) >= 0.9 * throughput_ceiling(inst, cm, plan)
