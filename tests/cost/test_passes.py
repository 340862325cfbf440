"""One pass priced at once (PassExperts) against its steps, the round-trip floor, the call probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.costmodel import CostModel
from planner.cost.passes import remote_call_probabilities, remote_call_probability, round_trip_floor
from planner.planners.route_aware import _expert_groups
from planner.spaces.expert_parallel import expert_parallel_pipeline
from tests.helpers import assert_steps_add_up, load


@pytest.fixture(scope="module")
def ep_pipeline():
    """Mixtral's experts spread over an A100, two L4 and two T4 (the speed-aware placement)."""
    inst = load("a100-l4-t4-cluster.toml")
    cm = CostModel(inst)
    pipe, why, _ = expert_parallel_pipeline(inst, cm, _expert_groups(inst)[0], placement="greedy-placement")
    assert pipe is not None, why
    assert len({d for e in pipe.expert_placement for d in e.devices}) >= 3
    return inst, cm, pipe


@pytest.mark.parametrize("prefill", [False, True])
def test_an_expert_parallel_pass_priced_at_once_adds_up_its_steps(ep_pipeline, prefill):
    """Every moved layer at once (arrays [layers, devices]) gives what the steps, one layer at a time, add up to."""
    _, cm, pipe = ep_pipeline
    tokens, context = (cm.prompt, cm.prompt / 2.0) if prefill else (16.0, cm.decode_context)
    assert_steps_add_up(cm, pipe, tokens, context, prefill)


@pytest.mark.parametrize("weighted", [True, False])
def test_the_round_trip_floor_bounds_every_pass(ep_pipeline, weighted):
    inst, _, pipe = ep_pipeline
    cm = CostModel(inst, weighted_remote_calls=weighted)
    floor = round_trip_floor(cm, pipe, 1.0)
    assert floor > 0
    for tokens in (1.0, 2.0, 8.0, 64.0):
        assert round_trip_floor(cm, pipe, tokens) >= floor * (1 - 1e-12)  # calls grow with the tokens
        assert cm.pass_cost(pipe, tokens, cm.decode_context, False).latency_s >= round_trip_floor(cm, pipe, tokens)


def test_no_placement_has_no_floor():
    inst = load("default.toml")
    cm = CostModel(inst)
    from planner import api
    plan = api.solve(inst, "dp").solution
    assert round_trip_floor(cm, plan.pipelines[0], 1.0) == 0.0


def test_call_probabilities_at_once_are_the_scalar_ones():
    rng = np.random.default_rng(0)
    for top_k, experts in ((1, 8), (2, 8), (8, 256), (6, 64)):
        mass = np.concatenate([[0.0, top_k], rng.uniform(0, top_k, 20)])
        for tokens in (0.0, 1.0, 3.0, 512.0):
            many = remote_call_probabilities(mass, tokens, top_k, experts)
            one = [remote_call_probability(x, tokens, top_k, experts) for x in mass]
            assert many.tolist() == pytest.approx(one, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", ["a100-l4-t4-cluster.toml", "mixtral-orin-edge-cloud.toml", "deepseek-v3-mixed-cloud.toml"])
@pytest.mark.parametrize("weighted", [True, False])
def test_the_floor_from_a_layouts_arrays_is_the_pipelines(name, weighted):
    """layout_round_trip_floor (Step 7's screen, before the entries exist) equals round_trip_floor
    of the pipeline built from the same layout."""
    from planner.spaces.expert_parallel import layout_round_trip_floor

    inst = load(name)
    cm = CostModel(inst, weighted_remote_calls=weighted)
    for group in _expert_groups(inst):
        seen = []
        pipe, _, _ = expert_parallel_pipeline(inst, cm, group, placement="greedy-placement",
                                              screen=lambda *layout, seen=seen: seen.append(layout))
        if pipe is None:
            continue
        for tokens in (1.0, 8.0):
            assert layout_round_trip_floor(inst, cm, group, *seen[0], tokens=tokens) == pytest.approx(
                round_trip_floor(cm, pipe, tokens), rel=1e-12, abs=1e-15)
