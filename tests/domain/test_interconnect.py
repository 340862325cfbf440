"""A device group's interconnect (and a ``[[links]]`` entry between two groups) is one object, not a
link per pair: it answers the same link for every pair as the pair-by-pair listing did, routes and
plans are the same, and a fleet of 1,000 devices holds O(N) Link objects."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from planner import api
from planner.bench.scale import scale_data, scale_instance
from planner.cost.costmodel import CostModel
from planner.cost.network import Network
from planner.domain.changes import changed_instance, without_link
from planner.domain.errors import InputError
from planner.domain.instance import Link, instance_from_dict
from planner.planners.dp import _solve_grid
from planner.spaces.chain import default_path, trim_path
from tests.helpers import load

GROUPS = {
    "name": "groups", "objective": "throughput", "model": {"catalog": "olmoe-1b-7b"},
    "devices": [{"name": "orin", "catalog": "jetson-agx-orin-64gb"},
                {"name": "l40s", "catalog": "l40s", "count": 3, "interconnect_gb_per_s": 32, "interconnect_rtt_ms": 0.02},
                {"name": "h100", "catalog": "h100-sxm", "count": 5, "interconnect_gb_per_s": 450}],
    "links": [{"a": "orin", "b": "l40s", "bandwidth_mbps": 1000, "rtt_ms": 5},
              {"a": "l40s", "b": "h100", "bandwidth_gbps": 10, "rtt_ms": 15}],
    "workload": {"origin": "orin", "arrival_rate_per_s": 1.0, "prompt_tokens": 128, "output_tokens": 32, "max_batch": 8},
}


def hops(net, a, b):
    """The route from ``a`` to ``b`` as (from, to, ends, bytes/s, RTT s) per hop (a Link's a/b order aside)."""
    return [(u, v, {l.a, l.b}, l.bandwidth_bytes_per_s, l.rtt_s) for u, v, l in net.route(a, b)]


def pairwise(instance):
    """``instance`` as the loader used to give it: every pair of every interconnect a Link of its own."""
    return replace(instance, links=tuple(instance.all_links()), interconnects=())


def test_every_member_pair_gets_the_link_it_had():
    inst = instance_from_dict(GROUPS)
    l40s = [f"l40s-{k}" for k in range(3)]
    h100 = [f"h100-{k}" for k in range(5)]
    expected = {}
    for a, b in itertools.combinations(l40s, 2):
        expected[a, b] = (32e9, 0.02e-3)
    for a, b in itertools.combinations(h100, 2):
        expected[a, b] = (450e9, 0.01e-3)  # the default interconnect RTT
    for a, b in itertools.product(l40s, h100):
        expected[a, b] = (10e9 / 8, 15e-3)
    for b in l40s:
        expected["orin", b] = (1000e6 / 8, 5e-3)
    for (a, b), (bw, rtt) in expected.items():
        for x, y in ((a, b), (b, a)):
            link = inst.link(x, y)
            assert (link.bandwidth_bytes_per_s, link.rtt_s) == pytest.approx((bw, rtt), rel=1e-12), (x, y)
            assert {link.a, link.b} == {x, y}
    assert inst.link("orin", "h100-0") is None and inst.link("h100-0", "h100-0") is None
    assert inst.num_links == len(expected) == len(list(inst.all_links()))
    assert len(inst.links) == 3  # orin to each L40S; the meshes and the group-to-group entry are one object each
    assert {frozenset((l.a, l.b)) for l in inst.all_links()} == {frozenset(p) for p in expected}


def test_routes_and_plans_match_the_pairwise_listing():
    inst = instance_from_dict(GROUPS)
    old = pairwise(inst)
    new_net, old_net = Network(inst), Network(old)
    names = [d.name for d in inst.devices]
    for a, b in itertools.permutations(names, 2):
        assert new_net.route_terms(a, b) == old_net.route_terms(a, b), (a, b)
        assert hops(new_net, a, b) == hops(old_net, a, b), (a, b)
    for solver in ("route-aware", "dp"):
        got, want = api.solve(inst, solver), api.solve(old, solver)
        assert got.objective == want.objective
        assert got.solution.pipelines == want.solution.pipelines


@pytest.mark.parametrize("name", ["a100-l4-t4-cluster.toml", "deepseek-v3-mixed-cloud.toml"])
def test_shipped_groups_route_as_before(name):
    inst = load(name)
    new_net, old_net = Network(inst), Network(pairwise(inst))
    names = [d.name for d in inst.devices]
    for a, b in itertools.permutations(names, 2):
        assert new_net.route_terms(a, b) == old_net.route_terms(a, b), (a, b)


def test_a_thousand_devices_hold_linear_many_link_objects():
    inst = scale_instance("olmoe-1b-7b", 1000)
    edge, cloud = 200, 799
    assert len(inst.devices) == 1000
    assert len(inst.links) == edge + cloud  # the origin's links to each member of both groups
    assert len(inst.interconnects) == 3      # two meshes and the L40S <-> H100 entry
    assert inst.num_links == edge + cloud + edge * (edge - 1) // 2 + cloud * (cloud - 1) // 2 + edge * cloud
    assert len(set(inst.component_of.values())) == 1
    assert inst.link("h100-17", "h100-798") is not None and inst.link("l40s-3", "h100-5").rtt_s == pytest.approx(15e-3)
    assert api.capacity_check(inst) is None or isinstance(api.capacity_check(inst), str)


def test_a_disconnected_group_is_still_reported():
    data = dict(GROUPS, links=[{"a": "orin", "b": "l40s", "bandwidth_mbps": 1000, "rtt_ms": 5}])
    with pytest.raises(InputError, match="the fleet is not connected: 2 separate groups"):
        instance_from_dict(data)


def test_twins_trim_the_dp_path_without_changing_its_optimum():
    inst = scale_instance("olmoe-1b-7b", 60)   # 16 layers; 12 L40S and 47 H100, each group twins
    full = default_path(inst)
    trimmed = trim_path(inst, full)
    assert len(trimmed) == 1 + 12 + 16
    cm = CostModel(inst)
    best_full = max(v for v, _, _ in _solve_grid(inst, cm, full, "throughput", None, len(full))[0])
    best_trim = max(v for v, _, _ in _solve_grid(inst, cm, trimmed, "throughput", None, len(full))[0])
    assert best_trim == pytest.approx(best_full, rel=1e-12)


def test_a_member_named_by_a_link_is_nobody_s_twin():
    data = scale_data("olmoe-1b-7b", 30)
    data["links"].append({"a": "orin", "b": "h100-3", "bandwidth_mbps": 500, "rtt_ms": 9})
    inst = instance_from_dict(data)
    assert "h100-3" not in inst.twins and "h100-4" in inst.twins and "orin" not in inst.twins


def test_changes_keep_interconnects_compact():
    inst = instance_from_dict(GROUPS)
    lost = changed_instance(inst, drop_device="h100-2")
    assert lost.link("h100-1", "h100-2") is None and lost.link("h100-1", "h100-3").bandwidth_bytes_per_s == 450e9
    assert "h100-2" not in {n for ic in lost.interconnects for n in ic.members}
    slower = changed_instance(inst, bandwidth_factor=0.5, link=("h100-0", "h100-1"))
    assert slower.link("h100-0", "h100-1").bandwidth_bytes_per_s == 225e9
    assert slower.link("h100-0", "h100-2").bandwidth_bytes_per_s == 450e9
    every = changed_instance(inst, bandwidth_factor=0.5)
    assert every.link("l40s-0", "h100-4").bandwidth_bytes_per_s == pytest.approx(10e9 / 16)
    gone = without_link(inst, "h100-0", "h100-1")
    assert gone.link("h100-0", "h100-1") is None and gone.link("h100-0", "h100-2") is not None
    assert gone.num_links == inst.num_links - 1
    replaced = changed_instance(inst, link=Link("h100-0", "h100-1", 1e9, 1e-3))
    assert replaced.link("h100-1", "h100-0").bandwidth_bytes_per_s == 1e9
