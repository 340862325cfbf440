"""Measured hardware profiles: fitting, curves, JSON round trip, validation, measurement, Device use."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from planner.cli import profile as profile_cli
from planner.cli.profile import run_profile_command
from planner.cost.profiling import check_profile_against_expert_ffn, fit, measure
from planner.domain.device import Device
from planner.domain.errors import InputError
from planner.domain.profile import SCHEMA, HardwareProfile, ProfileError

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


# ----- fit and curves --------------------------------------------------------------------------

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


# ----- save / load -----------------------------------------------------------------------------

def test_save_load_round_trip_is_lossless(tmp_path):
    prof = synthetic_profile()
    path = tmp_path / "p.json"
    prof.save(path)
    again = HardwareProfile.load(path)
    assert again == prof
    assert again.to_dict() == prof.to_dict()
    assert list(json.loads(path.read_text()))[0] == "schema"
    assert os.listdir(tmp_path) == ["p.json"]  # the temporary file was renamed, not left behind
    prof.save(path)  # overwriting works too
    assert HardwareProfile.load(path) == prof


def test_save_to_missing_folder_names_the_path(tmp_path):
    target = tmp_path / "nope" / "p.json"
    with pytest.raises(InputError) as exc:
        synthetic_profile().save(target)
    assert str(target) in str(exc.value)


def _write(tmp_path, data) -> str:
    path = tmp_path / "bad.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _good() -> dict:
    return synthetic_profile().to_dict()


def _without(key):
    d = _good()
    del d[key]
    return d


def _with(**changes):
    d = _good()
    d.update(changes)
    return d


def _bad_sample():
    d = _good()
    d["matmul"][2]["seconds"] = "fast"
    return d


@pytest.mark.parametrize("content, field, words", [
    ("{not json", "", "not valid JSON"),
    ("", "", "not valid JSON"),
    ([1, 2], "", "JSON object"),
    (_without("peak_bytes_per_s"), "peak_bytes_per_s", "required"),
    (_without("matmul"), "matmul", "required"),
    (_with(peak_flops_per_s=-5.0), "peak_flops_per_s", "> 0"),
    (_with(peak_bytes_per_s=0), "peak_bytes_per_s", "> 0"),
    (_with(half_flops=-1.0), "half_flops", ">= 0"),
    (_with(schema="moeplan.profile/2"), "schema", "unknown schema version"),
    (_with(host=3), "host", "string"),
    (_with(peak_flops_per_s="fast"), "peak_flops_per_s", "number"),
    (_with(memory={"bytes": 1}), "memory", "list"),
    (_bad_sample(), "matmul[2].seconds", "number"),
    (_with(backend="cuda"), "backend", "one of"),
    (_with(created="yesterday"), "created", "ISO"),
    (_with(extra=1), "extra", "not a known field"),
])
def test_load_rejects_malformed_files(tmp_path, content, field, words):
    path = _write(tmp_path, content)
    with pytest.raises(InputError) as exc:
        HardwareProfile.load(path)
    message = str(exc.value)
    assert path in message and field in message and words in message
    assert all(p.file == path for p in exc.value.problems)


def test_load_reports_every_problem_at_once(tmp_path):
    d = _with(peak_flops_per_s=-1.0, half_bytes=-2.0, schema="other")
    del d["host"]
    with pytest.raises(InputError) as exc:
        HardwareProfile.load(_write(tmp_path, d))
    assert sorted(p.field for p in exc.value.problems) == ["half_bytes", "host", "peak_flops_per_s", "schema"]


def test_load_missing_file(tmp_path):
    path = str(tmp_path / "absent.json")
    with pytest.raises(InputError, match="cannot read"):
        HardwareProfile.load(path)


# ----- measuring -------------------------------------------------------------------------------

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


# ----- the command ------------------------------------------------------------------------------

def test_run_profile_command_writes_and_summarises(tmp_path, monkeypatch):
    calls = []

    def fake_measure(backend, device, quick, progress):
        calls.append((backend, device, quick))
        return synthetic_profile()

    monkeypatch.setattr(profile_cli, "measure", fake_measure)
    out = tmp_path / "mine.json"
    lines = []
    assert run_profile_command("cpu", str(out), True, None, lines.append) == 0
    assert calls == [("numpy", "cpu", True)]
    assert HardwareProfile.load(out) == synthetic_profile()
    text = "\n".join(lines)
    assert "GFLOP/s" in text and "GB/s" in text and "ratio" in text and str(out) in text


def test_run_profile_command_defaults_to_torch_on_cuda(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(profile_cli, "measure", lambda backend, device, quick, progress: calls.append(backend) or synthetic_profile())
    run_profile_command("cuda", str(tmp_path / "g.json"), False, None, lambda line: None)
    assert calls == ["torch"]


def test_run_profile_command_unwritable_output_fails_before_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_cli, "measure", lambda **kw: pytest.fail("measured although the output is unwritable"))
    for target in (tmp_path / "missing" / "p.json", tmp_path):
        with pytest.raises(InputError) as exc:
            run_profile_command("cpu", str(target), True, None, lambda line: None)
        assert str(target) in str(exc.value)


# ----- the device uses the profile ---------------------------------------------------------------

def test_device_with_profile_uses_the_fitted_curves():
    prof = synthetic_profile()
    datasheet = Device(name="box", kind="box", tier="edge", memory_bytes=64e9,
                       memory_bandwidth_bytes_per_s=100e9, peak_flops_per_s={"fp32": 1e12}, power_w=100.0)
    profiled = datasheet.renamed("box", profile=prof)
    flops, nbytes = 6.0 * 16 * 1024 * 2816, 4.0 * 3 * 1024 * 2816
    assert datasheet.effective_flops_per_s(flops, 4) == pytest.approx(1e12 * datasheet.compute_efficiency)
    assert profiled.effective_flops_per_s(flops, 4) == pytest.approx(prof.effective_flops_per_s(flops))
    assert profiled.effective_bytes_per_s(nbytes) == pytest.approx(prof.effective_bytes_per_s(nbytes))
    expected = max(flops / prof.effective_flops_per_s(flops), nbytes / prof.effective_bytes_per_s(nbytes))
    assert profiled.op_time_s(flops, nbytes, 4) == pytest.approx(expected)
    # The synthetic device is far slower than the datasheet: the profile must show.
    assert profiled.op_time_s(flops, nbytes, 4) > 5 * datasheet.op_time_s(flops, nbytes, 4)
