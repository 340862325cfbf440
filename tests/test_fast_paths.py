"""Route-aware's pipelines (Step 5), its time budget, and the cost model's shared caches: each
checked against the slower or independent computation it replaces."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from planner import api
from planner.cost import compute, network
from planner.cost.costmodel import CostModel
from planner.cost.validator import validate
from planner.domain.changes import changed_instance
from planner.solve.route_aware import route_aware
from solvers import dp

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    return api.load_instance(ROOT / "instances" / name)


def test_route_aware_plans_a_model_no_pair_of_devices_holds():
    """DeepSeek-V3 on 40 devices: no origin + partner pair holds it; Step 5's pipeline does."""
    inst = load("deepseek-v3-edge-cloud-40.toml")
    res = api.solve(inst, "route-aware")
    assert res.status.value == "feasible"
    assert len(res.solution.pipelines[0].stages) > 2
    assert validate(inst, res.solution) == []
    assert res.objective > api.solve(inst, "proportional").objective


def test_route_aware_uses_a_third_device_when_it_pays():
    """Mixtral on Orin + RTX 4090 + A100: the pipeline beats every one-partner split (dp's optimum)."""
    inst = load("mixtral-orin-edge-cloud.toml")
    ra = api.solve(inst, "route-aware")
    assert ra.objective >= api.solve(inst, "dp").objective * (1 - 1e-9)
    assert ra.objective > api.solve(inst, "single-cut").objective * 1.5


def test_route_aware_out_of_time_still_returns_its_first_plan():
    inst = load("a100-l4-t4-cluster.toml")
    quick = route_aware(inst, time_budget_s=1e-6)
    assert quick.solution is not None and validate(inst, quick.solution) == []
    assert quick.stop_reason.startswith("time budget")
    full = route_aware(inst)
    assert full.objective >= quick.objective * (1 - 1e-9)


@pytest.mark.parametrize("name", ["a100-l4-t4-cluster.toml", "deepseek-v3-mixed-cloud.toml", "mixtral-orin-edge-cloud.toml"])
def test_routes_are_shortest_paths(name):
    """The cost model's scipy routes have the length of networkx's Dijkstra paths (same weights)."""
    inst = load(name)
    cm = CostModel(inst)
    g = inst.graph()
    w = lambda u, v, d: d["link"].one_way_s + network._ROUTE_REFERENCE_BYTES / d["link"].bandwidth_bytes_per_s  # noqa: E731
    names = [d.name for d in inst.devices][:12]
    for a in names:
        lengths = nx.single_source_dijkstra_path_length(g, a, weight=w)
        for b in names:
            ours = sum(w(u, v, {"link": link}) for u, v, link in cm.network.route(a, b))
            assert ours == pytest.approx(lengths[b], rel=1e-12, abs=1e-15)


def test_shared_time_tables_give_the_figures_of_a_fresh_cost_model():
    inst = load("default.toml")
    plan = api.solve(inst, "route-aware").solution
    slow = changed_instance(inst, bandwidth_factor=0.25)
    CostModel(inst).evaluate(plan)           # fills the shared tables
    shared = CostModel(slow).evaluate(plan)  # reuses them
    compute._TABLES.clear()
    fresh = CostModel(slow).evaluate(plan)
    assert shared.metrics() == fresh.metrics()


def test_pass_cache_matches_uncached_passes_for_batching_variants():
    inst = load("a100-l4-t4-cluster.toml")
    plan = api.solve(inst, "route-aware").solution
    cm = CostModel(inst)
    from dataclasses import replace

    pipe = plan.pipelines[0]
    for b in (1, 4, pipe.micro_batch_size):
        variant = replace(pipe, micro_batch_size=b, num_micro_batches=1)
        cached = cm._pass_cached(variant, float(b), cm.decode_context, False)
        direct = CostModel(inst).pass_cost(variant, float(b), cm.decode_context, False)
        assert cached.latency_s == pytest.approx(direct.latency_s, rel=1e-12)
        assert cached.busy_s == pytest.approx(direct.busy_s, rel=1e-12)


def test_dp_stage_table_and_per_boundary_forward_agree(monkeypatch):
    from planner.spaces.chain import chain_problem, chain_terms, default_path

    inst = load("mixtral-orin-edge-cloud.toml")
    cm = CostModel(inst)
    problem = chain_problem(chain_terms(cm, default_path(inst), 8, 2), "throughput")
    at_once = dp.best_stages(problem, "bottleneck"), dp.best_stages(problem, "latency")
    monkeypatch.setattr(dp, "_STAGE_TABLE_MAX", 0)
    per_k = dp.best_stages(problem, "bottleneck"), dp.best_stages(problem, "latency")
    assert at_once == per_k
