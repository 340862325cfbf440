"""Online re-planning: unchanged when nothing is gained, valid after every change, migration bounded."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner import api  # noqa: F401  (registers local-search)
from planner.cost.validator import validate
from planner.domain.changes import changed_instance
from planner.domain.device import Device
from planner.domain.errors import InputError
from planner.domain.instance import Link
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
from planner.domain.units import GB
from planner.planners import local_search as lns
from planner.planners.migration import migration, weight_map
from planner.planners.replan import replan
from tests.helpers import FLEET, LINE, REPO, TINY, build


@pytest.fixture(scope="module")
def fleet():
    return build(FLEET)


@pytest.fixture(scope="module")
def deployed(fleet):
    """A plan that local moves no longer improve on ``fleet`` (route-aware + 300 moves)."""
    start = api.solve(fleet, "route-aware").solution
    return lns.improve(fleet, start, max_moves=300, seed=0).plan


def check(result, inst, budget=math.inf):
    assert result.status.value == "feasible", result.reason
    assert validate(inst, result.plan) == []
    assert result.migration_bytes <= budget
    assert result.migration_bytes == pytest.approx(sum(s.bytes for s in result.steps))
    assert math.isfinite(result.objective_after)


# ----- rules ------------------------------------------------------------------------------------

def test_unchanged_instance_gives_the_unchanged_plan(fleet, deployed):
    r = replan(deployed, fleet, max_moves=40)
    assert r.plan is deployed
    assert r.migration_bytes == 0 and r.steps == []
    assert r.reason.startswith("no change needed")
    assert r.objective_before == r.objective_after


def test_a_large_enough_threshold_always_keeps_a_valid_plan(fleet):
    poor = api.solve(fleet, "proportional").solution
    assert replan(poor, fleet, max_moves=20, threshold=100.0).plan is poor
    better = replan(poor, fleet, max_moves=20)
    assert better.plan is not poor and better.objective_after > 1.01 * better.objective_before


def test_a_valid_current_plan_beats_equally_cheap_candidates_within_the_threshold(fleet):
    """Other batching moves no weights: such a candidate migrates 0 bytes too, yet the current plan stays
    unless the candidate gains more than the threshold."""
    ra = api.solve(fleet, "route-aware").solution
    worse = replace(ra, pipelines=tuple(replace(p, micro_batch_size=1, num_micro_batches=1) for p in ra.pipelines))
    assert validate(fleet, worse) == []
    kept = replan(worse, fleet, max_moves=20, threshold=1e9)
    assert kept.plan is worse and kept.reason.startswith("no change needed")
    moved = replan(worse, fleet, max_moves=20, threshold=0.0)
    assert moved.plan is not worse and moved.objective_after > moved.objective_before
    assert any(c["migration_bytes"] == 0 and c["name"] != "current" for c in moved.candidates)


def test_bandwidth_drop_gives_a_valid_plan_within_budget(fleet, deployed):
    slow = changed_instance(fleet, bandwidth_factor=0.25)
    for budget in (0.0, 5e6, None):
        r = replan(deployed, slow, migration_budget_bytes=budget, max_moves=40)
        check(r, slow, math.inf if budget is None else budget)
        assert r.objective_before == pytest.approx(slow_objective(slow, deployed))


def slow_objective(inst, plan):
    from planner.cost.costmodel import CostModel

    return CostModel(inst).evaluate(plan).objective(inst.objective)


def test_bandwidth_drop_on_mixtral_stays_within_the_instance_budget():
    inst = api.load_instance(REPO / "instances" / "default.toml")
    inst = replace(inst, constraints=replace(inst.constraints, migration_budget_bytes=10 * GB))
    current = api.solve(inst, "route-aware").solution
    slow = changed_instance(inst, bandwidth_factor=0.25)
    r = replan(current, slow)
    check(r, slow, 10 * GB)
    assert r.solve_time_s < 5


@pytest.mark.parametrize("lost", ["edge", "gpu", "gpu2"])
def test_lost_device_gives_a_valid_plan_without_it(fleet, deployed, lost):
    start = api.solve(fleet, "proportional").solution  # uses all four devices
    for current in (deployed, start):
        new = changed_instance(fleet, drop_device=lost)
        assert lost not in new.device_index
        r = replan(current, new, max_moves=30)
        check(r, new)
        assert lost not in r.plan.devices
        if lost in current.devices:
            assert math.isnan(r.objective_before)
            assert "invalid" in r.reason


def cluster_expert_on_t4():
    """The Mixtral cluster, route-aware's plan of the cluster without t4-0 with one placed expert moved
    to t4-0 by hand (so the plan depends on t4-0 through that expert only), and the cluster without
    t4-0: (instance, current plan, changed instance, expert)."""
    inst = api.load_instance(REPO / "instances" / "a100-l4-t4-cluster.toml")
    without = changed_instance(inst, drop_device="t4-0")
    ra = replace(api.solve(without, "route-aware").solution, instance=inst.name)
    pipe = ra.pipelines[0]
    first = next(e for e in pipe.expert_placement if len(e.devices) == 1)
    moved = tuple(ExpertPlacement(e.layer, e.expert, ("t4-0",), (1.0,)) if e is first else e for e in pipe.expert_placement)
    current = replace(ra, pipelines=(replace(pipe, expert_placement=moved),))
    return inst, current, without, first


def test_lost_expert_host_on_the_mixtral_cluster_is_repaired():
    inst, current, new, first = cluster_expert_on_t4()
    assert validate(inst, current) == []
    r = replan(current, new, migration_budget_bytes=2 * GB)
    check(r, new, 2 * GB)
    assert "t4-0" not in r.plan.devices
    # Every expert t4-0 held is rehosted from the model store, and only experts move.
    orphans = {(e.layer, e.expert) for e in current.pipelines[0].expert_placement if "t4-0" in e.devices}
    assert (first.layer, first.expert) in orphans
    assert orphans <= {(s.layer, s.expert) for s in r.steps if s.from_device is None}
    assert all(s.what == "expert" for s in r.steps)
    assert r.migration_bytes == pytest.approx(len(r.steps) * 3 * 4096 * 14336 * 2)


def test_route_aware_is_skipped_when_the_repairs_used_its_share_of_the_budget():
    _, current, new, _ = cluster_expert_on_t4()
    quick = replan(current, new, migration_budget_bytes=2 * GB, time_budget_s=0.0)
    check(quick, new, 2 * GB)
    assert "route-aware" not in {c["name"] for c in quick.candidates}
    # With a move count nothing depends on the clock: route-aware runs.
    full = replan(current, new, migration_budget_bytes=2 * GB, max_moves=0)
    assert "route-aware" in {c["name"] for c in full.candidates}
    # With no repair within the migration budget route-aware runs whatever the clock says.
    none = replan(current, new, migration_budget_bytes=0.0, time_budget_s=0.0)
    assert none.plan is None and "route-aware" in {c["name"] for c in none.candidates}


def test_device_added_is_used_when_it_pays(fleet, deployed):
    big = Device(name="gpu9", kind="gpu9", tier="cloud", memory_bytes=1e9, memory_bandwidth_bytes_per_s=3e12,
                 peak_flops_per_s={"fp16": 1e15}, power_w=700)
    new = changed_instance(fleet, add_device=(big, [Link("phone", "gpu9", 1e9 / 8, 0.002)]))
    r = replan(deployed, new, max_moves=30)
    check(r, new)
    assert r.objective_after >= r.objective_before
    assert "gpu9" in r.plan.devices  # a fast device on a fast link beats the small fleet


def test_load_spike_is_handled_by_clamping_the_batching_without_migration(fleet, deployed):
    pipe = deployed.pipelines[0]
    assert pipe.micro_batch_size * pipe.num_micro_batches > 2
    spike = changed_instance(fleet, arrival_rate_per_s=50, max_batch=2)
    r = replan(deployed, spike, migration_budget_bytes=0, max_moves=30)
    check(r, spike, 0)
    p = r.plan.pipelines[0]
    assert p.micro_batch_size * p.num_micro_batches <= 2
    assert math.isnan(r.objective_before)


def test_popularity_drift(fleet, deployed):
    m = fleet.model
    drift = np.ones((m.num_moe_layers, m.num_experts))
    drift[:, 0] = 50.0  # expert 0 becomes hot everywhere
    new = changed_instance(fleet, popularity=drift)
    assert np.allclose(new.workload.popularity.sum(axis=1), m.top_k)
    r = replan(deployed, new, max_moves=30)
    check(r, new)


# ----- migration --------------------------------------------------------------------------------

def test_migration_bytes_by_hand_on_tiny():
    """TINY: hidden 64, 4 heads x 16 (4 KV heads), vocab 100, 4 experts of 2 x 64 x 128, 2 bytes.

    * one expert: 2 * 64 * 128 = 16384 params = 32768 B;
    * the layer's non-expert block: attention q 64*64 + k,v 2*64*64 + o 64*64 = 16384, router 64*4 = 256:
      16640 params = 33280 B;
    * embedding and LM head: 100 * 64 = 6400 params = 12800 B each.

    Current: the layer on ``end``, expert 3 placed on ``cloud``.
    (a) experts 2 and 3 on ``cloud``: only expert 2 is new there: 32768 B, copied from ``end``.
    (b) the layer on ``cloud``, expert 0 on ``end``: ``cloud`` needs the non-expert block (33280),
        experts 1 and 2 (65536; it holds 3 already), embedding and head (25600); ``end`` already holds
        expert 0. Total 124416 B.
    """
    inst = build(TINY)
    cur = Plan((Pipeline((Stage("end", 0, 1),), expert_placement=(ExpertPlacement(0, 3, ("cloud",), (1.0,)),)),))
    a = Plan((Pipeline((Stage("end", 0, 1),), expert_placement=(
        ExpertPlacement(0, 2, ("cloud",), (1.0,)), ExpertPlacement(0, 3, ("cloud",), (1.0,)))),))
    b = Plan((Pipeline((Stage("cloud", 0, 1),), expert_placement=(ExpertPlacement(0, 0, ("end",), (1.0,)),)),))
    for plan in (cur, a, b):
        assert validate(inst, plan) == []
    total, steps = migration(cur, a, inst)
    assert total == 32768
    assert [(s.what, s.layer, s.expert, s.from_device, s.to_device, s.bytes) for s in steps] == [
        ("expert", 0, 2, "end", "cloud", 32768.0)]
    total, steps = migration(cur, b, inst)
    assert total == 33280 + 2 * 32768 + 2 * 12800 == 124416
    assert sorted((s.what, s.expert) for s in steps) == [("embedding", None), ("expert", 1), ("expert", 2), ("head", None), ("layer", None)]
    assert all(s.to_device == "cloud" and s.from_device == "end" for s in steps)
    assert migration(cur, cur, inst)[0] == 0
    # The memory map holds what the cost model counts.
    from planner.cost.costmodel import CostModel

    for plan in (cur, a, b):
        held = {}
        for (dev, _), (_, size) in weight_map(plan, inst).items():
            held[dev] = held.get(dev, 0.0) + size
        mem = CostModel(inst).memory_bytes(plan)
        workspace_and_kv = {d: mem[d] - held.get(d, 0.0) for d in mem}
        stage = plan.pipelines[0].stages[0].device
        assert all(v == pytest.approx(0.0, abs=1e-6) for d, v in workspace_and_kv.items() if d != stage)


def test_codec_matrices_count_on_both_sides_of_the_cut():
    """LINE, hidden 256, 2 bytes: a rank-64 codec adds 256 * 64 * 2 = 32768 B on each side."""
    inst = build(LINE)
    plain = Plan((Pipeline((Stage("phone", 0, 2), Stage("gpu", 2, 4)), (None,)),))
    coded = Plan((Pipeline((Stage("phone", 0, 2), Stage("gpu", 2, 4)), (64,)),))
    total, steps = migration(plain, coded, inst)
    assert total == 2 * 32768
    assert [(s.what, s.layer, s.rank, s.to_device, s.from_device) for s in steps] == [
        ("codec-decoder", 2, 64, "gpu", None), ("codec-encoder", 2, 64, "phone", None)]


# ----- budgets ----------------------------------------------------------------------------------

def test_zero_budget_keeps_a_valid_current_plan(fleet):
    poor = api.solve(fleet, "proportional").solution
    slow = changed_instance(fleet, bandwidth_factor=0.25)
    r = replan(poor, slow, migration_budget_bytes=0, max_moves=30)
    check(r, slow, 0)
    assert r.migration_bytes == 0


def test_zero_budget_with_an_invalid_current_plan_is_infeasible_with_a_reason(fleet):
    # One pipeline (replicas would survive a lost device by dropping a pipeline, moving nothing).
    deployed = lns.improve(fleet, api.solve(fleet, "route-aware", replicas=False).solution, max_moves=300, seed=0).plan
    assert len(deployed.pipelines) == 1
    lost = sorted(d for d in deployed.devices if d != "phone")[0]
    new = changed_instance(fleet, drop_device=lost)
    r = replan(deployed, new, migration_budget_bytes=0, max_moves=20)
    assert r.status.value == "infeasible" and r.plan is None
    assert "migration budget" in r.reason and "GB" in r.reason and lost in r.reason
    assert any(not c["within_budget"] for c in r.candidates)
    # The instance's own budget applies when the argument is absent.
    inst = replace(new, constraints=replace(new.constraints, migration_budget_bytes=0.0))
    assert replan(deployed, inst, max_moves=20).status.value == "infeasible"


def test_a_fleet_too_small_for_the_model_is_infeasible():
    inst = api.load_instance(REPO / "instances" / "default.toml")
    current = api.solve(inst, "route-aware").solution
    r = replan(current, changed_instance(inst, drop_device="a100"))
    assert r.status.value == "infeasible" and r.plan is None
    assert "93.4 GB" in r.reason and "64.0 GB" in r.reason


# ----- errors and scenarios ---------------------------------------------------------------------

def test_a_plan_of_another_model_is_an_input_error(fleet):
    tiny_plan = Plan((Pipeline((Stage("phone", 0, 1),)),))
    with pytest.raises(InputError, match="cover 1 layers"):
        replan(tiny_plan, fleet)
    bad_expert = Plan((Pipeline((Stage("gpu", 0, 4),), expert_placement=(ExpertPlacement(1, 99, ("gpu2",), (1.0,)),)),))
    with pytest.raises(InputError, match="not a routed expert"):
        replan(bad_expert, fleet)
    with pytest.raises(ValueError, match="migration budget"):
        replan(api.solve(fleet, "route-aware").solution, fleet, migration_budget_bytes=-1)


def test_changed_instance_scenarios():
    line = build(LINE)
    one = changed_instance(line, bandwidth_factor=0.5, link=("edge", "phone"))
    bw = {frozenset((l.a, l.b)): l.bandwidth_bytes_per_s for l in one.links}
    assert bw[frozenset(("phone", "edge"))] == 100e6 / 8 / 2 and bw[frozenset(("edge", "gpu"))] == 10e9 / 8
    assert line.links[0].bandwidth_bytes_per_s == 100e6 / 8  # the original is untouched
    # Losing the middle of a line cuts the far end off too.
    assert [d.name for d in changed_instance(line, drop_device="edge").devices] == ["phone"]
    with pytest.raises(ValueError, match="origin"):
        changed_instance(line, drop_device="phone")
    with pytest.raises(ValueError, match="no link between"):
        changed_instance(line, bandwidth_factor=2, link=("phone", "gpu"))
    lonely = Device(name="x", kind="x", tier="edge", memory_bytes=1e9, memory_bandwidth_bytes_per_s=1e11,
                    peak_flops_per_s={"fp16": 1e13}, power_w=50)
    with pytest.raises(ValueError, match="no link"):
        changed_instance(line, add_device=lonely)
    added = changed_instance(line, add_device=lonely, link=Link("x", "gpu", 1e9, 0.001))
    assert "x" in added.device_index and len(added.links) == len(line.links) + 1
    with pytest.raises(ValueError, match="shape"):
        changed_instance(line, popularity=np.ones((2, 2)))
    assert changed_instance(line, arrival_rate_per_s=9, max_batch=3).workload.max_batch == 3


# ----- property: every heuristic plan is valid --------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    mbps=st.lists(st.floats(2, 2000), min_size=5, max_size=5),
    memories=st.lists(st.floats(0.004, 0.06), min_size=4, max_size=4),
    zipf=st.floats(0.0, 2.0),
    pop_seed=st.integers(0, 1000),
    max_batch=st.integers(1, 16),
    factor=st.sampled_from([0.1, 0.25, 1.0, 4.0]),
    lose=st.sampled_from([None, "edge", "gpu", "gpu2"]),
)
def test_random_small_instances_give_valid_plans(mbps, memories, zipf, pop_seed, max_batch, factor, lose):
    data = copy.deepcopy(FLEET)
    for dev, mem in zip(data["devices"], memories):
        dev["memory_gb"] = mem
    for link, v in zip(data["links"], mbps):
        link.pop("bandwidth_gbps", None)
        link["bandwidth_mbps"] = v
    data["workload"] = dict(data["workload"], max_batch=max_batch,
                            popularity={"kind": "zipf", "zipf_exponent": zipf, "seed": pop_seed})
    inst = build(data)
    ra = api.solve(inst, "route-aware")
    if ra.solution is None:
        return
    assert validate(inst, ra.solution) == []
    ls = api.solve(inst, "local-search", initial_solution=ra.solution, max_moves=15, seed=pop_seed)
    assert ls.status.value == "feasible" and validate(inst, ls.solution) == []
    assert ls.objective >= ra.objective * (1 - 1e-12)
    new = changed_instance(inst, bandwidth_factor=factor, drop_device=lose)
    for current in (ra.solution, ls.solution):
        r = replan(current, new, max_moves=8, seed=pop_seed)
        if r.plan is None:
            assert r.status.value == "infeasible" and r.reason.startswith("infeasible")
            continue
        assert validate(new, r.plan) == []
        assert lose is None or lose not in r.plan.devices
        assert r.migration_bytes == pytest.approx(sum(s.bytes for s in r.steps))
