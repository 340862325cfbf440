"""Shared fixtures: small hand-checkable instances built from dicts (no files)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from planner.domain.instance import instance_from_dict

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


def build(base: dict, **changes):
    """An instance from ``base`` with top-level tables replaced or updated by ``changes``."""
    data = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    return instance_from_dict(data, file="<test>")


@pytest.fixture
def tiny():
    return build(TINY)


@pytest.fixture
def line():
    return build(LINE)


def shared_data_or_skip() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (it is optional reference data)")
    return SHARED_DATA
