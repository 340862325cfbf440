"""Cost model against figures computed by hand in each test's docstring."""

from __future__ import annotations

import math

import pytest

from planner import api
from planner.cost.costmodel import CostModel
from planner.cost.passes import TOKEN_ID_BYTES
from planner.cost.validator import validate
from planner.domain.plan import ExpertPlacement, GroupGate, Pipeline, Plan, Stage
from tests.helpers import TINY, build, load


def one_stage(device, layers=1, b=1, m=1, **kw):
    return Plan((Pipeline((Stage(device, 0, layers),), micro_batch_size=b, num_micro_batches=m, **kw),))


def test_decode_step_on_the_origin_is_bytes_over_bandwidth(tiny):
    """Tiny model (h=64, 4 heads x 16, 4 experts of 2x64x128, top-1, vocab 100, 2-byte weights) on
    the origin, memory-bound at 1 GB/s, batch 1, mean decode context 10 + 4/2 = 12:

    non-expert weights (4 x 64 x 64 attention + 64 x 4 router) x 2 B = 33,280 B
    KV read: 2 x 4 x 16 x 2 B x 12 tokens                              =  3,072 B
    experts: each picked with q = 1/4, so 4 x 1/4 x 2 x 64 x 128 x 2 B = 32,768 B
    embedding row 64 x 2 B = 128 B; LM head 100 x 64 x 2 B            = 12,800 B
    total 82,048 B at 1e9 B/s = 82.048 us; no network on the way.
    """
    ev = CostModel(tiny).evaluate(one_stage("end"))
    assert ev.tpot_s == pytest.approx(82_048e-9, rel=1e-12)


def test_efficiency_scales_memory_bound_time():
    """Halving bandwidth efficiency doubles a memory-bound decode step."""
    devices = [dict(d) for d in TINY["devices"]]
    devices[0]["bandwidth_efficiency"] = 0.5
    inst = build(TINY, devices=devices)
    assert CostModel(inst).evaluate(one_stage("end")).tpot_s == pytest.approx(2 * 82_048e-9)


def test_cloud_only_adds_the_token_round_trip(tiny):
    """On the cloud device (10 GB/s) the step is 82,048 B / 1e10 = 8.2048 us, plus the token id sent
    up and the sampled token sent back over the 8 Mbit/s (1e6 B/s), 10 ms RTT link:
    2 x (5 ms + 4 B / 1e6 B/s) = 10.008 ms."""
    ev = CostModel(tiny).evaluate(one_stage("cloud"))
    assert ev.tpot_s == pytest.approx(82_048e-10 + 2 * (5e-3 + TOKEN_ID_BYTES / 1e6), rel=1e-12)


def test_codec_rank_shrinks_the_bytes_at_the_cut(line):
    """At a cut the hidden state (256 x 2 B = 512 B per token) is sent; a rank-16 codec sends 32 B."""
    cm = CostModel(line)
    stages = (Stage("phone", 0, 1), Stage("edge", 1, 4))
    plain = cm.evaluate(Plan((Pipeline(stages),)))
    coded = cm.evaluate(Plan((Pipeline(stages, codec_ranks=(16,)),)))
    link = "edge<->phone"
    # Per output token: hidden state (or code) up + token id up to the first stage (phone is origin: none) + token back.
    assert plain.bytes_per_token[link] == pytest.approx(512 + TOKEN_ID_BYTES)
    assert coded.bytes_per_token[link] == pytest.approx(32 + TOKEN_ID_BYTES)
    assert coded.accuracy_loss == pytest.approx(0.02)


def test_multi_hop_route_sums_hops(line):
    """phone -> gpu crosses phone-edge (100 Mbit/s = 12.5e6 B/s, 5 ms RTT) and edge-gpu (10 Gbit/s =
    1.25e9 B/s, 20 ms RTT): 1 MB takes 2.5 ms + 1e6/12.5e6 + 10 ms + 1e6/1.25e9 = 92.5008 ms."""
    cm = CostModel(line)
    assert [(u, v) for u, v, _ in cm.network.route("phone", "gpu")] == [("phone", "edge"), ("edge", "gpu")]
    assert cm.network.transfer(None, "phone", "gpu", 1e6) == pytest.approx(2.5e-3 + 0.08 + 10e-3 + 0.8e-3)


def test_memory_of_a_single_stage(tiny):
    """Weights 33,280 (non-expert) + 4 x 32,768 (experts) + 12,800 (embedding) + 12,800 (LM head)
    + KV for 1 sequence of 14 tokens x 256 B = 3,584 + prefill workspace 10 x 2 x (2x64 + 2x128) = 7,680."""
    mem = CostModel(tiny).memory_bytes(one_stage("end"))
    assert mem == {"end": pytest.approx(33_280 + 131_072 + 12_800 + 12_800 + 3_584 + 7_680)}


def test_remote_expert_costs_a_round_trip_and_moves_its_memory(tiny):
    """Moving expert 0 to the cloud: its 32,768 B leave the end device's memory, and its tokens
    (q = 1/4 of a token, 64 x 2 B each way) cross the link and back: a decode step of 1 token
    (top-1) calls the cloud with probability 1/4, so latency grows by at least a quarter of the
    10 ms RTT (the round trip weighted by the probability that a token routes remote)."""
    cm = CostModel(tiny)
    base = one_stage("end")
    moved = Plan((Pipeline((Stage("end", 0, 1),), expert_placement=(ExpertPlacement(0, 0, ("cloud",), (1.0,)),)),))
    ev0, ev1 = cm.evaluate(base), cm.evaluate(moved)
    assert ev1.memory_bytes["end"] == pytest.approx(ev0.memory_bytes["end"] - 32_768)
    assert ev1.memory_bytes["cloud"] == pytest.approx(32_768)
    assert ev0.tpot_s + 0.25 * 10e-3 < ev1.tpot_s < ev0.tpot_s + 0.25 * 10e-3 + 1e-3
    assert ev1.bytes_per_token["cloud<->end"] == pytest.approx(2 * 0.25 * 128)


def test_throughput_is_limited_by_the_busiest_resource_or_the_loop(line):
    """Requests/s = min(1 / max busy time per request, sequences in flight / request latency)."""
    cm = CostModel(line)
    plan = Plan((Pipeline((Stage("gpu", 0, 4),), micro_batch_size=4, num_micro_batches=2),))
    ev = cm.evaluate(plan)
    pm = ev.pipelines[0]
    per_request = {k: pm.prefill_busy_s.get(k, 0) + 15 * pm.decode_busy_s.get(k, 0) / 4
                   for k in set(pm.prefill_busy_s) | set(pm.decode_busy_s)}
    expected = min(1 / max(per_request.values()), 8 / pm.latency_s)
    assert ev.requests_per_s == pytest.approx(expected)
    assert ev.throughput_tokens_per_s == pytest.approx(16 * expected)
    assert pm.latency_s == pytest.approx(pm.ttft_s + 15 * pm.tpot_s)


def test_energy_per_token_counts_idle_and_busy_power(tiny):
    """J/token = (idle W / req/s + (power - idle) W x busy s per request) / output tokens."""
    ev = CostModel(tiny).evaluate(one_stage("end"))
    pm = ev.pipelines[0]
    busy = pm.prefill_busy_s["end"] + 3 * pm.decode_busy_s["end"]
    expected = (2 / ev.requests_per_s + 8 * busy) / 4
    assert ev.energy_j_per_token == pytest.approx(expected)


def test_two_pipelines_split_requests_by_share(line):
    """Two replicas with shares 0.5/0.5: the pair serves until the slower one saturates."""
    cm = CostModel(line)
    a = Pipeline((Stage("gpu", 0, 4),), request_share=0.5)
    b = Pipeline((Stage("edge", 0, 4),), request_share=0.5)
    ev = cm.evaluate(Plan((a, b)))
    ra, rb = (pm.requests_per_s for pm in ev.pipelines)
    assert ev.requests_per_s == pytest.approx(min(ra / 0.5, rb / 0.5))
    assert math.isfinite(ev.latency_s)


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


GATED_TINY = dict(TINY, constraints={"group_gate_coverage": [0.5], "group_gate_loss": [0.04], "accuracy_loss_budget": 0.05})


def test_a_group_gate_serves_every_token_from_the_local_subset():
    """Expert 0 dropped and layer 0 gated on the end device: the three local experts take every
    token (selection probability 1/4 / coverage 3/4 = 1/3 each), so a memory-bound decode step
    reads 3 x 1/3 x 32,768 B, as many bytes as the four experts did: the same 82.048 us, no round
    trip; expert 0's weights are held nowhere; the loss is the table's at coverage 0.75 (halfway
    from 0.04 at 0.5 to 0 at 1) over one MoE layer."""
    inst = build(GATED_TINY)
    cm = CostModel(inst)
    gated = Plan((Pipeline((Stage("end", 0, 1),), expert_placement=(ExpertPlacement(0, 0, (), ()),),
                           group_gate=(GroupGate("end"),)),))
    remote = Plan((Pipeline((Stage("end", 0, 1),), expert_placement=(ExpertPlacement(0, 0, ("cloud",), (1.0,)),)),))
    assert validate(inst, gated) == []
    ev, ev_remote = cm.evaluate(gated), cm.evaluate(remote)
    assert ev.tpot_s == pytest.approx(82_048e-9, rel=1e-12)
    assert ev_remote.tpot_s > ev.tpot_s + 0.25 * 10e-3  # the RTT weighted by its call probability, 1/4
    assert ev.memory_bytes == pytest.approx({"end": CostModel(inst).evaluate(one_stage("end")).memory_bytes["end"] - 32_768})
    assert ev.accuracy_loss == pytest.approx(0.02)
    assert ev.bytes_per_token == {}


def test_a_group_gate_without_a_loss_table_is_priced_as_unaffordable(tiny):
    gated = Plan((Pipeline((Stage("end", 0, 1),), expert_placement=(ExpertPlacement(0, 0, (), ()),),
                           group_gate=(GroupGate("end"),)),))
    assert math.isinf(CostModel(tiny).evaluate(gated).accuracy_loss)
    assert any(v.kind == "gate" for v in validate(tiny, gated))


def test_pipelines_that_cross_one_link_share_its_time():
    """Two replicas behind one slow uplink (origin -> hub at 10 kbit/s): each alone is limited by the
    token ids it sends over the uplink; together they split the link, so the pair serves as many
    requests as one, not twice as many."""
    data = dict(TINY, devices=[
        dict(TINY["devices"][0], name="o"),
        dict(TINY["devices"][1], name="hub", memory_gb=0.001),
        dict(TINY["devices"][1], name="g1"),
        dict(TINY["devices"][1], name="g2"),
    ], links=[{"a": "o", "b": "hub", "bandwidth_mbps": 0.01, "rtt_ms": 1},
              {"a": "hub", "b": "g1", "bandwidth_gbps": 100, "rtt_ms": 0.01},
              {"a": "hub", "b": "g2", "bandwidth_gbps": 100, "rtt_ms": 0.01}],
        workload=dict(TINY["workload"], origin="o"))
    inst = build(data)
    cm = CostModel(inst)
    one = cm.evaluate(Plan((Pipeline((Stage("g1", 0, 1),), micro_batch_size=4),)))
    assert one.bottleneck == "link hub<->o"
    pair = cm.evaluate(Plan((Pipeline((Stage("g1", 0, 1),), micro_batch_size=4, request_share=0.5),
                             Pipeline((Stage("g2", 0, 1),), micro_batch_size=4, request_share=0.5))))
    assert pair.requests_per_s == pytest.approx(one.requests_per_s, rel=1e-9)
    assert pair.bottleneck == "link hub<->o, shared by pipelines 0, 1"
