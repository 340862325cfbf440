"""Expert placement built from an instance (planner.spaces.placement): the problem, heuristic and exact
solves, warm starts, time limits, restriction of large problems and infeasibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.assignment import objective_value, violations
from planner.cost.costmodel import CostModel
from planner.domain.instance import load_instance
from planner.solve.placement import solve_placement
from planner.spaces.placement import (
    candidate_mask,
    layer_problems,
    lower_bound,
    placement_problem,
    representative_expert_time_s,
    reserved_bytes,
)
from solvers.assignment import explain_infeasible
from solvers.registry import get
from solvers.result import Status
from tests.conftest import REPO

CLUSTER = REPO / "instances" / "a100-l4-t4-cluster.toml"     # Mixtral-8x7B: 32 MoE layers x 8 experts
DEEPSEEK = REPO / "instances" / "deepseek-v3-mixed-cloud.toml"
ALL5 = ["a100", "l4-0", "l4-1", "t4-0", "t4-1"]


@pytest.fixture(scope="module")
def cluster():
    return load_instance(CLUSTER)


@pytest.fixture(scope="module")
def deepseek():
    return load_instance(DEEPSEEK)


# ----- the problem -----------------------------------------------------------------------------


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


# ----- solving ---------------------------------------------------------------------------------


def test_heuristic_and_exact_solutions_have_no_violations(cluster):
    for name in ("greedy-placement", "local-search-placement"):
        r = solve_placement(cluster, name, devices=ALL5)
        assert r.status == Status.FEASIBLE
        assert not violations(r.extra["problem"], r.solution)
        assert r.objective >= r.extra["full_bound"] - 1e-9
    r = solve_placement(cluster, "milp", devices=ALL5, layers=4, time_limit=10)
    p = r.extra["problem"]
    assert r.status == Status.OPTIMAL and not r.extra["restricted"]
    assert not violations(p, r.solution)
    assert math.isclose(r.objective, objective_value(p, r.solution), rel_tol=1e-9)
    assert r.bound <= r.objective + 1e-6 and r.gap < 1e-6


@pytest.mark.parametrize("solver", ["milp", "cpsat"])
def test_warm_started_exact_is_never_worse_than_the_warm_start(cluster, solver):
    r = solve_placement(cluster, solver, devices=ALL5, time_limit=0.3, warm_start_solver="greedy-placement")
    assert r.solution is not None and not violations(r.extra["problem"], r.solution)
    assert r.extra["warm_start_solver"] == "greedy-placement"
    assert r.objective <= r.extra["warm_start_objective"] * (1 + 1e-12)


def test_time_limited_exact_on_a_medium_problem_has_a_finite_bound(cluster):
    # 32 x 8 x 5 = 1280 replica variables: HiGHS does not close it in a second
    r = solve_placement(cluster, "milp", devices=ALL5, time_limit=1.0, warm_start_solver="greedy-placement")
    assert r.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    assert math.isfinite(r.bound) and math.isfinite(r.objective)
    assert r.bound <= r.objective + 1e-9
    assert r.bound >= r.extra["full_bound"] - 1e-6      # HiGHS's bound is at least the simple one here
    assert not r.extra["restricted"]


def test_restricted_and_layered_solve_is_feasible_for_the_full_problem(cluster):
    r = solve_placement(cluster, "milp", devices=ALL5, time_limit=5, warm_start_solver="greedy-placement",
                        candidates=1, free_items=2, random_candidates=0)
    p = r.extra["problem"]
    assert r.extra["restricted"] and "restricted" in r.message and r.extra["candidate_triples"] < p.mask.size
    assert not violations(p, r.solution)
    assert r.objective <= r.extra["warm_start_objective"] * (1 + 1e-12)
    assert math.isfinite(r.bound) and r.bound <= r.objective + 1e-6
    assert r.extra["full_bound"] <= r.objective + 1e-9


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


def test_deepseek_v3_restricted_milp_returns_in_time(deepseek):
    r = solve_placement(deepseek, "milp", time_limit=2.0, warm_start_solver="greedy-placement")
    assert r.extra["restricted"] and r.extra["shape"] == (58, 256, 32)
    assert r.status in (Status.TIME_LIMIT, Status.OPTIMAL)
    assert r.objective <= r.extra["warm_start_objective"] * (1 + 1e-12)
    assert math.isfinite(r.bound) and r.extra["full_bound"] <= r.bound <= r.objective + 1e-6
    assert not violations(r.extra["problem"], r.solution)


# ----- infeasibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["greedy-placement", "milp"])
def test_too_little_memory_is_explained(cluster, solver):
    options = dict(devices=ALL5, headroom=0.5, slots=8)   # half of every device kept free: experts do not fit
    p, _ = placement_problem(cluster, **options)
    r = solve_placement(cluster, solver, **options)
    assert r.status == Status.INFEASIBLE and r.solution is None
    assert r.message == explain_infeasible(p)
    assert r.message.startswith("memory binds")


def test_too_little_memory_for_the_slots_too_is_explained(cluster):
    # slots follow memory: with 80 % of every device kept free a layer has 6 slots for its 8 experts
    p, _ = placement_problem(cluster, devices=ALL5, headroom=0.8)
    assert p.slots.sum() < p.shape[1]
    r = solve_placement(cluster, "milp", devices=ALL5, headroom=0.8)
    assert r.status == Status.INFEASIBLE
    assert r.message == explain_infeasible(p)
    assert r.message.startswith("slots and memory both bind")
