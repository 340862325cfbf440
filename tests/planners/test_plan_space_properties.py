"""Properties of every registered instance solver on random multi-device fleets (issue 10).

(a) every plan any solver returns passes ``validate``; (b) no solver's objective beats the
plan-space bound (:func:`planner.spaces.bounds.plan_space_bound`); (c) on nested fleets (F, and F
plus 1-3 devices each linked to one device of the fleet, so routes between F's devices stay as they
are and every plan of F is a plan of F' at the same price) route-aware does not lose more than 1 %.

Instances: 3-6 synthetic devices of mixed tiers (the origin an end device), tree-shaped or meshier
links, small models (1-4 layers, up to 8 experts), so that one example solves in about a second.
Hypothesis runs derandomized: the same examples on every run and every machine.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner import api
from planner.domain.instance import instance_from_dict
from planner.spaces.bounds import plan_space_bound
from solvers import registry
from solvers.result import Status

TIERS = ("end", "edge", "cloud")
EXACT_TIME_LIMIT_S = 0.3  # milp and cpsat: their plans are checked, not their optimality
REL_TOL = 1e-9
RA_TIME_LIMIT_S = 30.0


def _device(rng, name: str, tier: str) -> dict:
    return {"name": name, "tier": tier, "memory_gb": float(rng.uniform(0.003, 0.03)),
            "memory_bandwidth_gb_per_s": float(rng.uniform(20, 2000)), "power_w": float(rng.uniform(5, 400)),
            "peak_tflops": {"fp16": float(rng.uniform(1, 300))}}


def _link(rng, a: str, b: str) -> dict:
    return {"a": a, "b": b, "bandwidth_mbps": float(rng.uniform(10, 10000)), "rtt_ms": float(rng.uniform(0.5, 50))}


def fleet_dict(seed: int, objective: str | None = None) -> dict:
    """A random instance as a dict: 3-6 devices (d0 the origin, an end device), a small MoE model."""
    rng = np.random.default_rng(seed)
    experts = int(rng.choice([2, 4, 8]))
    hidden = int(rng.choice([64, 128, 256]))
    model = {"name": f"prop-{seed}", "num_layers": int(rng.integers(1, 5)), "hidden_size": hidden,
             "num_attention_heads": 4, "num_kv_heads": int(rng.choice([1, 4])), "head_dim": hidden // 4,
             "vocab_size": int(rng.integers(100, 1000)), "num_experts": experts,
             "top_k": int(rng.integers(1, min(2, experts) + 1)), "expert_intermediate_size": int(rng.choice([128, 512])),
             "dtype_bytes": float(rng.choice([1, 2]))}
    n = int(rng.integers(3, 7))
    devices = [_device(rng, "d0", "end")] + [_device(rng, f"d{d}", str(rng.choice(TIERS))) for d in range(1, n)]
    links = [_link(rng, f"d{d}", f"d{int(rng.integers(0, d))}") for d in range(1, n)]
    for d in range(2, n):  # a few chords: not every fleet is a tree
        if rng.random() < 0.3:
            other = int(rng.integers(0, d))
            if not any({lk["a"], lk["b"]} == {f"d{d}", f"d{other}"} for lk in links):
                links.append(_link(rng, f"d{d}", f"d{other}"))
    data = {"name": f"prop-{seed}", "objective": objective or str(rng.choice(["throughput", "latency", "energy"])),
            "model": model, "devices": devices, "links": links,
            "workload": {"origin": "d0", "arrival_rate_per_s": 1.0, "prompt_tokens": int(rng.integers(8, 256)),
                         "output_tokens": int(rng.integers(2, 64)), "max_batch": int(rng.integers(1, 17)),
                         "popularity": {"kind": "zipf", "zipf_exponent": float(rng.uniform(0, 1.5)), "seed": seed}}}
    if rng.random() < 0.5:
        data["constraints"] = {"codec_ranks": [16, 32], "codec_accuracy_loss": [0.01, 0.002], "accuracy_loss_budget": 0.02}
    return data


def superset_dict(data: dict, seed: int) -> dict:
    """``data`` with 1-3 more devices, each linked to one device already there (same model, workload, origin)."""
    rng = np.random.default_rng(10**6 + seed)
    out = {**data, "name": data["name"] + "-plus", "devices": list(data["devices"]), "links": list(data["links"])}
    for k in range(int(rng.integers(1, 4))):
        names = [d["name"] for d in out["devices"]]
        name = f"x{k}"
        out["devices"].append(_device(rng, name, str(rng.choice(TIERS[1:]))))
        out["links"].append(_link(rng, name, names[int(rng.integers(0, len(names)))]))
    return out


def build(data: dict):
    return instance_from_dict(data, file=f"<{data['name']}>")


def solve_all(inst) -> dict:
    """Every registered instance solver's result; exact ones under a small time limit."""
    out = {}
    for name in api.available_solvers():
        exact = registry.get(name, problem="instance").kind == "exact" and name != "dp"
        out[name] = api.solve(inst, name, time_limit=EXACT_TIME_LIMIT_S if exact else None)
    return out


def beats(kind: str, value: float, bound: float) -> bool:
    if kind == "throughput":
        return value > bound * (1 + REL_TOL)
    return value < bound * (1 - REL_TOL)


def check_valid_and_bounded(inst) -> None:
    results = solve_all(inst)
    invalid = {n: r.message for n, r in results.items() if r.status is Status.ERROR}
    assert not invalid, f"{inst.name}: plans that fail validation: {invalid}"
    found = {n: r.objective for n, r in results.items() if r.solution is not None}
    for name, r in results.items():
        if r.solution is not None:
            assert api.validate(inst, r.solution) == [], f"{inst.name}: {name}'s plan"
    b = plan_space_bound(inst, time_limit=2.0)
    if b is None:
        assert not found, f"{inst.name}: no bound, but {found} found plans"
        return
    beaten = {n: v for n, v in found.items() if beats(inst.objective, v, b.value)}
    assert not beaten, f"{inst.name} ({inst.objective}): {beaten} beat the bound {b.value} ({b.binding})"


def ra_objective(inst) -> float | None:
    # A time limit far above what these instances need: route-aware's own 1 s budget is a safety net
    # whose plan depends on the machine's load, and (c) compares two runs.
    res = api.solve(inst, "route-aware", time_limit=RA_TIME_LIMIT_S)
    return res.objective if res.solution is not None else None


def check_nested(small: dict, big: dict) -> None:
    a, b = ra_objective(build(small)), ra_objective(build(big))
    if a is None:
        return
    assert b is not None, f"{small['name']}: route-aware plans F ({a}) but not F + devices"
    if small["objective"] == "throughput":
        assert b >= 0.99 * a, f"{small['name']}: route-aware {b} on F' < 99 % of {a} on F"
    else:
        assert b <= a / 0.99, f"{small['name']} ({small['objective']}): route-aware {b} on F' > {a} / 0.99 on F"


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6))
def test_every_solver_gives_valid_plans_within_the_plan_space_bound(seed):
    check_valid_and_bounded(build(fleet_dict(seed)))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.sampled_from(["throughput", "latency", "energy"]))
def test_route_aware_does_not_lose_on_a_bigger_fleet(seed, objective):
    small = fleet_dict(seed, objective)
    check_nested(small, superset_dict(small, seed))


# ----- cases found by the properties (minimised) ------------------------------------------------

# Seed 147 of fleet_dict (energy), minimised: d0 (origin) - d2 - d1 in a line; F' adds x0 on d2.
# Route-aware on F runs both layers on d1 (0.000928 J/token); on F' it picks d0[0,1) | d2[1,2)
# (0.001266 J/token, 36 % worse) although F's plan is valid on F' at the same price.
NESTED_ENERGY = {
    "name": "nested-energy", "objective": "energy",
    "model": {"name": "nested-energy", "num_layers": 2, "hidden_size": 256, "num_attention_heads": 4, "num_kv_heads": 4,
              "head_dim": 64, "vocab_size": 624, "num_experts": 2, "top_k": 2, "expert_intermediate_size": 512,
              "dtype_bytes": 2.0},
    "devices": [
        {"name": "d0", "tier": "end", "memory_gb": 0.0106, "memory_bandwidth_gb_per_s": 218.0, "power_w": 280.0,
         "peak_tflops": {"fp16": 121.0}},
        {"name": "d1", "tier": "cloud", "memory_gb": 0.00524, "memory_bandwidth_gb_per_s": 1170.0, "power_w": 54.4,
         "peak_tflops": {"fp16": 2.38}},
        {"name": "d2", "tier": "end", "memory_gb": 0.00472, "memory_bandwidth_gb_per_s": 1910.0, "power_w": 26.4,
         "peak_tflops": {"fp16": 272.0}},
    ],
    "links": [{"a": "d2", "b": "d1", "bandwidth_mbps": 5210.0, "rtt_ms": 21.3},
              {"a": "d2", "b": "d0", "bandwidth_mbps": 1630.0, "rtt_ms": 13.8}],
    "workload": {"origin": "d0", "arrival_rate_per_s": 1.0, "prompt_tokens": 107, "output_tokens": 13, "max_batch": 1,
                 "popularity": {"kind": "zipf", "zipf_exponent": 0.085, "seed": 147}},
}
NESTED_ENERGY_PLUS = {
    **NESTED_ENERGY, "name": "nested-energy-plus",
    "devices": NESTED_ENERGY["devices"] + [{"name": "x0", "tier": "edge", "memory_gb": 0.0105, "memory_bandwidth_gb_per_s": 551.0,
                                           "power_w": 219.0, "peak_tflops": {"fp16": 169.0}}],
    "links": NESTED_ENERGY["links"] + [{"a": "x0", "b": "d2", "bandwidth_mbps": 6220.0, "rtt_ms": 16.0}],
}


def test_a_plan_of_the_fleet_is_a_plan_of_the_bigger_fleet_at_the_same_price():
    small, big = build(NESTED_ENERGY), build(NESTED_ENERGY_PLUS)
    plan = api.solve(small).solution
    assert api.validate(big, plan) == []
    assert api.evaluate(big, plan).energy_j_per_token == pytest.approx(api.evaluate(small, plan).energy_j_per_token, rel=1e-12)


def test_route_aware_does_not_lose_when_a_device_joins_energy():
    """Was 0.000928 J/token on NESTED_ENERGY and 0.001266 (+36 %) once x0 joined: Step 11's 24 moves
    missed the expert moves that 100 find on a 2-layer model (route_aware.SMALL_PLAN_MOVES)."""
    check_nested(NESTED_ENERGY, NESTED_ENERGY_PLUS)


@pytest.mark.parametrize("seed", [9, 164, 208])
def test_route_aware_does_not_lose_on_the_energy_seeds_that_once_did(seed):
    """Seeds where the bigger fleet's plan was 2 % (9) and 10 % (164) worse, and one it now wins by
    25 % (208): Step 11 makes SMALL_PLAN_MOVES moves on small models, and dp's chain is a candidate."""
    small = fleet_dict(seed, "energy")
    check_nested(small, superset_dict(small, seed))


OTHERS = ("cloud-only", "end-only", "single-cut", "proportional", "edgeshard", "eplb", "dp", "local-search")


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6))
def test_the_default_is_not_beaten_by_another_solver_of_the_project(seed):
    """route-aware within 1 % of every baseline, dp and local-search on random fleets: where one
    wins, that is a bug in the default. local-search makes 200 moves from its own start (about what
    0.1 s allows here; a move cap, so that the test does not depend on the machine's speed)."""
    inst = build(fleet_dict(seed))
    mine = api.solve(inst, "route-aware", time_limit=30)
    for name in OTHERS:
        other = api.solve(inst, name, **({"max_moves": 200} if name == "local-search" else {}))
        if other.solution is None:
            continue
        assert mine.solution is not None, f"{inst.name}: {name} plans it, route-aware does not"
        if inst.objective == "throughput":
            assert mine.objective >= 0.99 * other.objective, (inst.name, name, mine.objective, other.objective)
        else:
            assert mine.objective <= other.objective / 0.99, (inst.name, inst.objective, name, mine.objective, other.objective)
