"""The EdgeShard baseline: its DP equals brute force under its own pricing and routing, the origin named
when it cannot hold a shard."""

from __future__ import annotations

import itertools

import pytest

from planner import api
from planner.cost.costmodel import CostModel
from planner.planners.edgeshard import capability_order, shard_dp, uniform_instance
from planner.spaces.batching import batch_grid
from planner.spaces.chain import chain_terms
from solvers.result import Status
from tests.helpers import LINE, build, mesh_links


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
