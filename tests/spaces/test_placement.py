"""Expert placement of an instance as a problem: well formed, speeds from the roofline, default devices, traffic, restrictions."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.costmodel import CostModel
from planner.spaces.placement import (
    candidate_mask,
    layer_problems,
    lower_bound,
    placement_problem,
    representative_expert_time_s,
    reserved_bytes,
)
from solvers.registry import get
from tests.helpers import ALL5


def test_problem_is_well_formed(cluster):
    inst = cluster
    m, cm = inst.model, CostModel(inst)
    p, names = placement_problem(inst, devices=ALL5)
    assert names == ALL5 and p.names["bins"] == ALL5
    G, I, B = p.shape
    assert (G, I, B) == (m.num_moe_layers, m.num_experts, 5) == (32, 8, 5)
    assert p.names["groups"] == m.moe_layers
    # load: expected tokens per decode step; each layer's tokens pick top_k experts
    np.testing.assert_allclose(p.load.sum(axis=1), m.top_k * inst.workload.max_batch)
    np.testing.assert_allclose(p.load, cm.q * inst.workload.max_batch)
    # weight: one expert's bytes everywhere; capacity: memory less the reserve, in (0, memory)
    np.testing.assert_allclose(p.weight, cm.expert_bytes)
    memory = np.array([inst.device(n).memory_bytes for n in names])
    np.testing.assert_allclose(p.capacity, memory - reserved_bytes(cm, names, inst.workload.max_batch))
    assert np.all(p.capacity > 0) and np.all(p.capacity < memory)
    # the sharded rule spreads the non-expert weights and the KV cache over the devices by memory
    reserve = reserved_bytes(cm, names, inst.workload.max_batch)
    replicated = reserved_bytes(cm, names, inst.workload.max_batch, "replicated")
    assert np.all(replicated > reserve)
    np.testing.assert_allclose(np.diff((replicated - reserve) / (1 - memory / memory.sum())), 0.0, atol=1.0)
    # slots: the memory share of one layer, rounded up; enough for every expert of a layer
    np.testing.assert_array_equal(p.slots, np.minimum(I, np.ceil(p.capacity / (G * cm.expert_bytes))))
    assert p.slots.sum() >= I and np.all(p.max_replicas == 2)
    assert np.all(p.mask) and p.traffic_weight == 0.0


def test_speeds_follow_bandwidth_when_memory_bound_and_flops_when_compute_bound(cluster):
    inst = cluster
    cm = CostModel(inst)
    db = inst.model.dtype_bytes
    # max_batch 32, top-2 of 8: 8 tokens per expert, memory-bound: speed ~ effective bandwidth
    p, names = placement_problem(inst, devices=ALL5)
    assert p.speed.max() == 1.0 and p.speed[0] == 1.0
    bandwidth = np.array([inst.device(n).effective_bytes_per_s(cm.expert_bytes) for n in names])
    np.testing.assert_allclose(p.speed, bandwidth / bandwidth.max(), rtol=1e-9)
    assert p.speed[3] > p.speed[1]                     # a T4 reads memory faster than an L4
    # 100k tokens per step: compute-bound, speed ~ effective FLOP/s (now the L4 beats the T4)
    q, _ = placement_problem(inst, devices=ALL5, tokens=100_000)
    flops = np.array([inst.device(n).effective_flops_per_s(1e12, db) for n in names])
    np.testing.assert_allclose(q.speed, flops / flops.max(), rtol=1e-9)
    assert q.speed[1] > q.speed[3]
    t = [representative_expert_time_s(cm, n, 100_000) for n in names]
    np.testing.assert_allclose(q.speed, min(t) / np.array(t))


def test_default_devices_are_the_cloud_tier(cluster, deepseek):
    assert placement_problem(cluster)[1] == ["a100"]
    p, names = placement_problem(deepseek)
    assert p.shape == (58, 256, 32) and len(names) == 32
    assert p.speed[names.index("h100-0")] == 1.0 and p.speed[names.index("l40s-0")] < 0.5
    with pytest.raises(ValueError, match="unknown device"):
        placement_problem(cluster, devices=["a100", "nope"])
    assert placement_problem(cluster, devices=ALL5, layers=3)[0].shape == (3, 8, 5)


def test_traffic_is_optional_and_zero_at_the_origin(cluster):
    p, names = placement_problem(cluster, devices=ALL5, traffic_weight=0.5, traffic_origin="a100")
    assert p.traffic_weight == 0.5
    assert np.all(p.traffic[:, :, 0] == 0) and np.all(p.traffic[:, :, 1:] > 0)


def test_candidate_mask_and_layer_problems(cluster):
    p, _ = placement_problem(cluster, devices=ALL5)
    ref = get("greedy-placement", problem="assignment").func(p).solution
    mask = candidate_mask(p, ref, 2, free_items=1, hot_bins=0, random_candidates=0)
    assert np.all(mask[ref.replicas])                               # the reference stays feasible
    heaviest = p.load.argmax(axis=1)
    assert np.all(mask[np.arange(p.shape[0]), heaviest].sum(axis=1) >= 2)
    subs = layer_problems(p, ref)
    assert len(subs) == p.shape[0] and all(s.shape == (1, 8, 5) for s in subs)
    np.testing.assert_allclose(sum(s.capacity for s in subs), p.capacity)  # memory shared out exactly
    assert sum(lower_bound(s) for s in subs) == pytest.approx(lower_bound(p))
