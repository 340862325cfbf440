"""Measuring and fitting hardware profiles: the fit recovers known curves, the measurement gives sane peaks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from planner.cost.profiling import check_profile_against_expert_ffn, fit, fit_framework, measure
from planner.domain.profile import SCHEMA, HardwareProfile, ProfileError
from tests.helpers import HALF_BYTES, HALF_FLOPS, PEAK_BYTES, PEAK_FLOPS, synthetic_profile, synthetic_samples


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_parameters_from_noisy_samples(seed):
    matmul, memory, _ = synthetic_samples(seed)
    got = fit(matmul, memory)
    assert got["peak_flops_per_s"] == pytest.approx(PEAK_FLOPS, rel=0.03)
    assert got["half_flops"] == pytest.approx(HALF_FLOPS, rel=0.06)
    assert got["peak_bytes_per_s"] == pytest.approx(PEAK_BYTES, rel=0.03)
    assert got["half_bytes"] == pytest.approx(HALF_BYTES, rel=0.06)


def test_fit_is_exact_without_noise():
    matmul, memory, _ = synthetic_samples(noise=0.0)
    got = fit(matmul, memory)
    assert got == pytest.approx({"peak_flops_per_s": PEAK_FLOPS, "half_flops": HALF_FLOPS,
                                 "peak_bytes_per_s": PEAK_BYTES, "half_bytes": HALF_BYTES}, rel=1e-6)


def test_fit_uses_compute_bound_expert_samples_only():
    matmul, memory, expert_ffn = synthetic_samples(noise=0.0)
    # Slow every expert sample 3x: the compute-bound ones pull the compute peak down ...
    slow = [dict(s, seconds=3 * s["seconds"]) for s in expert_ffn]
    assert fit(matmul, memory, slow)["peak_flops_per_s"] < 0.9 * PEAK_FLOPS
    # ... while a memory-bound sample (1 token streams 35 MB of weights) is left out of the compute fit.
    memory_bound = [dict(expert_ffn[0], seconds=expert_ffn[0]["seconds"] * 1.2)]
    assert fit(matmul, memory, memory_bound)["peak_flops_per_s"] == pytest.approx(PEAK_FLOPS, rel=1e-6)


def test_fit_clamps_negative_overhead_to_zero():
    memory = [{"bytes": b, "seconds": b / 1e10 - 1e-5} for b in (1e7, 1e8, 1e9)]
    matmul = [{"m": 1, "n": 1, "k": 1, "flops": w, "seconds": w / 1e11} for w in (1e7, 1e9)]
    got = fit(matmul, memory)
    assert got["half_bytes"] == 0.0 and got["peak_bytes_per_s"] > 0


def test_fit_needs_two_sizes():
    _, memory, _ = synthetic_samples()
    one = [{"m": 8, "n": 8, "k": 8, "flops": 1024.0, "seconds": 1e-6}] * 3
    with pytest.raises(ProfileError, match="compute"):
        fit(one, memory)


def test_curves_are_monotone_and_below_peak():
    prof = synthetic_profile()
    work = np.geomspace(1.0, 1e13, 200)
    flops = np.array([prof.effective_flops_per_s(w) for w in work])
    bw = np.array([prof.effective_bytes_per_s(w) for w in work])
    assert np.all(np.diff(flops) > 0) and np.all(flops < prof.peak_flops_per_s)
    assert np.all(np.diff(bw) > 0) and np.all(bw < prof.peak_bytes_per_s)
    assert prof.effective_flops_per_s(prof.half_flops) == pytest.approx(prof.peak_flops_per_s / 2)
    assert prof.effective_bytes_per_s(prof.half_bytes) == pytest.approx(prof.peak_bytes_per_s / 2)


def test_expert_check_on_synthetic_roofline_is_exact():
    checks = check_profile_against_expert_ffn(synthetic_profile())
    assert [c.tokens for c in checks] == [1, 4, 16, 64, 256]
    for c in checks:
        assert c.ratio == pytest.approx(1.0, rel=0.05)
        tokens, measured, predicted = c
        assert predicted / measured == c.ratio


@pytest.fixture(scope="module")
def measured() -> HardwareProfile:
    lines = []
    prof = measure(quick=True, progress=lines.append)
    assert any("GFLOP/s" in line for line in lines)
    return prof


def test_measure_quick_gives_positive_peaks(measured):
    assert measured.schema == SCHEMA and measured.backend == "numpy" and measured.dtype == "fp32"
    for key in ("peak_flops_per_s", "peak_bytes_per_s"):
        assert math.isfinite(getattr(measured, key)) and getattr(measured, key) > 0
    assert measured.half_flops >= 0 and measured.half_bytes >= 0
    assert measured.matmul and measured.memory and len(measured.expert_ffn) == 5
    # The measured profile passes the same checks as a loaded file.
    assert HardwareProfile.from_dict(json.loads(json.dumps(measured.to_dict())), "measured") == measured


def test_expert_check_on_measured_profile_gives_finite_positive_ratios(measured):
    checks = check_profile_against_expert_ffn(measured)
    assert [c.tokens for c in checks] == [1, 4, 16, 64, 256]
    for c in checks:
        assert c.measured_s > 0 and c.predicted_s > 0
        assert math.isfinite(c.ratio) and 0 < c.ratio


def test_measure_rejects_unknown_backend_and_device():
    with pytest.raises(ProfileError, match="backend"):
        measure(backend="jax")
    with pytest.raises(ProfileError, match="CPU only"):
        measure(backend="numpy", device="cuda")
    with pytest.raises(ProfileError, match="unknown device"):
        measure(backend="numpy", device="tpu")


def test_torch_backend_without_torch_is_a_clear_error():
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(ProfileError, match="PyTorch"):
            measure(backend="torch", device="cpu")
    else:
        pytest.skip("torch is installed")


# ----- the framework overhead --------------------------------------------------------------------

def _framework_samples(layer_s, layer_slope, call_s, call_slope, pass_s, noise=0.0, seed=0):
    """Passes of a 4-layer model timed as ``fixed + slope x FLOPs`` per layer and per experts call,
    plus ``pass_s`` outside the layers (relative noise ``noise``)."""
    rng = np.random.default_rng(seed)
    out = []
    for tokens in (1, 2, 4, 8, 32):
        layer_flops, expert_flops = tokens * 2.6e5, tokens * 2e5
        jitter = 1.0 + noise * rng.standard_normal(3)
        layers_s = 4 * (layer_s + layer_slope * layer_flops) * jitter[0]
        experts_s = 4 * (call_s + call_slope * expert_flops) * jitter[1]
        out.append({"tokens": tokens, "context": 16.0, "layers": 4, "layer_flops": layer_flops,
                    "expert_flops": expert_flops, "pass_s": layers_s + pass_s * jitter[2],
                    "layers_s": layers_s, "experts_s": experts_s})
    return out


def test_framework_fit_recovers_fixed_and_slope():
    fw = fit_framework(_framework_samples(4e-4, 5e-11, 1.8e-4, 4e-11, 2.4e-4), "lib", "model")
    assert fw.layer_s == pytest.approx(4e-4, rel=1e-6)
    assert fw.layer_s_per_flop == pytest.approx(5e-11, rel=1e-6)
    assert fw.expert_call_s == pytest.approx(1.8e-4, rel=1e-6)
    assert fw.expert_s_per_flop == pytest.approx(4e-11, rel=1e-6)
    assert fw.pass_s == pytest.approx(2.4e-4, rel=1e-6)
    assert (fw.library, fw.model, len(fw.samples)) == ("lib", "model", 5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_framework_fit_recovers_the_fixed_part_from_noisy_timings(seed):
    fw = fit_framework(_framework_samples(4e-4, 5e-11, 1.8e-4, 4e-11, 2.4e-4, noise=0.03, seed=seed))
    assert fw.layer_s == pytest.approx(4e-4, rel=0.1)
    assert fw.expert_call_s == pytest.approx(1.8e-4, rel=0.1)
    assert fw.pass_s == pytest.approx(2.4e-4, rel=0.1)


def test_framework_fit_needs_two_sizes():
    one = _framework_samples(4e-4, 5e-11, 1.8e-4, 4e-11, 2.4e-4)[:1]
    with pytest.raises(ProfileError, match="two sizes"):
        fit_framework(one)
