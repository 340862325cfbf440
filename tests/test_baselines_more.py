"""Baselines ``edgeshard`` and ``eplb``: a valid plan or an explained infeasibility on every instance,
determinism, EdgeShard's DP against brute force under its own (uniform-routing) pricing, and EPLB's
placement carried into the plan as EPLB makes it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from models.assignment import ReplicatedAssignment
from planner import api
from planner.cli.main import main
from planner.cost.costmodel import CostModel
from planner.cost.validator import evaluate_checked, validate
from planner.solve.edgeshard import capability_order, shard_dp, uniform_instance
from planner.spaces.batching import batch_grid
from planner.spaces.chain import chain_terms
from solvers.eplb import eplb_rebalance
from solvers.placement import balancedness, solve_eplb
from solvers.registry import get
from solvers.result import Status
from tests.conftest import LINE, build

REPO = Path(__file__).resolve().parents[1]
INSTANCES = sorted((REPO / "instances").glob("*.toml"))
SOLVERS = ("edgeshard", "eplb")


def mesh_links(names, **link):
    return [{"a": a, "b": b, **link} for a, b in itertools.combinations(names, 2)]


# ----- every instance ----------------------------------------------------------------------------

@pytest.mark.parametrize("path", INSTANCES, ids=[p.stem for p in INSTANCES])
@pytest.mark.parametrize("solver", SOLVERS)
def test_valid_plan_or_explained_infeasibility_and_the_same_plan_twice(solver, path):
    inst = api.load_instance(path)
    cm = CostModel(inst)
    func = get(solver, problem="instance").func
    first = func(inst, cost_model=cm)
    if first.solution is None:
        assert first.status is Status.INFEASIBLE
        assert first.message.startswith("infeasible: ") and "GB" in first.message
    else:
        assert first.status is Status.FEASIBLE
        ev, broken = evaluate_checked(inst, first.solution, cm)
        assert broken == []
        assert first.objective == pytest.approx(ev.objective(inst.objective))
        pipe = first.solution.pipelines[0]
        assert len(first.solution.pipelines) == 1 and pipe.codec_ranks == ()
        if solver == "edgeshard":
            assert pipe.stages[0].device == inst.workload.origin and pipe.expert_placement == ()
    second = func(inst, cost_model=cm)
    assert (second.status, second.message, second.solution) == (first.status, first.message, first.solution)


def test_compare_lists_both(capsys):
    code = main(["compare", str(REPO / "instances" / "default.toml"), "--solvers", "edgeshard,eplb", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [r["solver"] for r in out["results"]] == ["edgeshard", "eplb"]


# ----- edgeshard: the DP is exact for its own model ------------------------------------------------

def figures(terms, shards):
    """(bottleneck, latency) of ``shards`` summed layer by layer (independently of the DP's prefix sums)."""
    busy = [terms.entry_busy[shards[0][0]], terms.exit_busy[shards[-1][0]]]
    latency = terms.entry_latency[shards[0][0]] + terms.exit_latency[shards[-1][0]]
    for (d, a, b), nxt in itertools.zip_longest(shards, shards[1:]):
        busy.append(sum(terms.busy[d, l] for l in range(a, b)))
        latency += sum(terms.latency[d, l] for l in range(a, b))
        if nxt is not None:
            busy.append(terms.cut_busy[d, nxt[0]])
            latency += terms.cut_latency[d, nxt[0]]
    return max(busy), latency


def brute_force(terms, objective, ordered):
    """Least (B, R) (throughput) or R (latency) over every device sequence starting at device 0 (each device
    at most once; increasing indices if ``ordered``) and every contiguous split that fits memory."""
    D, L = terms.busy.shape
    options = []
    for r in range(min(D, L)):
        for rest in itertools.permutations(range(1, D), r):
            if ordered and list(rest) != sorted(rest):
                continue
            seq = (0, *rest)
            for cuts in itertools.combinations(range(1, L), len(seq) - 1):
                bounds = (0, *cuts, L)
                shards = [(d, bounds[i], bounds[i + 1]) for i, d in enumerate(seq)]
                if all(sum(terms.memory[d, a:b]) <= terms.capacity[d] for d, a, b in shards):
                    options.append(figures(terms, shards))
    if not options:
        return None
    if objective == "latency":
        return min(r for _, r in options)
    least = min(b for b, _ in options)
    return least, min(r for b, r in options if b <= least * (1 + 1e-12))


def small(num_layers, memory_gb, links, objective="throughput", devices=3):
    names = ["phone", "edge", "gpu", "gpu2"][:devices]
    base = LINE["devices"] + [dict(LINE["devices"][2], name="gpu2", peak_tflops={"fp16": 150})]
    return build(LINE, name="small", objective=objective, model={**LINE["model"], "num_layers": num_layers},
                 devices=[dict(d, memory_gb=g) for d, g in zip(base[:devices], memory_gb)],
                 links=links(names), workload={**LINE["workload"], "max_batch": 4})


# A layer with all its experts is about 6.7 MB: 0.016 GB holds two.
CASES = {
    "mesh-3x4": lambda obj: small(4, [0.016, 0.016, 0.016], lambda n: mesh_links(n, bandwidth_gbps=1, rtt_ms=0.5), obj),
    "line-3x5": lambda obj: small(5, [0.01, 0.03, 0.03], lambda n: [
        {"a": "phone", "b": "edge", "bandwidth_mbps": 200, "rtt_ms": 2},
        {"a": "edge", "b": "gpu", "bandwidth_gbps": 10, "rtt_ms": 5}], obj),
    "mesh-2x3": lambda obj: small(3, [0.012, 1.0], lambda n: mesh_links(n, bandwidth_mbps=100, rtt_ms=5), obj, 2),
    "mesh-4x5": lambda obj: small(5, [0.009, 0.016, 0.023, 0.02], lambda n: mesh_links(n, bandwidth_gbps=2, rtt_ms=1),
                                  obj, 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("objective", ["throughput", "latency"])
@pytest.mark.parametrize("ordered", [False, True])
def test_the_dp_equals_brute_force_under_its_own_pricing(case, objective, ordered):
    inst = CASES[case](objective)
    priced = CostModel(uniform_instance(inst))
    devices = capability_order(inst, priced) if ordered else [d.name for d in inst.devices]
    for b, m in batch_grid(inst.workload.max_batch, len(devices)):
        terms = chain_terms(priced, devices, b, m, both_directions=not ordered)
        opt = shard_dp(terms, objective, ordered)
        want = brute_force(terms, objective, ordered)
        if want is None:
            assert opt is None
            continue
        got = figures(terms, opt.shards)
        assert (opt.bottleneck_s, opt.latency_s) == pytest.approx(got, rel=1e-12)
        if objective == "latency":
            assert got[1] == pytest.approx(want, rel=1e-9)
        else:
            assert got == pytest.approx(want, rel=1e-9)


def test_edgeshard_prices_layers_as_if_routing_were_uniform():
    """The shards do not depend on the measured popularity (only the final evaluation does)."""
    kw = dict(links=mesh_links(["phone", "edge", "gpu"], bandwidth_gbps=1, rtt_ms=0.5),
              devices=[dict(d, memory_gb=0.016) for d in LINE["devices"]])
    skewed = build(LINE, workload={**LINE["workload"], "popularity": {"kind": "zipf", "zipf_exponent": 3.0}}, **kw)
    uniform = build(LINE, **kw)
    a, b = api.solve(skewed, "edgeshard"), api.solve(uniform, "edgeshard")
    assert a.solution.pipelines[0].stages == b.solution.pipelines[0].stages
    assert a.extra["dp_bottleneck_s"] == b.extra["dp_bottleneck_s"]


def test_edgeshard_names_the_origin_when_it_cannot_hold_the_first_shard():
    inst = small(4, [0.002, 1.0, 1.0], lambda n: mesh_links(n, bandwidth_gbps=1, rtt_ms=0.5))
    res = api.solve(inst, "edgeshard")
    assert res.status is Status.INFEASIBLE and "origin 'phone'" in res.message and "GB" in res.message


# ----- eplb: EPLB's placement, memory, coverage ----------------------------------------------------

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
