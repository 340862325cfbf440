"""The two-tier space: its formulation prices every plan as the cost model does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.twotier import evaluate, violations
from planner.cost.costmodel import CostModel
from planner.spaces.twotier import instance_value, plan_from_solution, two_tier_problem
from tests.helpers import SMALL, all_solutions, build, small_instance


@pytest.mark.parametrize("objective", ["throughput", "latency", "energy"])
def test_formulation_equals_the_cost_model_on_every_plan(objective):
    """For every split, expert choice and codec option of a small instance, the two-tier equations
    give the same request period, latency, memory and energy as the cost model's evaluation of the plan
    when it charges a full round trip per layer with far experts; the cost model's default (the round
    trip weighted by its call probability) is never slower."""
    inst = small_instance(objective)
    cm = CostModel(inst, weighted_remote_calls=False)
    weighted = CostModel(inst)
    p = two_tier_problem(cm, "phone", "gpu", 2, 2)
    checked = 0
    for s in all_solutions(p):
        plan = plan_from_solution(inst, "phone", "gpu", 2, 2, s, "test")
        ev = cm.evaluate(plan)
        v = evaluate(p, s)
        assert weighted.evaluate(plan).latency_s <= ev.latency_s * (1 + 1e-12)
        assert v.request_latency == pytest.approx(ev.latency_s, rel=1e-9)
        assert 1.0 / v.period == pytest.approx(ev.requests_per_s, rel=1e-9)
        assert v.energy / inst.workload.output_tokens == pytest.approx(ev.energy_j_per_token, rel=1e-9)
        for side, dev in enumerate(("phone", "gpu")):
            assert v.memory[side] == pytest.approx(ev.memory_bytes.get(dev, 0.0), rel=1e-9, abs=1e-6)
        assert instance_value(inst, v.objective(objective)) == pytest.approx(ev.objective(objective), rel=1e-9)
        checked += 1
    assert checked > 100


def test_vectorised_evaluation_matches_the_reference():
    """evaluate_many == evaluate + violations on every solution of a small instance."""
    from models.twotier import evaluate_many

    for objective in ("throughput", "latency", "energy"):
        inst = build(SMALL, objective=objective, constraints={**SMALL["constraints"], "latency_slo_ms": 900})
        p = two_tier_problem(CostModel(inst), "phone", "gpu", 2, 1)
        sols = list(all_solutions(p))
        got = evaluate_many(p, np.array([s.near_layers for s in sols]), np.stack([s.near_items for s in sols]),
                            np.array([s.option for s in sols]))
        want = [math.inf if violations(p, s) else evaluate(p, s).objective(objective) for s in sols]
        assert np.allclose(got, want, rtol=1e-12, equal_nan=False)
        assert np.isinf(got).any() and np.isfinite(got).any()
