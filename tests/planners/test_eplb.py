"""The eplb baseline on instances: EPLB's placement on identical devices, the binding memory named."""

from __future__ import annotations

import numpy as np
import pytest

from models.assignment import ReplicatedAssignment
from planner import api
from planner.cost.costmodel import CostModel
from planner.cost.validator import validate
from solvers.eplb import eplb_rebalance
from solvers.placement import balancedness, solve_eplb
from solvers.result import Status
from tests.helpers import LINE, build, mesh_links

GPUS = [f"gpu{i}" for i in range(4)]


IDENTICAL = {**LINE, "name": "identical",
             "devices": [LINE["devices"][0]] + [dict(LINE["devices"][2], name=n) for n in GPUS],
             "links": mesh_links(["phone", *GPUS], bandwidth_gbps=10, rtt_ms=0.1),
             "workload": {**LINE["workload"], "popularity": {"kind": "zipf", "zipf_exponent": 1.2}}}


def hosts(inst, plan):
    """Per (MoE layer index g, expert): {device: share} as the plan runs it."""
    pipe = plan.pipelines[0]
    placed = {(e.layer, e.expert): dict(zip(e.devices, e.shares)) for e in pipe.expert_placement}
    return {(g, i): placed.get((layer, i), {pipe.stage_of_layer(layer).device: 1.0})
            for g, layer in enumerate(inst.model.moe_layers) for i in range(inst.model.num_experts)}


def test_eplb_on_identical_devices_is_eplbs_placement():
    inst = build(IDENTICAL)
    res = api.solve(inst, "eplb")
    assert res.status is Status.FEASIBLE and res.extra["expert_devices"] == GPUS
    slots, G, E = res.extra["slots_per_device"], inst.model.num_moe_layers, inst.model.num_experts
    assert slots == 3  # 8 experts on 4 devices, one redundant slot each
    q = CostModel(inst).q
    on = hosts(inst, res.solution)
    plan_loads = np.array([[sum(q[g, i] * on[g, i].get(d, 0.0) for i in range(E)) for d in GPUS] for g in range(G)])
    phy2log, _, logcnt = eplb_rebalance(q, 4 * slots, 4)
    eplb_loads = np.zeros((G, 4))
    for g in range(G):
        for p, i in enumerate(phy2log[g]):
            eplb_loads[g, p // slots] += q[g, i] / logcnt[g, i]
            assert GPUS[p // slots] in on[g, i]
    assert plan_loads == pytest.approx(eplb_loads, rel=1e-12)
    assert balancedness(plan_loads) == pytest.approx(balancedness(eplb_loads), rel=1e-12)
    assert res.extra["balancedness"] == pytest.approx(balancedness(eplb_loads), rel=1e-12)
    # Every (layer, expert) is served, its shares sum to 1, on EPLB's devices only.
    assert all(abs(sum(s.values()) - 1.0) < 1e-12 and set(s) <= set(GPUS) for s in on.values())
    assert len(on) == G * E
    eplb_alone = solve_eplb(ReplicatedAssignment.build(q, np.ones(4), slots=slots, max_replicas=4 * slots))
    replicas = eplb_alone.solution.replicas
    assert sum(len(s) for s in on.values()) == int(replicas.sum())
    # Memory is respected.
    ev = CostModel(inst).evaluate(res.solution)
    assert all(ev.memory_bytes[d] <= inst.device(d).memory_bytes for d in ev.memory_bytes)
    assert validate(inst, res.solution) == []


@pytest.mark.parametrize("memory_gb, binding", [(0.007, "expert slots"), (0.004, "weights need")])
def test_eplb_names_the_binding_memory(memory_gb, binding):
    inst = build(IDENTICAL, devices=[LINE["devices"][0]] + [dict(LINE["devices"][2], name=n, memory_gb=memory_gb)
                                                            for n in GPUS])
    res = api.solve(inst, "eplb")
    assert res.status is Status.INFEASIBLE
    assert binding in res.message and "gpu" in res.message and "GB" in res.message


def test_eplb_needs_an_edge_or_cloud_device():
    inst = build(IDENTICAL, devices=[dict(d, tier="end") for d in IDENTICAL["devices"]])
    res = api.solve(inst, "eplb")
    assert res.status is Status.INFEASIBLE and "no edge or cloud device" in res.message
