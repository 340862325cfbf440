"""Builders the tests share: small hand-checkable instances from dicts (no files), shipped instances,
synthetic problems and profiles, the optional reference data. Fixtures built on them: tests/conftest.py."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
import pytest

from models.assignment import ReplicatedAssignment
from models.twotier import TwoTierSolution
from planner import api
from planner.cost.profiling import fit
from planner.domain.instance import instance_from_dict
from planner.domain.profile import HardwareProfile
from solvers.registry import get

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# One MoE layer, memory-bound on purpose (FLOP/s huge): times are bytes / bandwidth, easy to check.
TINY = {
    "name": "tiny",
    "model": {
        "name": "tiny-moe", "num_layers": 1, "hidden_size": 64, "num_attention_heads": 4, "num_kv_heads": 4,
        "head_dim": 16, "vocab_size": 100, "num_experts": 4, "top_k": 1, "expert_intermediate_size": 128,
        "ffn_matrices": 2, "dtype_bytes": 2,
    },
    "devices": [
        {"name": "end", "tier": "end", "memory_gb": 1, "memory_bandwidth_gb_per_s": 1, "power_w": 10,
         "idle_power_w": 2, "compute_efficiency": 1.0, "bandwidth_efficiency": 1.0, "peak_tflops": {"fp16": 1e5}},
        {"name": "cloud", "tier": "cloud", "memory_gb": 1, "memory_bandwidth_gb_per_s": 10, "power_w": 100,
         "compute_efficiency": 1.0, "bandwidth_efficiency": 1.0, "peak_tflops": {"fp16": 1e5}},
    ],
    "links": [{"a": "end", "b": "cloud", "bandwidth_mbps": 8, "rtt_ms": 10}],
    "workload": {"origin": "end", "arrival_rate_per_s": 1, "prompt_tokens": 10, "output_tokens": 4, "max_batch": 4},
}

# Four layers on three devices in a line (end - edge - cloud): for routes, cuts and baselines.
LINE = {
    "name": "line",
    "model": {
        "name": "line-moe", "num_layers": 4, "hidden_size": 256, "num_attention_heads": 4, "num_kv_heads": 2,
        "head_dim": 64, "vocab_size": 1000, "num_experts": 8, "top_k": 2, "expert_intermediate_size": 512,
        "dtype_bytes": 2,
    },
    "devices": [
        {"name": "phone", "tier": "end", "memory_gb": 0.02, "memory_bandwidth_gb_per_s": 50, "power_w": 5,
         "peak_tflops": {"fp16": 2}},
        {"name": "edge", "tier": "edge", "memory_gb": 0.05, "memory_bandwidth_gb_per_s": 300, "power_w": 70,
         "peak_tflops": {"fp16": 100}},
        {"name": "gpu", "tier": "cloud", "memory_gb": 1, "memory_bandwidth_gb_per_s": 2000, "power_w": 400,
         "peak_tflops": {"fp16": 300}},
    ],
    "links": [
        {"a": "phone", "b": "edge", "bandwidth_mbps": 100, "rtt_ms": 5},
        {"a": "edge", "b": "gpu", "bandwidth_gbps": 10, "rtt_ms": 20},
    ],
    "workload": {"origin": "phone", "arrival_rate_per_s": 2, "prompt_tokens": 64, "output_tokens": 16, "max_batch": 8},
    "constraints": {"codec_ranks": [16, 64], "codec_accuracy_loss": [0.02, 0.005], "accuracy_loss_budget": 0.01},
}


# Four devices, meshed: the model (27.8 MB) fits no single small device, so plans span several.
FLEET = copy.deepcopy(LINE)
FLEET["name"] = "fleet"
FLEET["devices"] = [
    {"name": "phone", "tier": "end", "memory_gb": 0.02, "memory_bandwidth_gb_per_s": 50, "power_w": 5, "peak_tflops": {"fp16": 2}},
    {"name": "edge", "tier": "edge", "memory_gb": 0.015, "memory_bandwidth_gb_per_s": 300, "power_w": 70, "peak_tflops": {"fp16": 100}},
    {"name": "gpu", "tier": "cloud", "memory_gb": 0.03, "memory_bandwidth_gb_per_s": 2000, "power_w": 400, "peak_tflops": {"fp16": 300}},
    {"name": "gpu2", "tier": "cloud", "memory_gb": 0.03, "memory_bandwidth_gb_per_s": 1000, "power_w": 300, "peak_tflops": {"fp16": 100}},
]
FLEET["links"] = [
    {"a": "phone", "b": "edge", "bandwidth_mbps": 100, "rtt_ms": 5},
    {"a": "edge", "b": "gpu", "bandwidth_gbps": 10, "rtt_ms": 20},
    {"a": "phone", "b": "gpu", "bandwidth_mbps": 20, "rtt_ms": 30},
    {"a": "edge", "b": "gpu2", "bandwidth_gbps": 10, "rtt_ms": 20},
    {"a": "gpu", "b": "gpu2", "bandwidth_gbps": 10, "rtt_ms": 1},
]
FLEET["workload"] = dict(FLEET["workload"], popularity={"kind": "zipf", "zipf_exponent": 1.0})


def build(base: dict, **changes):
    """An instance from ``base`` with top-level tables replaced or updated by ``changes``."""
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return instance_from_dict(data, file="<test>")


def shared_data_or_skip() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (it is optional reference data)")
    return SHARED_DATA


def load(name: str):
    """A shipped instance by file name (``instances/NAME``)."""
    return api.load_instance(REPO / "instances" / name)


# ----- expert placement ---------------------------------------------------------------------------

CLUSTER = REPO / "instances" / "a100-l4-t4-cluster.toml"     # Mixtral-8x7B: 32 MoE layers x 8 experts


DEEPSEEK = REPO / "instances" / "deepseek-v3-mixed-cloud.toml"


ALL5 = ["a100", "l4-0", "l4-1", "t4-0", "t4-1"]


def solve(name: str, problem: ReplicatedAssignment, **options):
    return get(name, problem="assignment").func(problem, **options)


def random_loads(rng, layers: int, experts: int) -> np.ndarray:
    """Zipf-like loads, ranking permuted per layer."""
    popularity = 1.0 / np.arange(1, experts + 1)
    return np.stack([rng.multinomial(200 * experts, popularity[rng.permutation(experts)] / popularity.sum())
                     for _ in range(layers)]).astype(float)


def identical(load, devices: int, redundant: int, speed=None) -> ReplicatedAssignment:
    speed = np.ones(devices) if speed is None else np.asarray(speed, dtype=float)
    return ReplicatedAssignment.build(load, speed, slots=(load.shape[1] + redundant) // devices, max_replicas=devices)


def assert_maps_agree(phy2log, log2phy, logcnt):
    layers, experts = logcnt.shape
    assert np.all(logcnt >= 1)
    for layer in range(layers):
        for e in range(experts):
            slots = np.flatnonzero(phy2log[layer] == e)
            row = log2phy[layer, e]
            assert sorted(row[:logcnt[layer, e]].tolist()) == slots.tolist()
            assert np.all(row[logcnt[layer, e]:] == -1)


# ----- hardware profiles --------------------------------------------------------------------------

PEAK_FLOPS, HALF_FLOPS = 8.0e10, 2.0e6       # FLOP/s, FLOPs
PEAK_BYTES, HALF_BYTES = 2.0e10, 4.0e5       # bytes/s, bytes


def _seconds(work, peak, half, rng, noise=0.02):
    return (work + half) / peak * (1.0 + noise * rng.standard_normal())


def synthetic_samples(seed=0, noise=0.02):
    rng = np.random.default_rng(seed)
    matmul = []
    for n in (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048):
        flops = 2.0 * n**3
        matmul.append({"m": n, "n": n, "k": n, "flops": flops,
                       "seconds": _seconds(flops, PEAK_FLOPS, HALF_FLOPS, rng, noise)})
    memory = []
    for nbytes in np.geomspace(2**16, 2**29, 14):
        memory.append({"bytes": float(nbytes), "seconds": _seconds(nbytes, PEAK_BYTES, HALF_BYTES, rng, noise)})
    expert_ffn = []
    h, f = 1024, 2816
    for tokens in (1, 4, 16, 64, 256):
        flops, nbytes = 6.0 * tokens * h * f, 4.0 * (3 * h * f + 2 * tokens * h)
        seconds = max((flops + HALF_FLOPS) / PEAK_FLOPS, (nbytes + HALF_BYTES) / PEAK_BYTES)
        expert_ffn.append({"tokens": tokens, "hidden": h, "intermediate": f,
                           "flops": flops, "bytes": nbytes, "seconds": seconds})
    return matmul, memory, expert_ffn


def synthetic_profile() -> HardwareProfile:
    matmul, memory, expert_ffn = synthetic_samples()
    return HardwareProfile(host="test host", backend="numpy", dtype="fp32", created="2025-01-02T03:04:05+00:00",
                           matmul=matmul, memory=memory, expert_ffn=expert_ffn,
                           **fit(matmul, memory, expert_ffn))


# ----- the two-tier space -------------------------------------------------------------------------

SMALL = {
    **LINE,
    "model": {**LINE["model"], "num_layers": 3, "num_experts": 3, "top_k": 1},
    "devices": [
        dict(LINE["devices"][0], memory_gb=0.01),
        dict(LINE["devices"][2], memory_gb=0.05),
    ],
    "links": [{"a": "phone", "b": "gpu", "bandwidth_mbps": 50, "rtt_ms": 30}],
    "constraints": {"codec_ranks": [16, 64], "codec_accuracy_loss": [0.02, 0.005], "accuracy_loss_budget": 0.01},
}


def small_instance(objective="throughput", **model):
    return build(SMALL, objective=objective, model={**SMALL["model"], **model})


def all_solutions(p):
    L, E = p.num_layers, p.num_items
    for k in range(L + 1):
        cells = [(l, e) for l in range(k) for e in range(E) if p.exists[l, e]]
        for bits in itertools.product([False, True], repeat=len(cells)):
            near = np.zeros((L, E), dtype=bool)
            for (l, e), bit in zip(cells, bits):
                near[l, e] = bit
            for option in range(p.num_options):
                yield TwoTierSolution(k, near, option)


# ----- solver drivers and links -------------------------------------------------------------------

def market_split(m_rows: int = 5, n: int = 40, seed: int = 1):
    """Cornuejols-Dawande market split data: a in 0..99, d = floor(sum a / 2); almost surely no 0/1
    x meets a x = d exactly, and branch and bound cannot show it for n = 10 (m - 1) and beyond."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 100, size=(m_rows, n))
    return a, a.sum(axis=1) // 2


def mesh_links(names, **link):
    return [{"a": a, "b": b, **link} for a, b in itertools.combinations(names, 2)]


def assert_steps_add_up(cm, pipe, tokens: float, context: float, prefill: bool):
    """The steps of one pass (:meth:`CostModel.pass_steps`, remote experts as forks of branches) add
    up to the pass's cost (:meth:`CostModel.pass_cost`): latency, and busy time per key. Returns the steps."""
    from planner.cost.evaluation import Step

    steps = cm.pass_steps(pipe, tokens, context, prefill)
    whole = cm.pass_cost(pipe, tokens, context, prefill)
    assert sum(s.latency_s for s in steps) == pytest.approx(whole.latency_s, rel=1e-12)
    busy: dict = {}
    for s in steps:
        for x in ((s,) if isinstance(s, Step) else (x for branch in s.branches for x in branch)):
            busy[x.key] = busy.get(x.key, 0.0) + x.hold_s
    assert busy.keys() == whole.busy_s.keys()
    for key, value in whole.busy_s.items():
        assert busy[key] == pytest.approx(value, rel=1e-12, abs=1e-18)
    return steps
