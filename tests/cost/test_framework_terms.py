"""The terms that hold the cost model to what the runtime measures: the framework's fixed cost per
layer and pass from a profile that carries it (none from one that does not: old profiles give the
old predictions), and remote-expert round trips weighted by the probability that a pass calls them."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path

import pytest

from planner import api
from planner.cost.costmodel import CostModel
from planner.cost.passes import remote_call_probability
from planner.domain.plan import ExpertPlacement, Pipeline, Plan, Stage
from planner.domain.profile import FrameworkOverhead, HardwareProfile
from tests.helpers import REPO, TINY, build, synthetic_profile

XEON = REPO / "instances" / "profiles" / "xeon-2core-torch-1thread.json"
PLANS = REPO / "instances" / "runtime-plans"


# ----- remote round trips ------------------------------------------------------------------------

def brute_force_call_probability(experts: int, top_k: int, remote: set[int], tokens: int) -> float:
    """Uniform routing: every token picks one of the C(E, k) expert sets with equal probability."""
    sets = list(itertools.combinations(range(experts), top_k))
    miss = sum(1 for s in sets if not remote & set(s)) / len(sets)
    # Enumerate the tokens' choices too (tiny case): P(at least one token hits a remote expert).
    hit = sum(1 for choice in itertools.product(sets, repeat=tokens) if any(remote & set(s) for s in choice))
    assert hit / len(sets) ** tokens == pytest.approx(1.0 - miss ** tokens)
    return hit / len(sets) ** tokens


@pytest.mark.parametrize("experts, top_k, remote, tokens",
                         [(4, 2, {0}, 1), (4, 2, {0}, 3), (4, 2, {0, 1}, 2), (5, 2, {3}, 2), (6, 3, {0, 5}, 2), (4, 1, {2}, 3)])
def test_call_probability_matches_brute_force_under_uniform_routing(experts, top_k, remote, tokens):
    mass = len(remote) * top_k / experts  # each expert is picked with q = k / E per token
    assert remote_call_probability(mass, tokens, top_k, experts) == pytest.approx(
        brute_force_call_probability(experts, top_k, remote, tokens), rel=1e-12)


def test_call_probability_is_zero_without_remote_routing_and_tends_to_one():
    assert remote_call_probability(0.0, 8, 2, 8) == 0.0
    assert remote_call_probability(0.0, 1e6, 2, 8) == 0.0
    assert remote_call_probability(0.01, 1e5, 2, 8) == pytest.approx(1.0, abs=1e-9)
    ps = [remote_call_probability(0.05, n, 2, 8) for n in (1, 2, 4, 16, 64, 256)]
    assert all(a < b for a, b in zip(ps, ps[1:])) and ps[-1] > 0.99
    # At least the device's share of the routing: one slot in k lands there on average.
    assert remote_call_probability(0.5, 1, 2, 8) >= 0.25
    assert remote_call_probability(2.0, 1, 2, 8) == 1.0  # the device serves every slot


def test_remote_round_trip_is_weighted_by_its_call_probability():
    """TINY (4 experts, top-1, q = 1/4, 10 ms RTT end<->cloud): expert 0 on the cloud is called by a
    decode step of b tokens with probability 1 - (3/4)^b; the step's latency over the all-local plan
    grows by that times the RTT, plus the (expected) bytes and the cloud's expert time."""
    inst = build(TINY)
    cm = CostModel(inst)
    for b in (1, 4, 32):
        base = Plan((Pipeline((Stage("end", 0, 1),), micro_batch_size=b),))
        moved = Plan((Pipeline((Stage("end", 0, 1),), micro_batch_size=b,
                               expert_placement=(ExpertPlacement(0, 0, ("cloud",), (1.0,)),)),))
        extra = cm.evaluate(moved).tpot_s - cm.evaluate(base).tpot_s
        p = 1.0 - 0.75 ** b
        sent = 2 * 0.25 * b * 128 / 1e6  # expected bytes there and back over 1e6 B/s
        assert p * 10e-3 < extra < p * 10e-3 + sent + 1e-4
        # The simulator's steps carry the same weighted delay.
        steps_latency = sum(s.latency_s for s in cm.pass_steps(moved.pipelines[0], float(b), cm.decode_context, False))
        assert steps_latency == pytest.approx(cm.evaluate(moved).tpot_s, rel=1e-9)


# ----- the framework overhead --------------------------------------------------------------------

def _with_framework(profile: HardwareProfile, layer_s: float, call_s: float, pass_s: float) -> HardwareProfile:
    fw = FrameworkOverhead(library="test", model="test", layer_s=layer_s, layer_s_per_flop=0.0, expert_call_s=call_s,
                           expert_s_per_flop=0.0, pass_s=pass_s, samples=[])
    return dataclasses.replace(profile, framework=fw)


def _instance_with(profile: HardwareProfile):
    inst = build(TINY)
    devices = tuple(d.renamed(d.name, profile=profile) for d in inst.devices)
    return dataclasses.replace(inst, devices=devices)


def test_framework_term_adds_per_layer_and_per_pass_overhead():
    plain = synthetic_profile()
    layered = _with_framework(plain, 4e-4, 2e-4, 3e-4)
    plan = Plan((Pipeline((Stage("end", 0, 1),)),))
    t0 = CostModel(_instance_with(plain)).evaluate(plan)
    t1 = CostModel(_instance_with(layered)).evaluate(plan)
    # One stage of one layer: + 0.4 ms for the layer, + 0.3 ms for the pass, in decode and prefill.
    assert t1.tpot_s - t0.tpot_s == pytest.approx(7e-4, rel=1e-9)
    assert t1.ttft_s - t0.ttft_s == pytest.approx(7e-4, rel=1e-9)
    # A remote holder pays its call overhead as often as it is called (p = 1/4 for one token).
    moved = Plan((Pipeline((Stage("end", 0, 1),), expert_placement=(ExpertPlacement(0, 0, ("cloud",), (1.0,)),)),))
    busy0 = CostModel(_instance_with(plain)).evaluate(moved).pipelines[0].decode_busy_s["cloud"]
    busy1 = CostModel(_instance_with(layered)).evaluate(moved).pipelines[0].decode_busy_s["cloud"]
    assert busy1 - busy0 == pytest.approx(0.25 * 2e-4, rel=1e-9)


def test_framework_field_round_trips_and_old_profiles_load_without_it(tmp_path):
    old = HardwareProfile.load(XEON)
    assert old.framework is None and "framework" not in old.to_dict()
    new = _with_framework(old, 4e-4, 2e-4, 3e-4)
    path = tmp_path / "p.json"
    new.save(path)
    assert HardwareProfile.load(path) == new


def _loopback(tmp_path: Path, profile: Path) -> Path:
    """instances/runtime-loopback.toml with every device's profile replaced by ``profile``."""
    text = (REPO / "instances" / "runtime-loopback.toml").read_text()
    text = re.sub(r'profile = "[^"]+"', f'profile = "{profile}"', text)
    text = text.replace('file = "data/', f'file = "{REPO / "instances" / "data"}/').replace(
        'accuracy_table = "data/', f'accuracy_table = "{REPO / "instances" / "data"}/')
    path = tmp_path / "loopback.toml"
    path.write_text(text)
    return path


# The cost model before the framework term and the weighted round trips, on the profile without the
# field (git af1ae2e): tpot_s, ttft_s, tokens/s. The plans without remote experts must not move.
OLD = {
    "phone-cloud": (0.051211772836487215, 0.05719998544379705, 155.08072728637498),
    "phone-cloud-codec32": (0.050599866507733876, 0.0522903499902746, 157.77374391936692),
    "phone-edge-cloud": (0.04537561283648721, 0.05251070544379703, 174.59031679922154),
}


def test_a_profile_without_the_field_gives_the_old_predictions(tmp_path):
    inst = api.load_instance(_loopback(tmp_path, XEON))
    for name, (tpot, ttft, tps) in OLD.items():
        ev = api.evaluate(inst, Plan.load(PLANS / f"{name}.json"))
        assert (ev.tpot_s, ev.ttft_s, ev.throughput_tokens_per_s) == pytest.approx((tpot, ttft, tps), rel=1e-12)
    # With remote experts only the round trips' weights change: cheaper than the old every-step charge.
    ev = api.evaluate(inst, Plan.load(PLANS / "phone-edge-remote-experts.json"))
    assert ev.tpot_s < 0.05471215999797081 and not math.isnan(ev.tpot_s)
