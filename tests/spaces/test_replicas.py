"""Several pipelines: request shares in proportion to what each serves alone, copies on twins."""

from __future__ import annotations

import copy

import pytest

from planner.cost.costmodel import CostModel
from planner.cost.validator import validate
from planner.domain.plan import Pipeline, Plan, Stage
from planner.spaces.replicas import device_kinds, fill_with_replicas, with_request_shares
from tests.helpers import FLEET, LINE, build


def test_request_shares_follow_the_rates_and_nothing_served_is_no_plan():
    inst = build(FLEET)
    pipes = [Pipeline((Stage("gpu", 0, 4),)), Pipeline((Stage("gpu2", 0, 4),))]
    plan = with_request_shares(inst, pipes, [3.0, 1.0], "x")
    assert [p.request_share for p in plan.pipelines] == pytest.approx([0.75, 0.25])
    assert plan.solver == "x" and plan.instance == inst.name
    assert with_request_shares(inst, pipes, [0.0, 0.0], "x") is None
    with pytest.raises(ValueError):
        with_request_shares(inst, pipes, [1.0], "x")


def twins():
    """LINE with two identical GPUs (one entry, ``count = 2``) behind the edge device."""
    data = copy.deepcopy(LINE)
    gpu = data["devices"].pop()
    data["devices"].append({**gpu, "name": "twin", "count": 2, "interconnect_gb_per_s": 100})
    data["links"] = [data["links"][0], *({**data["links"][1], "b": f"twin-{k}"} for k in range(2))]
    return build(data)


def test_device_kinds_group_twins_in_the_order_given():
    inst = twins()
    kinds = device_kinds(CostModel(inst), ["twin-1", "phone", "twin-0", "edge"])
    assert sorted(kinds.values()) == [["edge"], ["phone"], ["twin-1", "twin-0"]]


def test_copies_go_on_twins_and_the_plan_is_valid():
    inst = twins()
    cm = CostModel(inst)
    one = Plan((Pipeline((Stage("twin-0", 0, 4),)),), inst.name, "x")
    assert validate(inst, one, cm) == []
    filled = fill_with_replicas(inst, cm, [one])
    assert filled is not None and validate(inst, filled, cm) == []
    assert [p.stages[0].device for p in filled.pipelines] == ["twin-0", "twin-1"]
    assert [p.request_share for p in filled.pipelines] == pytest.approx([0.5, 0.5])
